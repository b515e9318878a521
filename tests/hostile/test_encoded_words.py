"""RFC 2047 encoded words and charsets (mail/mimetext; used by SEARCH and the FETCH index)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.search import decode_header_value
from mailstack.mail.mimetext import decode_bytes, decode_words
from tests.hostile.bounds import SETTINGS, assert_size, bounded

CHARSETS = ["utf-8", "iso-8859-1", "utf-7", "punycode", "idna", "base64", "zlib", "x-nope", "utf-8*en", ""]
words = st.builds(
    lambda cs, enc, text, close: f"=?{cs}?{enc}?{text}{'?=' if close else ''}",
    st.sampled_from(CHARSETS), st.sampled_from("bBqQx"), st.text("abcAB=_+/?-3D ", max_size=12), st.booleans(),
)
headers = st.lists(st.one_of(words, st.text(" \t=?", max_size=3), st.text(max_size=5)), max_size=30).map("".join)


def _check(value: str) -> None:
    out = bounded(decode_words, value)
    assert_size(len(out), len(value), 4, 16)
    assert bounded(decode_header_value, value) == out


@SETTINGS
@given(st.text())
def test_any_text(value: str) -> None:
    _check(value)


@SETTINGS
@given(headers)
def test_near_valid_words(value: str) -> None:
    _check(value)


@SETTINGS
@given(headers, st.integers(1, 3000))
def test_amplified(value: str, times: int) -> None:
    _check((value or "=?a?q?") * times)


@SETTINGS
@given(st.binary(max_size=2000), st.sampled_from(CHARSETS + [None]))
def test_bytes_in_any_charset(data: bytes, charset: str | None) -> None:
    out = bounded(decode_bytes, data, charset)
    assert_size(len(out), len(data), 2, 16)


def test_unclosed_words_are_linear() -> None:
    """email.header.decode_header took 6.5 s on 64 KB of these (quadratic; hours for 1 MB)."""
    _check("=?a?q?a " * 150_000)
    _check("=?utf-8?b?" * 100_000)


def test_decoding() -> None:
    assert decode_words("=?utf-8?q?Caf=C3=A9?= au =?utf-8?b?bGFpdA==?=") == "Café au lait"
    assert decode_words("=?utf-8?q?a?= \t =?utf-8?q?b?=") == "ab"  # RFC 2047 §6.2
    assert decode_words("=?punycode?q?abc?=") == "=?punycode?q?abc?="  # not a mail charset
    assert decode_bytes(b"caf\xe9", "iso-8859-1") == "café"
