"""DATA phase, bytes in / message out (no I/O): end-of-data, smuggling, size, dot-stuffing."""

from __future__ import annotations


import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.smtp import replies as R
from mailstack.smtp.data import NUL, DataReceiver


def run(stream: bytes, limit: int | None = 10_000, chunk: int = 65536) -> tuple[DataReceiver, bytes]:
    """Feed ``stream`` the way StreamReader.readuntil(b"\\n") with limit ``chunk`` would:
    a line up to its LF, or a ``chunk``-byte fragment of a longer line. Returns the
    receiver and what is left after the end of data."""
    r = DataReceiver(limit)
    pos = 0
    while pos < len(stream):
        nl = stream.find(b"\n", pos, pos + chunk)
        if nl >= 0:
            end = nl + 1
        elif len(stream) - pos >= chunk:
            end = pos + chunk
        else:
            break  # connection would wait for more
        piece = stream[pos:end]
        pos = end
        if r.feed(piece):
            return r, stream[pos:]
    return r, stream[pos:]


# The table of end-of-data edge cases (SMTP smuggling, CVE-2023-51764 family):
# (stream after "DATA\r\n", ends the message?, content if it does)
SMUGGLING = [
    # the one true end: <CRLF>.<CRLF>
    (b"a\r\n.\r\nMAIL FROM:<x@y>\r\n", True, b"a\r\n"),
    # bare LF before and after the dot: never the end
    (b"a\n.\nMAIL FROM:<x@y>\r\n", False, None),
    # <LF>.<CRLF>: the dot line follows a bare LF: not the end
    (b"a\n.\r\nMAIL FROM:<x@y>\r\n", False, None),
    # <CRLF>.<LF>: dot line ends in bare LF: not the end
    (b"a\r\n.\nMAIL FROM:<x@y>\r\n", False, None),
    # <CR>.<CR> (bare CRs): not the end
    (b"a\r.\rMAIL FROM:<x@y>\r\n", False, None),
    # <CR><CR><LF>.<CR><LF>: the bytes hold <CRLF>.<CRLF>, so it IS the end (RFC 5321
    # §4.1.1.4; Postfix ends there too, and a relay in front of us would: reading on would
    # desynchronise us from it, a smuggling hole of its own). The line "a<CR>" holds a bare
    # CR, which RFC 5321 §2.3.8 forbids: the message is refused (550 5.6.0, our rule for
    # bare CR; smtpd_forbid_bare_newline only concerns bare LF) and what follows the dot is
    # read as commands again.
    (b"a\r\r\n.\r\nQUIT\r\n", True, R.BARE_CR),
]


@pytest.mark.parametrize("stream, ends, content", SMUGGLING)
def test_end_of_data_table(stream: bytes, ends: bool, content: bytes | R.Reply | None) -> None:
    """``content``: the message (bytes), the refusal (a Reply), or None when it does not end."""
    r, rest = run(stream)
    assert r.done is ends
    if not ends:
        assert content is None
    elif isinstance(content, R.Reply):
        assert r.error == content
        assert rest == stream[stream.index(b"\r\n.\r\n") + 5:]  # the rest is commands
    else:
        assert r.error is None
        assert r.content() == content


def test_smuggled_transaction_is_body_then_real_end() -> None:
    stream = b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\nRCPT TO:<v@y>\nDATA\nspoof\n.\r\n.\r\n"
    r, rest = run(stream)
    assert r.done and r.error is None and rest == b""
    body = r.content()
    # bare LFs were normalised to line ends, the smuggled commands are body text
    assert b"MAIL FROM:<evil@x>\r\n" in body
    assert r.bare_lf >= 4


def test_bare_cr_refused() -> None:
    r, _ = run(b"a\rb\r\n.\r\n")
    assert r.done and r.error == R.BARE_CR


def test_dot_unstuffing() -> None:
    r, _ = run(b"..leading\r\n...two\r\n.\r\n")
    assert r.content() == b".leading\r\n..two\r\n"


def test_empty_message() -> None:
    r, _ = run(b".\r\n")
    assert r.done and r.content() == b""


def test_pipelined_rest_untouched() -> None:
    r, rest = run(b"x\r\n.\r\nQUIT\r\n")
    assert r.done and rest == b"QUIT\r\n"


def test_size_limit_counts_and_drops() -> None:
    big = b"y" * 998 + b"\r\n"
    r, _ = run(big * 20 + b".\r\n", limit=5000)
    assert r.done and r.error == R.TOO_BIG
    assert r.size == 1000 * 20
    assert not r._parts  # nothing kept once over


def test_long_line_fragments_are_one_line_and_never_end() -> None:
    # a 200 KB line arrives in 64 KB fragments; a ".\r\n" tail of it is not the end
    line = b"z" * 200_000 + b"\r\n"
    r = DataReceiver(1_000_000)
    assert not r.feed(line[:65536])
    assert not r.feed(line[65536:131072])
    assert not r.feed(line[131072:])
    assert not r.feed(b"x" * 10)  # fragment
    assert not r.feed(b".\r\n")  # the end of a fragmented line, not end-of-data
    assert r.feed(b".\r\n")
    assert r.content() == line + b"x" * 10 + b".\r\n"


def test_oversize_long_line_tail_is_not_end() -> None:
    r = DataReceiver(100)
    assert not r.feed(b"a" * 500)
    assert not r.feed(b".\r\n")
    assert r.feed(b".\r\n")
    assert r.error == R.TOO_BIG


@given(st.lists(st.binary(max_size=80).filter(lambda b: not set(b) & set(b"\r\n\0")), max_size=30))
def test_roundtrip_property(lines: list[bytes]) -> None:
    """Dot-stuffed CRLF lines come back exactly, whatever they hold."""
    wire = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"
    r, rest = run(wire, limit=None)
    assert r.done and rest == b""
    assert r.content() == b"".join(ln + b"\r\n" for ln in lines)


@given(st.binary(max_size=400))
def test_ends_exactly_at_first_crlf_dot_crlf(body: bytes) -> None:
    """Arbitrary bytes end the DATA phase exactly at the first <CRLF>.<CRLF>, never elsewhere."""
    r, rest = run(body, limit=None, chunk=64)
    stream = b"\r\n" + body  # the DATA command line ended in CRLF
    first = stream.find(b"\r\n.\r\n")
    if first < 0:
        assert not r.done
    else:
        assert r.done
        assert len(body) - len(rest) == first + 5 - 2


# NUL anywhere in the body (RFC 5322 §3.5, RFC 2045 §2.8): refused after the end of data,
# nothing kept; the end of data is still found (the rest is never read as commands).
NULS = [
    b"a\0b\r\n.\r\n",
    b"\0\r\n.\r\n",
    b"Subject: x\0\r\n\r\nbody\r\n.\r\n",
    b"..\0\r\n.\r\n",  # dot-stuffed line
    b"x" * 70000 + b"\0" + b"\r\n.\r\n",  # in a fragment of an over-long line
    b"a\n\0\n\r\n.\r\n",  # after bare LF line ends
]


@pytest.mark.parametrize("stream", NULS)
def test_nul_is_refused(stream: bytes) -> None:
    r, rest = run(stream, limit=None)
    assert r.done and rest == b""
    assert r.error == NUL and (r.error.code, r.error.enhanced) == (554, "5.6.0")
