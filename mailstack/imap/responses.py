"""Rendering of IMAP server responses (RFC 3501 §7, §9) to bytes.

Values are rendered by type: ``None`` is NIL, ``int`` a number, ``str``/``bytes`` a
string (quoted when it can be, else a literal), ``Atom`` verbatim, ``Literal`` always as a
literal, ``Raw`` pre-rendered bytes, and a list/tuple a parenthesised list.

Invariants: every rendered response ends in CRLF and never contains a bare CR or LF
outside a literal; a quoted string only holds 7-bit octets other than NUL, CR and LF
(RFC 3501 §9 QUOTED-CHAR), with ``"`` and ``\\`` escaped; anything else goes in a literal.
Status texts are forced to printable 7-bit. ENVELOPE and BODYSTRUCTURE are rendered like
Dovecot: members of an address list and the parts of a multipart follow each other
without a space (RFC 3501 §9 ``1*address``, ``1*body``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Union

from mailstack.storage import mutf7

from .dates import format_datetime

if TYPE_CHECKING:
    from .addresses import Address
    from .message import BodyStructure, Envelope

STATUSES = frozenset({"OK", "NO", "BAD", "PREAUTH", "BYE"})
MAX_QUOTED = 1024  # longer strings go as literals (Dovecot does the same)


@dataclass(frozen=True)
class Atom:
    """Rendered verbatim: flags, keywords, capability names, ``NIL``-free atoms."""

    text: str


@dataclass(frozen=True)
class Literal:
    """Always rendered as ``{n}`` CRLF octets (message bodies and sections)."""

    data: bytes


@dataclass(frozen=True)
class Raw:
    """Bytes already in wire form (ENVELOPE, BODYSTRUCTURE)."""

    data: bytes


Value = Union[None, int, str, bytes, Atom, Literal, Raw, datetime, Sequence["Value"]]


def _to_bytes(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def can_quote(data: bytes) -> bool:
    """RFC 3501 §9: quoted strings carry TEXT-CHARs only (7-bit, no NUL/CR/LF)."""
    return len(data) <= MAX_QUOTED and all(0 < c < 0x80 and c not in (0x0A, 0x0D) for c in data)


def render_string(s: str | bytes) -> bytes:
    """A ``string``: quoted when allowed, else a literal."""
    data = _to_bytes(s)
    if can_quote(data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return render_literal(data)


def render_literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def render_nstring(s: str | bytes | None) -> bytes:
    return b"NIL" if s is None else render_string(s)


_ASTRING_OK = frozenset(
    c for c in range(0x21, 0x7F) if c not in b'(){%*"\\'
)


def render_astring(s: str | bytes) -> bytes:
    """An ``astring``: a bare atom when possible (never ``NIL``), else a string."""
    data = _to_bytes(s)
    if data and data.upper() != b"NIL" and all(c in _ASTRING_OK for c in data):
        return data
    return render_string(data)


def render_mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 §5.1.3), as an astring; with
    ``utf8`` (a session that enabled IMAP4rev2), UTF-8 (RFC 9051 §5.1), quoted (§9:
    QUOTED-CHAR includes UTF8-2/3/4) unless it holds what no quoted string may."""
    if not utf8:
        return render_astring(mutf7.encode(name))
    data = name.encode("utf-8", "surrogateescape")
    if data.isascii() or not (len(data) <= MAX_QUOTED and all(c not in (0, 0x0A, 0x0D) for c in data)):
        return render_astring(data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def render(value: Value) -> bytes:
    """Render one value (see the module docstring for the mapping)."""
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("bool is not an IMAP value")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, (str, bytes)):
        return render_string(value)
    if isinstance(value, Atom):
        return value.text.encode("ascii")
    if isinstance(value, Literal):
        return render_literal(value.data)
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, datetime):
        return b'"' + format_datetime(value).encode("ascii") + b'"'
    return b"(" + b" ".join(render(v) for v in value) + b")"


def uid_set(numbers: Sequence[int]) -> str:
    """Numbers, in the given order, as a compact sequence-set: runs of n, n+1... as ranges
    ("1:3,5"; RFC 3501 §9). For COPYUID / APPENDUID (RFC 4315 §3) and ESEARCH ALL (RFC 4731)."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(out)


def render_flags(flags: Collection[str]) -> bytes:
    """A flag list; system flags first in RFC order, then keywords sorted."""
    order = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
    system = [f for f in order if f in flags]
    rest = sorted(f for f in flags if f not in order)
    return b"(" + b" ".join(f.encode("ascii", "replace") for f in system + rest) + b")"


def _clean_text(text: str) -> bytes:
    # resp-text = text: 1*TEXT-CHAR, so no CR/LF and (by our rule) 7-bit only
    out = "".join(c if 0x20 <= ord(c) < 0x7F else (" " if c in "\r\n\t" else "?") for c in text)
    return out.encode("ascii")


@dataclass(frozen=True)
class StatusResponse:
    """OK / NO / BAD / PREAUTH / BYE, tagged or (``tag`` None) untagged, with an optional
    response code such as ``"TRYCREATE"`` or ``"APPENDUID 38505 3955"`` (RFC 3501 §7.1)."""

    tag: str | None
    status: str
    text: str
    code: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")

    def to_bytes(self) -> bytes:
        out = (self.tag or "*").encode("ascii") + b" " + self.status.encode("ascii") + b" "
        if self.code:
            out += b"[" + _clean_text(self.code) + b"] "
        return out + _clean_text(self.text or self.status.capitalize()) + b"\r\n"


@dataclass(frozen=True)
class DataResponse:
    """An untagged data response: ``* <items...>`` (``* 3 EXISTS``, ``* FLAGS (...)``)."""

    items: tuple[Value, ...]

    def to_bytes(self) -> bytes:
        return b"* " + b" ".join(render(v) for v in self.items) + b"\r\n"


@dataclass(frozen=True)
class ContinuationRequest:
    """``+ text`` (RFC 3501 §7.5); ``data`` is base64 for SASL challenges."""

    text: str = "Ready"

    def to_bytes(self) -> bytes:
        return b"+ " + _clean_text(self.text) + b"\r\n"


Response = Union[StatusResponse, DataResponse, ContinuationRequest]


def ok(tag: str | None, text: str = "Completed", code: str | None = None) -> StatusResponse:
    return StatusResponse(tag, "OK", text, code)


def no(tag: str | None, text: str, code: str | None = None) -> StatusResponse:
    return StatusResponse(tag, "NO", text, code)


def bad(tag: str | None, text: str, code: str | None = None) -> StatusResponse:
    return StatusResponse(tag, "BAD", text, code)


def bye(text: str, code: str | None = None) -> StatusResponse:
    return StatusResponse(None, "BYE", text, code)


class ImapError(Exception):
    """An error that knows the response it becomes: ``raise ImapError("NO", "...", "TRYCREATE")``."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code

    def response(self, tag: str | None) -> StatusResponse:
        return StatusResponse(tag, self.status, self.text, self.code)


# ------------------------------------------------------------------------------- FETCH


def fetch_response(seq: int, items: Sequence[tuple[str, Value]]) -> bytes:
    """``* <seq> FETCH (NAME value ...)`` (RFC 3501 §7.4.2)."""
    body = b" ".join(name.encode("ascii") + b" " + render(value) for name, value in items)
    return b"* %d FETCH (" % seq + body + b")\r\n"


def render_address(addr: Address) -> bytes:
    return b"(" + b" ".join(render_nstring(v) for v in (addr.name, addr.adl, addr.mailbox, addr.host)) + b")"


def render_address_list(addrs: Sequence[Address] | None) -> bytes:
    if not addrs:
        return b"NIL"
    return b"(" + b"".join(render_address(a) for a in addrs) + b")"


def render_envelope(env: Envelope) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE: date subject from sender reply-to to cc bcc in-reply-to message-id."""
    return b"(" + b" ".join([
        render_nstring(env.date), render_nstring(env.subject),
        render_address_list(env.from_), render_address_list(env.sender),
        render_address_list(env.reply_to), render_address_list(env.to),
        render_address_list(env.cc), render_address_list(env.bcc),
        render_nstring(env.in_reply_to), render_nstring(env.message_id),
    ]) + b")"


def _render_params(params: Sequence[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(render_string(k) + b" " + render_string(v) for k, v in params) + b")"


def _render_language(langs: Sequence[str]) -> bytes:
    if not langs:
        return b"NIL"
    if len(langs) == 1:
        return render_string(langs[0])
    return b"(" + b" ".join(render_string(x) for x in langs) + b")"


def _render_extension(bs: BodyStructure, multipart: bool) -> list[bytes]:
    out = []
    if multipart:
        out.append(_render_params(bs.params))
    else:
        out.append(render_nstring(bs.md5))
    if bs.disposition is None:
        out.append(b"NIL")
    else:
        out.append(b"(" + render_string(bs.disposition) + b" " + _render_params(bs.disposition_params) + b")")
    out.append(_render_language(bs.language))
    out.append(render_nstring(bs.location))
    return out


def render_body_structure(bs: BodyStructure, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY (RFC 3501 §7.4.2)."""
    if bs.children:
        out = b"".join(render_body_structure(c, extended) for c in bs.children)
        fields = [out, render_string(bs.subtype)]
        if extended:
            fields.extend(_render_extension(bs, multipart=True))
        return b"(" + b" ".join(fields) + b")"
    fields = [
        render_string(bs.type), render_string(bs.subtype), _render_params(bs.params),
        render_nstring(bs.id), render_nstring(bs.description), render_string(bs.encoding),
        str(bs.size).encode("ascii"),
    ]
    if bs.envelope is not None and bs.message is not None:  # message/rfc822
        fields.append(render_envelope(bs.envelope))
        fields.append(render_body_structure(bs.message, extended))
        fields.append(str(bs.lines).encode("ascii"))
    elif bs.type.lower() == "text":
        fields.append(str(bs.lines).encode("ascii"))
    if extended:
        fields.extend(_render_extension(bs, multipart=False))
    return b"(" + b" ".join(fields) + b")"
