"""The IMAP a client has to read, without I/O: LIST and FETCH data, INTERNALDATE, flags.

aioimaplib hands a response over as a flat list: text lines (`bytes`, the `* ` cut off)
and literals (`bytearray`, the bytes announced by `{N}` at the end of the line before).
`tokens()` turns such a list back into one token stream; `parse_list()` and
`parse_fetch()` read the RFC 3501 §7.2.2 and §7.4.2 grammars off it. Nothing here
raises on odd input except `WireError`, whose `str()` is one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "FetchedMessage",
    "ListEntry",
    "Literal",
    "WireError",
    "format_internaldate",
    "message_id",
    "parse_fetch",
    "parse_internaldate",
    "parse_list",
    "parse_namespace",
    "quote",
    "split_flags",
]

SYSTEM_FLAGS = {"\\seen": "\\Seen", "\\answered": "\\Answered", "\\flagged": "\\Flagged",
                "\\deleted": "\\Deleted", "\\draft": "\\Draft"}
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
# RFC 3501 §9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
_DATE_TIME = re.compile(
    r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*")
_ATOM_END = b" ()\r\n\"{"


class WireError(ValueError):
    """A response we cannot read."""


class Literal(bytes):
    """The bytes of a `{N}` literal, told apart from atoms."""


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One `LIST` answer: the raw (modified UTF-7) name, its delimiter, its attributes."""

    name: bytes
    delimiter: str | None
    attributes: frozenset[str]  # lower-cased, e.g. "\\noselect"

    @property
    def selectable(self) -> bool:
        return not self.attributes & {"\\noselect", "\\nonexistent"}


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """The items of one `FETCH` answer we care about; None for those not sent."""

    uid: int | None
    flags: tuple[str, ...] | None
    internaldate: datetime | None
    size: int | None
    body: bytes | None


def quote(text: str | bytes) -> str:
    """An IMAP quoted string (RFC 3501 §4.3) for a 7-bit value (names are modified UTF-7)."""
    raw = text.decode("ascii") if isinstance(text, bytes) else text
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tokens(lines: Sequence[bytes | bytearray]) -> list[object]:
    """Lines and literals -> tokens: bytes atoms/strings, `Literal`s, nested lists, None for NIL.

    Each text line is one list of tokens at top level (parentheses may span literals).
    """
    out: list[object] = []
    stack: list[list[object]] = [out]
    for part in lines:
        if isinstance(part, bytearray):
            stack[-1].append(Literal(part))
            continue
        data = bytes(part)
        # the `{N}` that announced the literal that follows is not a token
        m = re.search(rb"\{(\d+)\+?\}$", data)
        if m is not None:
            data = data[: m.start()]
        for tok in _scan(data):
            if tok == b"(":
                inner: list[object] = []
                stack[-1].append(inner)
                stack.append(inner)
            elif tok == b")":
                if len(stack) > 1:
                    stack.pop()
            else:
                stack[-1].append(tok)
    return out


def _scan(data: bytes) -> Iterator[bytes | None]:
    i, n = 0, len(data)
    while i < n:
        c = data[i : i + 1]
        if c in (b" ", b"\r", b"\n"):
            i += 1
        elif c in (b"(", b")"):
            yield c
            i += 1
        elif c == b'"':
            j, buf = i + 1, bytearray()
            while j < n and data[j : j + 1] != b'"':
                if data[j : j + 1] == b"\\" and j + 1 < n:
                    j += 1
                buf += data[j : j + 1]
                j += 1
            yield bytes(buf)
            i = j + 1
        else:
            j = i
            depth = 0
            # an atom; `BODY[...]` sections may hold spaces and parentheses
            while j < n and (depth > 0 or data[j : j + 1] not in (b" ", b"(", b")", b'"')):
                if data[j : j + 1] == b"[":
                    depth += 1
                elif data[j : j + 1] == b"]":
                    depth = max(0, depth - 1)
                j += 1
            atom = data[i:j]
            yield None if atom.upper() == b"NIL" else atom
            i = j


def parse_list(lines: Sequence[bytes | bytearray]) -> list[ListEntry]:
    """The `LIST` (or `LSUB`) data of a response; other lines (the tagged text) are skipped.

    aioimaplib strips `* LIST ` from untagged data of commands it runs asynchronously, and
    keeps it for the others: both forms are read.
    """
    out: list[ListEntry] = []
    current: list[object] = []
    for part in lines:
        if isinstance(part, bytes) and re.match(rb"(?i)((LIST|LSUB) )?\(", part):
            if current:
                out += _list_entry(current)
            current = [part[5:] if part[:1] != b"(" else part]
        elif current:
            current.append(part)
    if current:
        out += _list_entry(current)
    return out


def _list_entry(parts: list[object]) -> list[ListEntry]:
    toks = tokens(parts)  # type: ignore[arg-type]
    if len(toks) < 3 or not isinstance(toks[0], list):
        return []
    attrs = frozenset(a.decode("ascii", "replace").lower() for a in toks[0] if isinstance(a, bytes))
    delim = toks[1].decode("ascii", "replace") if isinstance(toks[1], bytes) else None
    name = toks[2]
    if not isinstance(name, bytes):
        return []
    return [ListEntry(bytes(name), delim or None, attrs)]


def parse_namespace(lines: Sequence[bytes | bytearray]) -> tuple[bytes, list[bytes]]:
    """RFC 2342 §5 NAMESPACE data -> (the first personal prefix, the prefixes of other users'
    and shared namespaces); (b"", []) when there is none."""
    for line in lines:
        if not isinstance(line, bytes):
            continue
        text = line[10:] if line.upper().startswith(b"NAMESPACE ") else line
        if not text.startswith((b"(", b"NIL")):
            continue
        groups = [t if isinstance(t, list) else [] for t in tokens([text])[:3]]
        prefixes = [[bytes(ns[0]) for ns in g if isinstance(ns, list) and ns and isinstance(ns[0], bytes)]
                    for g in groups]
        personal = prefixes[0][0] if prefixes and prefixes[0] else b""
        return personal, [p for g in prefixes[1:] for p in g if p]
    return b"", []


def parse_fetch(lines: Sequence[bytes | bytearray]) -> list[FetchedMessage]:
    """Every `n FETCH (...)` in a response, in order."""
    groups: list[list[bytes | bytearray]] = []
    for part in lines:
        if isinstance(part, bytes) and re.match(rb"\d+ FETCH ", part):
            groups.append([part.split(b" ", 2)[2]])
        elif groups:
            groups[-1].append(part)
    out = []
    for group in groups:
        toks = tokens(group)
        if toks and isinstance(toks[0], list):
            out.append(_fetch_items(toks[0]))
    return out


def _fetch_items(items: list[object]) -> FetchedMessage:
    uid = size = None
    flags: tuple[str, ...] | None = None
    date = None
    body: bytes | None = None
    it = iter(range(0, len(items) - 1, 2))
    for i in it:
        key, value = items[i], items[i + 1]
        if not isinstance(key, bytes):
            continue
        name = key.upper()
        if name == b"UID" and isinstance(value, bytes) and value.isdigit():
            uid = int(value)
        elif name == b"RFC822.SIZE" and isinstance(value, bytes) and value.isdigit():
            size = int(value)
        elif name == b"FLAGS" and isinstance(value, list):
            flags = tuple(v.decode("utf-8", "replace") for v in value if isinstance(v, bytes))
        elif name == b"INTERNALDATE" and isinstance(value, bytes):
            date = parse_internaldate(value.decode("ascii", "replace"))
        elif name in (b"BODY[]", b"RFC822", b"BINARY[]") and isinstance(value, bytes):
            body = bytes(value)
    return FetchedMessage(uid, flags, date, size, body)


def parse_internaldate(text: str) -> datetime | None:
    """`17-Jul-1996 02:44:25 -0700` -> an aware datetime; None when it is not one."""
    m = _DATE_TIME.fullmatch(text)
    if m is None:
        return None
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    offset = timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
    try:
        return datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset))
    except ValueError:
        return None


def format_internaldate(when: datetime) -> str:
    """The RFC 3501 date-time form (for messages and logs)."""
    months = list(_MONTHS)
    off = when.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f"{when.day:02d}-{months[when.month - 1].capitalize()}-{when.year:04d} "
            f"{when:%H:%M:%S} {sign}{minutes // 60:02d}{minutes % 60:02d}")


def split_flags(flags: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(system flags in their canonical case, keywords); `\\Recent` and other `\\` flags dropped."""
    system: list[str] = []
    keywords: list[str] = []
    for flag in flags:
        if flag.startswith("\\"):
            canonical = SYSTEM_FLAGS.get(flag.lower())
            if canonical is not None and canonical not in system:
                system.append(canonical)
        elif flag and flag not in keywords:
            keywords.append(flag)
    return tuple(system), tuple(keywords)


_MSGID = re.compile(rb"(?im)^message-id:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)")


def message_id(data: bytes) -> str:
    """The Message-ID of a message (header section only; "" when there is none)."""
    end = re.search(rb"\r?\n\r?\n", data)
    head = data[: end.start() + 1] if end else data[:65536]
    m = _MSGID.search(head)
    if m is None:
        return ""
    return re.sub(rb"\s+", b"", m.group(1)).decode("utf-8", "replace")[:998]
