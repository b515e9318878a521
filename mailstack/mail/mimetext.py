"""Decoding MIME text from strangers: RFC 2047 encoded words and bytes in a named charset.

``email.header.decode_header`` finds encoded words with a lazy regex that, on a header
full of ``=?a?q?`` openings without their ``?=``, rescans the rest of the line from each
one: quadratic, seconds for 50 KB, hours for a megabyte, all inside one C call that holds
the interpreter lock. Here one regex whose every part excludes ``?`` finds them, so a
scan stops at the third ``?`` after its ``=?`` and each character is looked at a bounded
number of times: linear in the header.

Invariants:
- ``decode_words`` and ``decode_bytes`` never raise; what cannot be decoded is kept as it
  was (an encoded word with an unknown charset stays as written), bytes become text with
  replacement characters.
- Charsets are those a mail can declare (RFC 2047 §2, RFC 2045 §5.1): codecs that are
  not character sets of mail (``punycode``, ``idna``: quadratic decoders meant for domain
  labels) and non-text codecs (``base64``, ``zlib``...) are refused as unknown.
"""

from __future__ import annotations

import binascii
import codecs
import re

# RFC 2047 §2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="; no part holds
# "?" or white space (§5), which is what keeps the scan linear.
_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_NOT_MAIL_CHARSETS = frozenset({"punycode", "idna"})


def _codec(charset: str) -> str | None:
    """The codec for a MIME charset name (RFC 2231 §5 ``*language`` dropped), or None."""
    name = charset.partition("*")[0].strip().lower()
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_MAIL_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_bytes(data: bytes, charset: str | None) -> str:
    """``data`` as text in ``charset`` (UTF-8 when absent or unknown), bad bytes replaced."""
    codec = _codec(charset) if charset else None
    try:
        return data.decode(codec or "utf-8", "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):  # a codec's own failure
        return data.decode("utf-8", "replace")


def _decode_word(m: re.Match[str]) -> str | None:
    codec = _codec(m.group(1))
    if codec is None:
        return None
    text = m.group(3).encode("utf-8", "surrogateescape")
    try:
        if m.group(2) in "bB":
            raw = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
        else:  # RFC 2047 §4.2: "_" is a space, =XX an octet
            raw = binascii.a2b_qp(text, header=True)
    except (binascii.Error, ValueError):
        return None
    return decode_bytes(raw, codec)


def decode_words(value: str) -> str:
    """A header value with its encoded words decoded (RFC 2047 §6); raw 8-bit taken as UTF-8.

    White space between two encoded words is dropped (§6.2); everything else is kept.
    """
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "=?" not in text:
        return text
    out: list[str] = []
    pos = 0
    after_word = False
    for m in _WORD.finditer(text):
        gap = text[pos : m.start()]
        decoded = _decode_word(m)
        if decoded is None:
            out.append(gap + m.group(0))
            after_word = False
        else:
            if not (after_word and not gap.strip()):
                out.append(gap)
            out.append(decoded)
            after_word = True
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)
