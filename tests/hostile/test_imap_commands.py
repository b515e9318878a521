"""IMAP command framing and grammar (imap/parser, imap/grammar), LIST patterns, sequence sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.grammar import MAX_LIST_PATTERNS, MAX_SEARCH_KEYS
from mailstack.imap.listmatch import compile_pattern
from mailstack.imap.parser import CommandReader, NeedData, ParseError
from mailstack.imap.types import Command, SequenceSet
from tests.hostile.bounds import SETTINGS, bounded

VERBS = [b"LOGIN", b"SELECT", b"LIST", b"LSUB", b"STATUS", b"APPEND", b"FETCH", b"UID FETCH", b"STORE",
         b"SEARCH", b"UID SEARCH", b"COPY", b"ID", b"ENABLE", b"SETQUOTA", b"AUTHENTICATE PLAIN", b"IDLE",
         b"THREAD", b"UID THREAD", b"SORT", b"CANCELUPDATE", b"APPEND INBOX CATENATE"]
TOKENS = [b" ", b"(", b")", b"[", b"]", b"<", b">", b".", b"*", b"%", b"\"", b"\\", b"{", b"}", b"+", b"1", b"2:*",
          b"4294967296", b"9" * 30, b"NIL", b"INBOX", b"BODY", b"BODY.PEEK[1.2.HEADER.FIELDS (To)]<0.10>",
          b"FLAGS", b"(\\Seen)", b"CHARSET", b"UTF-8", b"OR", b"NOT", b"HEADER", b"MODSEQ", b"&AMk-", b"\x80",
          b"{3}\r\nabc", b"{2+}\r\nab", b"{999999999}\r\n", b"\r\n", b"\n", b"\x00",
          b"REFERENCES", b"CATENATE", b"TEXT", b"URL", b'"/INBOX/;UID=1"', b"RETURN", b"(PARTIAL 1:5)", b"UPDATE"]
commands = st.builds(
    lambda tag, verb, args: tag + b" " + verb + b"".join(args) + b"\r\n",
    st.sampled_from([b"a", b"A1", b"*", b"+", b""]), st.sampled_from(VERBS),
    st.lists(st.sampled_from(TOKENS), max_size=25),
)


def _events(data: bytes, chunk: int) -> list[object]:
    reader = CommandReader(max_line=8192, max_literal=8192)
    out: list[object] = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        while not isinstance(event := reader.next_event(), NeedData):
            out.append(event)
    return out


def _check(data: bytes, chunk: int = 4096) -> list[object]:
    events = bounded(_events, data, chunk)
    assert len(events) <= data.count(b"\n") + 2
    return events


@SETTINGS
@given(st.binary(max_size=3000), st.integers(1, 300))
def test_any_bytes(data: bytes, chunk: int) -> None:
    _check(data, chunk)


@SETTINGS
@given(st.lists(commands, max_size=8).map(b"".join), st.integers(1, 64))
def test_near_valid_commands_with_literals(data: bytes, chunk: int) -> None:
    _check(data, chunk)


@SETTINGS
@given(commands, st.integers(1, 400))
def test_amplified(command: bytes, times: int) -> None:
    head, _, _ = command.partition(b"\r\n")
    _check(head + head[head.find(b" ", 3) :] * times + b"\r\n")


def _one(line: bytes) -> object:
    events = _check(line)
    assert len(events) == 1, events
    return events[0]


def test_numbers_past_int_limit_are_bad() -> None:
    """int() of over 4300 digits raised ValueError out of the parser (the connection dropped)."""
    for line in (b"a FETCH " + b"1" * 5000 + b" FLAGS\r\n", b"a SEARCH LARGER " + b"7" * 5000 + b"\r\n",
                 b"a FETCH 1 BODY[" + b"2" * 5000 + b"]\r\n", b"a STORE 1 (UNCHANGEDSINCE " + b"3" * 5000 + b") FLAGS x\r\n"):
        event = _one(line)
        assert isinstance(event, ParseError) and event.status == "BAD" and event.tag == "a"


def test_structural_limits() -> None:
    event = _one(b"a LIST \"\" (" + b" ".join([b"x%"] * (MAX_LIST_PATTERNS + 1)) + b")\r\n")
    assert isinstance(event, ParseError) and "LIST patterns" in event.message
    event = _one(b"a SEARCH " + b"ALL " * MAX_SEARCH_KEYS + b"ALL\r\n")
    assert isinstance(event, ParseError) and "too long" in event.message
    event = _one(b"a SEARCH " + b"ALL " * (MAX_SEARCH_KEYS - 1) + b"ALL\r\n")
    assert isinstance(event, Command)


def test_list_pattern_of_50_percent_signs_issue_10() -> None:
    """The regex took 13.5 s for this pattern against one name, cost growing like k^6."""
    for k in (50, 5000):
        pattern = compile_pattern("", "A" + "%" * k + "y")
        assert not bounded(pattern.match, "A" + "a" * 250)
        assert bounded(pattern.match, "A" + "a" * 250 + "y")
    assert not bounded(compile_pattern("", "*a" * 3000 + "b").match, "a" * 255)


@SETTINGS
@given(st.text("ab.%*", max_size=40), st.text("ab.", max_size=255))
def test_list_patterns(pattern: str, name: str) -> None:
    bounded(compile_pattern("", pattern).match, name)


def test_many_ranges_resolve_by_spans() -> None:
    seqs = SequenceSet(tuple((1, None) for _ in range(16_000)))
    assert bounded(seqs.resolve, 100_000) == list(range(1, 100_001))
    assert bounded(lambda: sum(seqs.contains(n, 100_000) for n in range(1, 100_001))) == 100_000
