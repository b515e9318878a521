"""CommandReader: framing of lines and literals, limits, and error recovery (bytes in, events out)."""

from __future__ import annotations

import pytest

from mailstack.imap.parser import (
    CommandReader, ContinuationLine, NeedContinuation, NeedData, ParseError, decode_sasl_response,
    is_idle_done,
)
from mailstack.imap.grammar import GrammarError
from mailstack.imap.types import AppendArgs, Command, ListArgs, LoginArgs, NoArgs


def drain(reader: CommandReader) -> list[object]:
    out: list[object] = []
    while True:
        event = reader.next_event()
        if isinstance(event, NeedData):
            return out
        out.append(event)


def events(data: bytes, **kw: int) -> list[object]:  # kw: CommandReader limits
    reader = CommandReader(**kw)  # type: ignore[arg-type]
    reader.feed(data)
    return drain(reader)


def test_simple_command() -> None:
    assert events(b"a1 NOOP\r\n") == [Command("a1", "NOOP", NoArgs())]


def test_bare_lf_is_accepted() -> None:
    assert events(b"a1 noop\n") == [Command("a1", "NOOP", NoArgs())]


def test_nothing_until_line_end() -> None:
    reader = CommandReader()
    reader.feed(b"a1 NOO")
    assert isinstance(reader.next_event(), NeedData)
    reader.feed(b"P\r")
    assert isinstance(reader.next_event(), NeedData)
    reader.feed(b"\n")
    assert reader.next_event() == Command("a1", "NOOP", NoArgs())


def test_pipelined_commands_come_out_in_order() -> None:
    got = events(b"a NOOP\r\nb CAPABILITY\r\nc LOGOUT\r\n")
    assert [(c.tag, c.name) for c in got] == [("a", "NOOP"), ("b", "CAPABILITY"), ("c", "LOGOUT")]  # type: ignore[attr-defined]


LOGIN_WITH_LITERALS = b"a1 LOGIN {4}\r\nuser {8+}\r\np\"ss\\w d\r\n"


@pytest.mark.parametrize("cut", range(len(LOGIN_WITH_LITERALS) + 1))
def test_literals_split_at_every_byte(cut: int) -> None:
    # the command must come out the same wherever the network splits it
    reader = CommandReader()
    got: list[object] = []
    for chunk in (LOGIN_WITH_LITERALS[:cut], LOGIN_WITH_LITERALS[cut:]):
        reader.feed(chunk)
        got += drain(reader)
    assert got == [NeedContinuation("a1", 4), Command("a1", "LOGIN", LoginArgs("user", 'p"ss\\w d'))]


def test_literal_fed_one_byte_at_a_time() -> None:
    data = b"x APPEND INBOX (\\Seen) {12}\r\nhello\r\nworld\r\n"
    reader = CommandReader()
    got: list[object] = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        got += drain(reader)
    assert got[0] == NeedContinuation("x", 12)
    cmd = got[1]
    assert isinstance(cmd, Command) and isinstance(cmd.args, AppendArgs)
    assert cmd.args.message == b"hello\r\nworld" and cmd.args.flags == ("\\Seen",)


def test_empty_literal() -> None:
    assert events(b"a LOGIN {0}\r\n {0+}\r\n\r\n") == [
        NeedContinuation("a", 0), Command("a", "LOGIN", LoginArgs("", ""))
    ]


def test_literal_keeps_crlf_and_8bit() -> None:
    got = events(b"a LOGIN u {5+}\r\n\xc3\xa9\r\nx\r\n")
    assert got == [Command("a", "LOGIN", LoginArgs("u", "é\r\nx"))]


def test_literal_header_inside_quotes_is_not_a_literal() -> None:
    got = events(b'a LOGIN "{3}" "x"\r\n')
    assert got == [Command("a", "LOGIN", LoginArgs("{3}", "x"))]


# --- limits -------------------------------------------------------------------------------


def test_oversized_sync_literal_refused_from_header_alone() -> None:
    reader = CommandReader(max_literal=1024)
    reader.feed(b"a1 LOGIN {999999999}\r\n")
    assert drain(reader) == [ParseError("a1", "Literal too large")]
    assert reader.buffered == 0 and not reader.closed
    # the session goes on: the client never sent the literal
    reader.feed(b"a2 NOOP\r\n")
    assert drain(reader) == [Command("a2", "NOOP", NoArgs())]


def test_oversized_append_is_no_toobig() -> None:
    got = events(b"a1 APPEND INBOX {999999999}\r\n", max_append=1000)
    assert got == [ParseError("a1", "Message too large", "NO", "TOOBIG")]
    assert isinstance(got[0], ParseError)
    assert got[0].response().to_bytes() == b"a1 NO [TOOBIG] Message too large\r\n"


def test_oversized_nonsync_literal_is_fatal() -> None:
    # RFC 7888 §4: its octets are already on the wire; answer and close
    reader = CommandReader(max_append=1000)
    reader.feed(b"a1 APPEND INBOX {999999999+}\r\n" + b"x" * 5000)
    got = drain(reader)
    assert len(got) == 1 and isinstance(got[0], ParseError) and got[0].fatal
    assert reader.closed and reader.buffered == 0
    reader.feed(b"a2 NOOP\r\n")
    assert drain(reader) == []


def test_append_literal_within_limit_is_accepted() -> None:
    got = events(b"a APPEND INBOX {2000+}\r\n" + b"y" * 2000 + b"\r\n", max_literal=10, max_append=4096)
    assert isinstance(got[0], Command) and got[0].args.message == b"y" * 2000  # type: ignore[union-attr]


def test_long_line_is_refused_and_session_continues() -> None:
    reader = CommandReader(max_line=100)
    reader.feed(b"a1 LOGIN " + b"x" * 500)
    got = drain(reader)
    assert got == [ParseError("a1", "Command line too long")]
    reader.feed(b"x" * 500 + b"\r\na2 NOOP\r\n")
    assert drain(reader) == [Command("a2", "NOOP", NoArgs())]


def test_long_line_with_nonsync_literal_skips_the_literal() -> None:
    reader = CommandReader(max_line=100)
    reader.feed(b"a1 LOGIN " + b"x" * 200 + b" {5+}\r\nABCDEa2 NOOP\r\n")
    assert drain(reader) == [ParseError("a1", "Command line too long"), Command("a2", "NOOP", NoArgs())]


def test_too_many_literals() -> None:
    data = b"a SEARCH" + b" TEXT {1+}\r\nx" * 5 + b"\r\n"
    got = events(data, max_literals=3)
    assert isinstance(got[-1], ParseError) and got[-1].fatal


# --- malformed commands are BAD, and harmless --------------------------------------------

BAD_LINES = [
    # (line, expected tag, message)
    (b"\r\n", None, "Empty command line"),
    (b"   \r\n", None, "Empty command line"),
    (b"* NOOP\r\n", None, "Missing tag"),
    (b"+ NOOP\r\n", None, "Missing tag"),
    (b"a1\r\n", "a1", "Expected space"),
    (b"a1 \r\n", "a1", "Expected command"),
    (b"a1 FROB\r\n", "a1", "Unknown command FROB"),
    (b"a1 UID NOOP\r\n", "a1", "Unknown command UID NOOP"),
    (b"a1 NOOP extra\r\n", "a1", "Unexpected extra arguments"),
    (b"a1 NOOP \r\n", "a1", "Unexpected extra arguments"),
    (b'a1 LOGIN "unterminated\r\n', "a1", "Unterminated quoted string"),
    (b'a1 LOGIN "caf\xc3\xa9" x\r\n', "a1", "Invalid character in quoted string"),
    (b'a1 LOGIN "a\\b" x\r\n', "a1", "Bad escape in quoted string"),
    (b"a1 LOGIN caf\xc3\xa9 x\r\n", "a1", "Expected space"),
    (b"a1 LOGIN a\r\n", "a1", "Expected space"),
    (b"a1 FETCH 0 FLAGS\r\n", "a1", "Number out of range"),
    (b"a1 FETCH 1: FLAGS\r\n", "a1", "Expected number"),
    (b"a1 FETCH 4294967296 FLAGS\r\n", "a1", "Number out of range"),
    (b"a1 FETCH 1 (FLAGS\r\n", "a1", "Expected space"),
    (b"a1 FETCH 1 BODY[1.]\r\n", "a1", "Bad section"),
    (b"a1 FETCH 1 BODY[MIME]\r\n", "a1", "Bad section 'MIME'"),
    (b"a1 FETCH 1 BODY[]<0.0>\r\n", "a1", "Number out of range"),
    (b"a1 FETCH 1 FROB\r\n", "a1", "Unknown FETCH attribute 'FROB'"),
    (b"a1 SEARCH FROB\r\n", "a1", "Unknown search key FROB"),
    (b"a1 SEARCH (SEEN\r\n", "a1", "Expected space"),
    (b"a1 SEARCH SINCE 32-Jan-2020\r\n", "a1", "Invalid date"),
    (b"a1 SEARCH SINCE 1-Foo-2020\r\n", "a1", "Invalid date"),
    (b"a1 STORE 1 FLAGS\r\n", "a1", "Expected space"),
    (b"a1 STORE 1 *FLAGS (\\Seen)\r\n", "a1", "Expected FLAGS"),
    (b"a1 SELECT INBOX (FROB)\r\n", "a1", "Unknown SELECT parameter FROB"),
    (b"a1 SELECT INBOX (QRESYNC (1 2 1:9 (1:3 1:4)))\r\n", "a1", "Invalid QRESYNC sets"),  # RFC 7162 §3.2.5.2
    (b"a1 SELECT INBOX (QRESYNC (1 2 1:*))\r\n", "a1", "Invalid QRESYNC known-uids"),
    (b"a1 UID FETCH 1 FLAGS (CHANGEDSINCE 1 FROB)\r\n", "a1", "Unknown FETCH modifier"),
    (b"a1 STATUS INBOX (FROB)\r\n", "a1", "Unknown STATUS item FROB"),
    (b"a1 STATUS INBOX ()\r\n", "a1", "Empty STATUS item list"),
    (b"a1 APPEND INBOX\r\n", "a1", "Expected space"),
    (b'a1 APPEND INBOX "bad date" {1+}\r\nx\r\n', "a1", "Invalid date-time"),
    (b"a1 APPEND INBOX x\r\n", "a1", "Expected message literal"),
    (b"a1 AUTHENTICATE PLAIN !!!\r\n", "a1", "Invalid base64"),
    (b"a1 AUTHENTICATE PLAIN abc\r\n", "a1", "Invalid base64"),
    (b"a1 LOGIN {3+}\r\na\x00b x\r\n", "a1", "NUL in literal"),
    (b"a1 LIST (RECURSIVEMATCH) \"\" *\r\n", "a1", "RECURSIVEMATCH needs SUBSCRIBED"),
    (b"a1 LIST (RECURSIVEMATCH REMOTE) \"\" *\r\n", "a1", "RECURSIVEMATCH needs SUBSCRIBED"),
    (b"a1 SELECT &Jjo (FROB)\r\n", "a1", "Unknown SELECT parameter FROB"),  # malformed first
    (b"a1 LIST \"\" * RETURN (FROB)\r\n", "a1", "Unknown LIST return option FROB"),
    (b"a1 ENABLE\r\n", "a1", "Expected capability"),
    (b"a1 SEARCH " + b"NOT " * 100 + b"ALL\r\n", "a1", "Search program nested too deeply"),
]


@pytest.mark.parametrize(("line", "tag", "message"), BAD_LINES)
def test_malformed_is_bad_and_harmless(line: bytes, tag: str | None, message: str) -> None:
    reader = CommandReader()
    reader.feed(line + b"z9 NOOP\r\n")
    got = drain(reader)
    got = [e for e in got if not isinstance(e, NeedContinuation)]
    assert got == [ParseError(tag, message), Command("z9", "NOOP", NoArgs())]
    assert not reader.closed


def test_parse_error_response_untagged_without_tag() -> None:
    assert ParseError(None, "Empty command line").response().to_bytes() == b"* BAD Empty command line\r\n"


@pytest.mark.parametrize(("line", "code"), [
    (b"a SELECT &Jjo\r\n", "NONEXISTENT"),
    (b"a EXAMINE !#$&'+,-.0123456789:;<=>?@^_`|[}\r\n", "NONEXISTENT"),
    (b"a STATUS &Jjo (MESSAGES)\r\n", "NONEXISTENT"),
    (b"a DELETE &Jjo\r\n", "NONEXISTENT"),
    (b"a SUBSCRIBE &Jjo\r\n", "NONEXISTENT"),
    (b"a CREATE &Jjo\r\n", "CANNOT"),
    (b"a RENAME INBOX.x &Jjo\r\n", "CANNOT"),
    (b"a COPY 1 &Jjo\r\n", "CANNOT"),
    (b"a APPEND &Jjo {1+}\r\nx\r\n", "CANNOT"),
])
def test_name_not_modified_utf7_is_no(line: bytes, code: str) -> None:
    # RFC 3501 §7.1.3: BAD is for malformed commands; such a name names no mailbox (NO).
    assert events(line) == [ParseError("a", "Mailbox name is not valid mUTF-7", "NO", code)]


@pytest.mark.parametrize("line", [
    b"a LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*\r\n",
    b"a LIST &Jjo *\r\n",
    b"a LSUB \"\" &Jjo*\r\n",
])
def test_list_pattern_not_modified_utf7_matches_nothing(line: bytes) -> None:
    (got,) = events(line)
    assert isinstance(got, Command) and isinstance(got.args, ListArgs)
    assert got.args.patterns == ()


def test_unknown_charset_is_no_badcharset() -> None:
    got = events(b"a SEARCH CHARSET KOI8-R TEXT x\r\n")
    assert got == [ParseError("a", "Unsupported charset", "NO", "BADCHARSET (US-ASCII UTF-8)")]


# --- raw lines: AUTHENTICATE and IDLE ------------------------------------------------------


def test_expect_line_for_authenticate() -> None:
    reader = CommandReader()
    reader.feed(b"a AUTHENTICATE PLAIN\r\n")
    assert isinstance(reader.next_event(), Command)
    reader.expect_line()
    reader.feed(b"AHVzZXIAcGFzcw==\r\n")
    line = reader.next_event()
    assert isinstance(line, ContinuationLine)
    assert decode_sasl_response(line) == b"\x00user\x00pass"
    assert decode_sasl_response(ContinuationLine(b"*")) is None  # RFC 3501 §6.2.2 cancel
    with pytest.raises(GrammarError):
        decode_sasl_response(ContinuationLine(b"not base64!"))
    reader.feed(b"b NOOP\r\n")
    assert reader.next_event() == Command("b", "NOOP", NoArgs())


def test_idle_done() -> None:
    reader = CommandReader()
    reader.feed(b"a IDLE\r\n")
    assert reader.next_event() == Command("a", "IDLE", NoArgs())
    reader.expect_line()
    reader.feed(b"done\r\n")
    line = reader.next_event()
    assert isinstance(line, ContinuationLine) and is_idle_done(line)
    assert not is_idle_done(ContinuationLine(b"a NOOP"))
