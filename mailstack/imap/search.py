"""Evaluation of a parsed SEARCH program (RFC 3501 §6.4.4) against one message.

``matches(key, message, context)`` is a pure function: ``message`` is any object with the
``SearchableMessage`` attributes; its headers and body text are only asked for when a key
needs them (so flag/UID/size searches never read the message file). ``MessageView`` is a
ready implementation over the message bytes, loaded lazily through a callable.

Invariants: string keys match case-insensitively as substrings (RFC 3501 §6.4.4) after
MIME decoding of encoded words and of text bodies; dates ignore time and timezone
(BEFORE/ON/SINCE on the internal date, SENT* on the Date: header); FROM/TO/CC/BCC match
the fields' addresses as parsed (``address_text``), not their raw text; nothing raises on
a broken message: an undecodable part just does not match.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import quopri
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

from mailstack.mail.mimetext import decode_bytes, decode_words

from .addresses import MISSING_DOMAIN, MISSING_MAILBOX, parse_address_list
from .message import ParsedMessage
from .types import SearchKey, SequenceSet


class SearchableMessage(Protocol):
    """What SEARCH needs from a message. ``flags`` holds system flags (``\\Seen``,
    ``\\Recent``...) and keywords together."""

    @property
    def seq(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def flags(self) -> frozenset[str]: ...
    @property
    def internaldate(self) -> datetime: ...
    @property
    def size(self) -> int: ...
    @property
    def modseq(self) -> int: ...

    def headers(self) -> Sequence[tuple[str, str]]:
        """(lower-case name, decoded value) of every top-level header field."""
        ...

    def body_text(self) -> str:
        """The decoded text of the message's text parts."""
        ...

    def save_date(self) -> datetime | None:
        """When the message was stored in its mailbox (RFC 8514), None if unknown."""
        ...

    def email_id(self) -> str:
        """Its EMAILID (RFC 8474 §5.1)."""
        ...

    def body_contains(self, needle: str) -> bool | None:
        """Whether the case-folded body text holds ``needle`` (already case-folded), when
        known without ``body_text`` (a full-text index, ``imap.fts``); None: not known."""
        ...


@dataclass(frozen=True)
class SearchContext:
    """What ``*`` and ``$`` mean for this mailbox (RFC 3501 §9, RFC 5182)."""

    max_seq: int
    max_uid: int
    saved_uids: frozenset[int] = frozenset()


_FLAG_KEYS = {
    "ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged", "SEEN": "\\Seen", "RECENT": "\\Recent",
}
_HEADER_KEYS = {"SUBJECT": "subject"}
_ADDRESS_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "TO": "to"}


def address_text(value: str) -> str:
    """An address field as SEARCH FROM/TO/CC/BCC sees it: every address written out as
    ``Display Name <local@domain>`` (``local@domain`` without a name), a group as
    ``name: ... ;``. Parsed by ``mail.addrlist`` (linear in the input, never Python's
    ``email`` address parser, which is quadratic on hostile input). ``value`` is the
    field with its encoded words already decoded (the index keeps decoded headers), so
    a decoded display name is searchable; a decoded name holding ``,`` or ``<`` may be cut
    in two by the parser, but its words all stay in the text, so a search still finds it.
    """
    out: list[str] = []
    for a in parse_address_list(value):
        if a.host is None:  # group start (mailbox = group name) or group end
            out.append(f"{a.mailbox}:" if a.mailbox is not None else ";")
            continue
        local = "" if a.mailbox == MISSING_MAILBOX else a.mailbox or ""
        addr = local if a.host == MISSING_DOMAIN else f"{local}@{a.host}"
        out.append(f"{a.name} <{addr}>" if a.name else addr)
    return ", ".join(out)


class _Folded:
    """One message's headers and body text, decoded and case-folded once per ``matches``
    call: a program of many string keys must not decode a big body once per key."""

    __slots__ = ("message", "_headers", "_body", "_addresses")

    def __init__(self, message: SearchableMessage) -> None:
        self.message = message
        self._headers: list[tuple[str, str]] | None = None
        self._body: str | None = None
        self._addresses: dict[str, str] = {}

    def addresses(self, name: str) -> str | None:
        """The address fields ``name`` (from, to, cc, bcc) normalised, case-folded;
        None when the message has no such field."""
        text = self._addresses.get(name)
        if text is None:
            values = [v for n, v in self.message.headers() if n == name]
            if not values:
                return None
            text = self._addresses[name] = "\n".join(address_text(v) for v in values).casefold()
        return text

    def headers(self) -> list[tuple[str, str]]:
        if self._headers is None:
            self._headers = [(n, v.casefold()) for n, v in self.message.headers()]
        return self._headers

    def body(self) -> str:
        if self._body is None:
            self._body = self.message.body_text().casefold()
        return self._body

    def body_has(self, needle: str) -> bool:
        """``needle`` (case-folded) in the body text: asked of the message first (an index
        may know), else by reading it."""
        if self._body is None:
            known = self.message.body_contains(needle)
            if known is not None:
                return known
        return needle in self.body()


def _in_set(seqs: object, n: int, largest: int, ctx: SearchContext, uid: int) -> bool:
    assert isinstance(seqs, SequenceSet)
    if seqs.saved:  # RFC 5182 §2.1: "$" names the saved messages, as UIDs, for SEQ and UID alike
        return uid in ctx.saved_uids
    return seqs.contains(n, largest)


def _sent_date(message: SearchableMessage) -> date | None:
    for name, value in message.headers():
        if name == "date":
            try:
                return email.utils.parsedate_to_datetime(value).date()
            except (TypeError, ValueError, IndexError):
                return None
    return None


def matches(key: SearchKey, message: SearchableMessage, ctx: SearchContext) -> bool:
    """Whether ``message`` satisfies ``key`` (RFC 3501 §6.4.4)."""
    return _matches(key, message, ctx, _Folded(message))


def _matches(key: SearchKey, message: SearchableMessage, ctx: SearchContext, folded: _Folded) -> bool:
    kind, value = key.kind, key.value
    if kind == "AND":
        return all(_matches(k, message, ctx, folded) for k in key.children)
    if kind == "OR":
        return any(_matches(k, message, ctx, folded) for k in key.children)
    if kind == "NOT":
        return not _matches(key.children[0], message, ctx, folded)
    if kind == "ALL":
        return True
    if kind in _FLAG_KEYS:
        return _FLAG_KEYS[kind] in message.flags
    if kind.startswith("UN") and kind[2:] in _FLAG_KEYS:
        return _FLAG_KEYS[kind[2:]] not in message.flags
    if kind == "NEW":  # RFC 3501 §6.4.4: RECENT UNSEEN
        return "\\Recent" in message.flags and "\\Seen" not in message.flags
    if kind == "OLD":
        return "\\Recent" not in message.flags
    if kind in ("KEYWORD", "UNKEYWORD"):
        assert isinstance(value, str)
        present = value.lower() in {f.lower() for f in message.flags}
        return present if kind == "KEYWORD" else not present
    if kind == "SEQ":
        return _in_set(value, message.seq, ctx.max_seq, ctx, message.uid)
    if kind == "UID":
        return _in_set(value, message.uid, ctx.max_uid, ctx, message.uid)
    if kind == "LARGER":
        assert isinstance(value, int)
        return message.size > value
    if kind == "SMALLER":
        assert isinstance(value, int)
        return message.size < value
    if kind == "MODSEQ":  # RFC 7162 §3.1.5
        assert isinstance(value, int)
        return message.modseq >= value
    if kind in ("BEFORE", "ON", "SINCE"):
        assert isinstance(value, date)
        return _compare(kind, message.internaldate.date(), value)
    if kind in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):  # RFC 8514 §4.2: the save date's day (UTC)
        assert isinstance(value, date)
        saved = message.save_date()
        return saved is not None and _compare(kind[5:], saved.date(), value)
    if kind == "SAVEDATESUPPORTED":  # RFC 8514 §4.2: every mailbox here has save dates
        return True
    if kind == "EMAILID":  # RFC 8474 §6
        return message.email_id() == value
    if kind == "THREADID":  # RFC 8474 §6: no threads here (THREADID is NIL): matches nothing
        return False
    if kind in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        assert isinstance(value, date)
        sent = _sent_date(message)
        return sent is not None and _compare(kind[4:], sent, value)
    if kind in _ADDRESS_KEYS:
        # RFC 3501 §6.4.4 "contains the specified string" in the field: matched against the
        # addresses as parsed (comments, quoting and group syntax normalised away) and their
        # display names, as Dovecot does.
        assert isinstance(value, str)
        text = folded.addresses(_ADDRESS_KEYS[kind])
        return text is not None and value.casefold() in text
    if kind in _HEADER_KEYS:
        assert isinstance(value, str)
        name = _HEADER_KEYS[kind]
        needle = value.casefold()
        return any(n == name and needle in v for n, v in folded.headers())
    if kind == "HEADER":
        assert isinstance(value, tuple)
        name, needle = value[0].lower(), value[1].casefold()
        # RFC 3501 §6.4.4: an empty string matches every message that has the field
        return any(n == name and needle in v for n, v in folded.headers())
    if kind == "BODY":
        assert isinstance(value, str)
        return folded.body_has(value.casefold())
    if kind == "TEXT":
        assert isinstance(value, str)
        needle = value.casefold()
        return any(needle in f"{n}: {v}" for n, v in folded.headers()) or folded.body_has(needle)
    raise ValueError(f"unknown search key {kind}")


def _compare(op: str, day: date, wanted: date) -> bool:
    if op == "BEFORE":
        return day < wanted
    if op == "ON":
        return day == wanted
    return day >= wanted  # SINCE: "within or later than"


def search(
    key: SearchKey, messages: Sequence[SearchableMessage], ctx: SearchContext
) -> list[SearchableMessage]:
    """The messages (in the given order) that match ``key``."""
    return [m for m in messages if matches(key, m, ctx)]


# ------------------------------------------------------------------------- MessageView


def decode_header_value(value: str) -> str:
    """RFC 2047 encoded words decoded; raw 8-bit taken as UTF-8; never raises (``mail.mimetext``)."""
    return decode_words(value)


def _decode_body(data: bytes, encoding: str | None, charset: str | None) -> str:
    enc = (encoding or "7bit").lower()
    try:
        if enc == "base64":
            data = base64.b64decode(b"".join(data.split()), validate=False)
        elif enc == "quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        pass
    return decode_bytes(data, charset)


def body_text_of(parsed: ParsedMessage) -> str:
    """The decoded text of every text/* (and untyped) leaf part."""
    out: list[str] = []
    for part in parsed.leaves():
        if part.type.lower() != "text":
            continue
        data = parsed.data[part.body_start : part.body_end]
        out.append(_decode_body(data, part.content("content-transfer-encoding"), part.param("charset")))
    return "\n".join(out)


@dataclass
class MessageView:
    """A ``SearchableMessage`` over stored metadata and lazily loaded bytes."""

    seq: int
    uid: int
    flags: frozenset[str]
    internaldate: datetime
    size: int
    load: Callable[[], bytes] = field(repr=False)
    modseq: int = 0
    saved: datetime | None = None
    emailid: str = ""
    _parsed: ParsedMessage | None = field(default=None, repr=False)
    _headers: list[tuple[str, str]] | None = field(default=None, repr=False)

    @property
    def parsed(self) -> ParsedMessage:
        if self._parsed is None:
            self._parsed = ParsedMessage(self.load())
        return self._parsed

    def headers(self) -> Sequence[tuple[str, str]]:
        if self._headers is None:
            self._headers = [(f.name, decode_header_value(f.value)) for f in self.parsed.root.fields]
        return self._headers

    def body_text(self) -> str:
        return body_text_of(self.parsed)

    def save_date(self) -> datetime | None:
        return self.saved

    def email_id(self) -> str:
        return self.emailid

    def body_contains(self, needle: str) -> bool | None:
        return None
