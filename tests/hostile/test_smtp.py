"""SMTP: the DATA state machine (smtp/data), MAIL/RCPT paths (smtp/params), addresses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.mail.address import AddressError, parse_address
from mailstack.smtp.data import DataReceiver
from mailstack.smtp.params import MailArgs, RcptArgs, parse_mail, parse_path, parse_rcpt
from mailstack.smtp.replies import Reply
from tests.hostile.bounds import SETTINGS, assert_size, bounded

LINES = [b".\r\n", b"..\r\n", b"\r\n", b"\n", b"\r", b"a\r\n", b".a\n", b"x" * 50, b"\r\n.\n", b"\x00"]
streams = st.lists(st.sampled_from(LINES), max_size=60).map(b"".join)


def _pieces(data: bytes, longest: int) -> list[bytes]:
    """What StreamReader.readuntil(b"\\n") hands over: lines, or fragments of over-long ones."""
    out: list[bytes] = []
    start = 0
    while start < len(data):
        nl = data.find(b"\n", start, start + longest)
        end = nl + 1 if nl >= 0 else min(start + longest, len(data))
        out.append(data[start:end])
        start = end
    return out


def _receive(data: bytes, limit: int | None) -> DataReceiver:
    r = DataReceiver(limit)
    for piece in _pieces(data, 64):
        if r.feed(piece):
            break
    return r


def _check(data: bytes, limit: int | None = None) -> None:
    r = bounded(_receive, data, limit)
    if r.done and r.error is None:
        assert_size(len(r.content()), len(data), 2, 2)
    assert len(r._parts) <= (limit if limit is not None else len(data)) + len(data) + 2


@SETTINGS
@given(st.binary(max_size=3000), st.sampled_from([None, 0, 100, 10_000]))
def test_data_any_bytes(data: bytes, limit: int | None) -> None:
    _check(data, limit)


@SETTINGS
@given(streams, st.integers(1, 3000))
def test_data_amplified(stream: bytes, times: int) -> None:
    _check(stream * times + b"\r\n.\r\n", 1_000_000)


def test_data_memory_is_the_message_not_a_list_of_lines() -> None:
    r = bounded(_receive, b"ab\r\n" * 250_000 + b".\r\n", None)
    assert r.done and len(r.content()) == 1_000_000
    assert isinstance(r._parts, bytearray)  # one buffer, not 250,000 objects


PATHS = [b"<", b">", b"@", b":", b",", b"\"", b"\\", b" ", b"a", b"example.test", b"SIZE=10", b"[1.2.3.4]",
         b"\xc3\xa9", b"xn--", b"."]
paths = st.lists(st.sampled_from(PATHS), max_size=30).map(lambda p: b"".join(p).decode("utf-8", "replace"))


def _address(text: str) -> None:
    parsed = bounded(parse_path, text)
    for extended in (False, True):
        mail = bounded(lambda: parse_mail("FROM:" + text, extended=extended, max_size=10_000_000))
        assert isinstance(mail, (MailArgs, Reply))
    for utf8 in (False, True):
        assert isinstance(bounded(lambda: parse_rcpt("TO:" + text, smtputf8=utf8)), (RcptArgs, Reply))
    for candidate in (text, parsed[0] if parsed else ""):
        for literal in (False, True):
            try:
                bounded(lambda: parse_address(candidate, allow_literal=literal))
            except AddressError:
                pass


@SETTINGS
@given(st.one_of(st.text(max_size=600), paths))
def test_mail_rcpt_arguments(text: str) -> None:
    _address(text)


def test_long_mail_arguments() -> None:
    for text in ("<" + '"' * 10_000 + ">", "<" + "\\" * 10_000, "<" + "@a," * 5000 + ":b@c>",
                 "<a@" + "\u00e9" * 20_000 + ">", "<a@" + "a." * 20_000 + "b>"):
        _address(text)
