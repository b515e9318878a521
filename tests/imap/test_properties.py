"""Hypothesis properties: parse(render(x)) round trips; no input makes the core raise."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailstack.imap.message import ParsedMessage, to_crlf
from mailstack.imap.parser import (
    CommandReader, ContinuationLine, NeedContinuation, NeedData, ParseError,
)
from mailstack.imap.responses import (
    render_astring, render_body_structure, render_envelope, render_mailbox, render_string,
)
from mailstack.imap.types import Command, CreateArgs, FetchArgs, LoginArgs, Section, SequenceSet

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60)


def commands(data: bytes, chunks: list[int] | None = None) -> list[object]:
    reader = CommandReader()
    out: list[object] = []
    pieces = [data]
    if chunks:
        pieces, rest = [], data
        for n in chunks:
            pieces.append(rest[:n])
            rest = rest[n:]
        pieces.append(rest)
    for piece in pieces:
        reader.feed(piece)
        while not isinstance(event := reader.next_event(), NeedData):
            out.append(event)
    return [e for e in out if not isinstance(e, NeedContinuation)]


@SETTINGS
@given(user=texts, password=texts)
def test_string_round_trip(user: str, password: str) -> None:
    line = b"a LOGIN " + render_string(user) + b" " + render_astring(password) + b"\r\n"
    assert commands(line) == [Command("a", "LOGIN", LoginArgs(user, password))]


@SETTINGS
@given(name=st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=40))
def test_mailbox_round_trip(name: str) -> None:
    got = commands(b"a CREATE " + render_mailbox(name) + b"\r\n")
    expected = "INBOX" if name.upper() == "INBOX" else name
    assert got == [Command("a", "CREATE", CreateArgs(expected))]


numbers = st.one_of(st.none(), st.integers(1, 2**32 - 1))
sequence_sets = st.builds(
    SequenceSet, st.lists(st.tuples(numbers, numbers), min_size=1, max_size=8).map(tuple)
)


@SETTINGS
@given(seqs=sequence_sets)
def test_sequence_set_round_trip(seqs: SequenceSet) -> None:
    # single numbers render as "n", so normalise (n, n) the same way the parser does
    got = commands(b"a FETCH " + str(seqs).encode() + b" FLAGS\r\n")
    assert len(got) == 1 and isinstance(got[0], Command)
    args = got[0].args
    assert isinstance(args, FetchArgs) and args.sequence_set == seqs


@SETTINGS
@given(payload=st.binary(max_size=300).filter(lambda b: b"\x00" not in b), cuts=st.lists(st.integers(0, 40), max_size=12))
def test_split_anywhere_gives_the_same_events(payload: bytes, cuts: list[int]) -> None:
    data = b"a APPEND INBOX {%d}\r\n" % len(payload) + payload + b"\r\nb LOGIN {3+}\r\nx\"y \"p\"\r\n"
    assert commands(data, cuts) == commands(data)


TOKENS = [
    b"a", b"A1", b"*", b"+", b" ", b"  ", b"\r\n", b"\n", b"\r", b"(", b")", b"[", b"]", b"<", b">",
    b"{", b"}", b"{3}", b"{0}\r\n", b"{5+}\r\n", b"{99999999999}\r\n", b'"', b'\\', b"\x00", b"\xff",
    b"UID", b"FETCH", b"STORE", b"SEARCH", b"LOGIN", b"APPEND", b"LIST", b"SELECT", b"STATUS",
    b"BODY", b"BODY.PEEK[", b"HEADER.FIELDS", b"1", b"1:*", b"$", b"0", b"4294967296", b"NIL",
    b"OR", b"NOT", b"CHARSET", b"+FLAGS.SILENT", b"\\Seen", b"RETURN", b"ID", b"AUTHENTICATE",
    b"=", b"&", b"&-", b"INBOX", b"1-Feb-2024", b'" 1-Feb-2024 10:00:00 +0000"', b",", b".",
]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.binary(max_size=30), st.booleans())
def test_random_input_only_gives_events(tokens: list[bytes], noise: bytes, line_mode: bool) -> None:
    reader = CommandReader(max_line=200, max_literal=100, max_append=1000)
    if line_mode:
        reader.expect_line()
    reader.feed(b"".join(tokens) + noise + b"\r\n")
    for _ in range(1000):
        event = reader.next_event()
        assert isinstance(event, (Command, NeedContinuation, NeedData, ParseError, ContinuationLine))
        if isinstance(event, ParseError):
            assert event.response().to_bytes().endswith(b"\r\n")
        if isinstance(event, NeedData):
            break


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=500))
def test_random_bytes_only_give_events(data: bytes) -> None:
    reader = CommandReader(max_line=100, max_literal=50)
    reader.feed(data)
    while not isinstance(reader.next_event(), NeedData):
        pass


MIME_TOKENS = [
    b"Content-Type: multipart/mixed; boundary=b\n", b"Content-Type: message/rfc822\n",
    b"Content-Type: text/plain; charset=\"x\"\n", b"Content-Type: multipart/digest; boundary=\"c\"\n",
    b"MIME-Version: 1.0\n", b"Subject: s\n", b"From: a <b@c>, (x\n", b" folded\n", b"\n", b"\r\n",
    b"--b\n", b"--b--\n", b"--c\n", b"--c--\n", b"body\n", b"Content-Disposition: attachment; x*0=a; x*1*=b\n",
    b"Content-Transfer-Encoding: base64\n", b"\xff\xfe", b"\x00", b"--", b":", b"To: g: a@b;\n",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(MIME_TOKENS), max_size=40))
def test_any_message_parses_and_renders(tokens: list[bytes]) -> None:
    raw = b"".join(tokens)
    m = ParsedMessage(raw)
    render_body_structure(m.body_structure())
    render_body_structure(m.body_structure(), extended=False)
    render_envelope(m.envelope())
    assert m.section(Section()) == to_crlf(raw)
    for path in ((1,), (1, 1), (2,), (2, 1)):
        for text in (None, "MIME", "HEADER", "TEXT"):
            m.section(Section(path, text))
