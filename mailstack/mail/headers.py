"""Message header sections as bytes: the one reader of header fields, and the few edits we make.

Pure functions over bytes, no I/O. Everything in mailstack that looks at or changes a
message's header section goes through here: ``mail.author`` (From:/Sender:), delivery
(the loop checks on ``Received:``/``Delivered-To:``, the ``Return-Path:`` and
``Delivered-To:`` it prepends), the MX, LMTP and submission (``Received:``), submission
(``Date:``/``Message-ID:`` when missing), DSNs (the returned header), the removal of
forged ``Authentication-Results:`` and the DKIM pre-check.

How a header section is read (the table of edge cases is tests/mail/test_headers.py):

- A line is its bytes up to and including LF; a CR right before the LF belongs to the
  line end, so LF, CRLF and a mix of both are read alike (messages on disk have LF, on
  the wire CRLF); a bare CR is an ordinary byte.
- The header section ends at the first empty line (RFC 5322 §2.1). A message that starts
  with one has an empty header section; one without any is all header section (the body
  is optional, §3.5). ``header_end`` gives both offsets; only the first ``limit`` bytes
  are ever scanned where a caller asks for a bound.
- A line starting with SP or HTAB continues the field before it (§2.2.3); unfolding
  removes the line ends and keeps the white space.
- A field name is ``1*ftext`` (printable US-ASCII but ``:``, §3.6.8) and, as the
  obsolete syntax allows (§4.5.3, ``obs-optional = field-name *WSP ":" ...``), white
  space may come before the colon: ``From : x`` and ``FROM\\t: x`` ARE From fields. Names
  compare case-insensitively (§1.2.2).
- Any other line (no colon; a space, a control byte, NUL or an 8-bit byte in the name; a
  continuation line with no field before it) is malformed: it is kept as a ``RawField``
  without a name, with the continuation lines after it, so the section can be rebuilt
  byte for byte; ``header_fields(strict=True)`` refuses it (``HeaderError``) so that a
  client cannot hide a field from us that a mail reader or DKIM verifier might still
  see, the lenient reading skips it.
- Values are read as UTF-8 (RFC 6532); strictly, bytes that are not UTF-8 are refused.

Invariants: nothing here raises on any input but the documented ``HeaderError`` of the
strict reading; all work is linear in the input (tests/hostile/test_headers.py); the
edits never change a byte of the message outside what they add or remove.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "MAX_HEADER_SCAN",
    "HeaderError",
    "HeaderField",
    "RawField",
    "field",
    "has_field",
    "header_block",
    "header_end",
    "header_fields",
    "insert_fields",
    "raw_fields",
    "received_header",
    "remove_fields",
    "safe_text",
    "split_message",
]

# How much of a message the loop checks and DSNs look at for its header section: far
# more than any real header (Postfix's header_size_limit is 100 KiB), little enough that
# a message of one endless header costs nothing.
MAX_HEADER_SCAN = 256 * 1024

# RFC 5322 §3.6.8 field-name = 1*ftext; §4.5.3 obsolete syntax allows *WSP before ":".
_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# The empty line: a LF, then an optional CR, then LF (the first LF ends the line before).
_BLANK_RE = re.compile(rb"\n\r?\n")
_WSP = (b" ", b"\t")


class HeaderError(ValueError):
    """A header section the strict reading refuses; ``str()`` says why in one line."""


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field: its name as written (without white space before the colon) and
    its unfolded value (everything after the colon, line ends of folding removed)."""

    name: str
    value: str

    @property
    def key(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class RawField:
    """One field as it stands in the message: ``raw`` is its first line, its continuation
    lines and their line ends. ``name`` is None for a malformed line (see the module
    docstring); ``value_at`` is where the value starts in ``raw`` (after the colon)."""

    name: str | None
    raw: bytes
    line: int  # 1-based number of its first line in the header section
    value_at: int = 0

    @property
    def key(self) -> str:
        return self.name.lower() if self.name is not None else ""

    @property
    def malformed(self) -> bool:
        # a last line holding only a CR (a message ending in one) is no field, but no harm
        return self.name is None and self.raw != b"\r"

    @property
    def value(self) -> bytes:
        """The value unfolded (RFC 5322 §2.2.3): line ends removed, white space kept."""
        return b"".join(part[:-1] if part.endswith(b"\r") else part for part in self.raw[self.value_at:].split(b"\n"))


def header_end(message: bytes, limit: int | None = None) -> tuple[int, int]:
    """(end of the header section, start of the body) in ``message``.

    The header section ``message[:end]`` ends with the line end of its last line (when
    the message has one there); the empty line is ``message[end:body]``. No empty line:
    both are ``len(message)`` (or ``limit``, when given and smaller: the section is then
    cut at the last line end within it).
    """
    scan = message if limit is None else message[:limit]
    if scan.startswith(b"\n"):
        return 0, 1
    if scan.startswith(b"\r\n"):
        return 0, 2
    m = _BLANK_RE.search(scan)
    if m is not None:
        return m.start() + 1, m.end()
    if len(scan) < len(message):  # cut by the limit: keep whole lines only
        end = scan.rfind(b"\n") + 1
        return end, end
    return len(scan), len(scan)


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header section, body); the empty line between them belongs to neither."""
    end, body = header_end(message)
    return message[:end], message[body:]


def header_block(message: bytes, limit: int = MAX_HEADER_SCAN) -> bytes:
    """The header section of ``message``, looking at its first ``limit`` bytes only."""
    end, _ = header_end(message, limit)
    return message[:end]


def raw_fields(message: bytes) -> Iterator[RawField]:
    """The fields of the header section of ``message``, in order, exactly as they stand:
    their ``raw`` bytes joined give the header section back."""
    head = message[: header_end(message)[0]]
    n = len(head)
    pos = 0
    number = 0
    start = -1  # where the current item began; -1: none yet
    name: str | None = None
    value_at = 0
    first = 0
    while pos < n:
        nl = head.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        number += 1
        lead = head[pos : pos + 1]
        if start >= 0 and (lead in _WSP or head[pos:end] == b"\r"):
            pos = end  # a continuation line (or a lone CR at the very end): same item
            continue
        if start >= 0:
            yield RawField(name, head[start:pos], first, value_at)
        start, first = pos, number
        m = None if lead in _WSP else _FIELD_RE.match(head, pos, end)
        if m is None:
            name, value_at = None, 0
        else:
            name, value_at = m.group(1).decode("ascii"), m.end() - pos
        pos = end
    if start >= 0:
        yield RawField(name, head[start:], first, value_at)


def header_fields(message: bytes, *, strict: bool = True) -> list[HeaderField]:
    """Every header field of ``message`` in order, names and unfolded values.

    ``strict``: a malformed line or a value that is not UTF-8 raises ``HeaderError``;
    otherwise a malformed line is skipped with its continuation lines and bytes that are
    not UTF-8 are replaced (U+FFFD).
    """
    out: list[HeaderField] = []
    for rf in raw_fields(message):
        if rf.name is None:
            if strict and rf.malformed:
                what = "continues no field" if rf.raw[:1] in _WSP else "is not a header field"
                raise HeaderError(f"header line {rf.line} {what}")
            continue
        raw = rf.value
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            if strict:
                raise HeaderError(f"{rf.name}: header is not UTF-8") from None
            value = raw.decode("utf-8", "replace")
        out.append(HeaderField(rf.name, value))
    return out


def has_field(message: bytes, name: str) -> bool:
    """Does the header section hold a field called ``name`` (any case, ``Name :`` too)?"""
    key = name.lower()
    return any(rf.key == key for rf in raw_fields(message))


def remove_fields(message: bytes, drop: Callable[[HeaderField], bool]) -> tuple[bytes, int]:
    """``message`` without the header fields for which ``drop`` is true, and how many.

    ``drop`` sees each well-formed field (value decoded leniently); malformed lines and
    every other byte of the message are kept as they are.
    """
    end, _ = header_end(message)
    kept: list[bytes] = []
    removed = 0
    for rf in raw_fields(message[:end]):
        if rf.name is not None and drop(HeaderField(rf.name, rf.value.decode("utf-8", "replace"))):
            removed += 1
            continue
        kept.append(rf.raw)
    if not removed:
        return message, 0
    return b"".join(kept) + message[end:], removed


def insert_fields(message: bytes, fields: bytes) -> bytes:
    """``fields`` (whole CRLF-terminated field lines) added at the end of the header
    section, before the empty line; a last header line without a line end gets one."""
    end, _ = header_end(message)
    head = message[:end]
    if head and not head.endswith(b"\n"):
        head += b"\r\n"
    return head + fields + message[end:]


def safe_text(text: str) -> str:
    """``text`` without control characters: it can never end a line or start a field."""
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f")


def field(name: str, value: str) -> bytes:
    """One CRLF-terminated field line ``Name: value``, control characters removed from the
    value (an envelope address can never inject a second field); UTF-8 (RFC 6532), with
    the original bytes of surrogate-escaped input."""
    return f"{name}: {safe_text(value)}\r\n".encode("utf-8", "surrogateescape")


def received_header(
    *,
    helo: str | None,
    client_ip: str | None,
    by: str,
    protocol: str,
    queue_id: str,
    recipient: str | None = None,
    tls: str | None = None,
    now: float | None = None,
) -> bytes:
    """Our trace field (RFC 5321 §4.4), folded, CRLF-terminated::

        Received: from <helo> ([<ip>])
        \\tby <by> (mailstack) with <protocol> id <queue id>
        \\t(<tls>)
        \\tfor <recipient>;
        \\t<date>

    ``protocol`` is the WITH keyword (RFC 3848: ESMTP, ESMTPS, ESMTPSA, LMTP, UTF8SMTP...);
    the TLS comment and the single recipient (§4.4: only when there is one) are optional.
    """
    from_part = safe_text(helo or "unknown")
    ip = f"[{client_ip}]" if client_ip else "localhost"
    lines = [f"Received: from {from_part} ({ip})", f"\tby {safe_text(by)} (mailstack) with {protocol} id {queue_id}"]
    if tls:
        lines.append(f"\t({safe_text(tls)})")
    if recipient:
        lines.append(f"\tfor <{safe_text(recipient)}>")
    lines[-1] += ";"
    lines.append(f"\t{email.utils.formatdate(time.time() if now is None else now, localtime=False)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
