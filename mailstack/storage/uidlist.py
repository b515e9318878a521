"""`dovecot-uidlist` (version 3), `dovecot-keywords` and `dovecot-uidvalidity`.

Format (Dovecot maildir-uidlist.c, v1.1 and later):

    3 V<uidvalidity> N<nextuid> G<mailbox guid, 32 hex> [<other header fields>]
    <uid> [<key><value> ...] :<base name>

Record extension keys are upper-case letters (Dovecot's maildir-uidlist.h: `W` virtual
size, `S` physical size, `P` POP3 UIDL, an empty `P` meaning "the base name", `O` POP3
order, `G` message GUID); values never hold spaces. Items whose key is not A-Z are
dropped, as Dovecot's maildir_uidlist_read_extended() drops them; of a key given twice
the first counts, as in Dovecot's maildir_uidlist_lookup_ext(). The base name is the
file name without its `:2,` info. Version 1 files (`1 <uidvalidity> <nextuid>` /
`<uid> <filename>`) are read too.

Invariants:
- Reading then writing keeps UIDVALIDITY, every UID, the mailbox GUID and every
  header and record extension we do not understand.
- Records are written sorted by UID; NEXTUID is always greater than every UID.
- `dovecot-keywords` lines are `<index> <keyword>`, index 0-25 = letters a-z.
- A new UIDVALIDITY is never lower than one already handed out under the same
  Maildir root (kept in `dovecot-uidvalidity`, hex, like Dovecot).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .safeio import write_durable

__all__ = [
    "UIDLIST_NAME",
    "KEYWORDS_NAME",
    "MAX_KEYWORDS",
    "UidRecord",
    "UidList",
    "parse_uidlist",
    "format_uidlist",
    "parse_keywords",
    "format_keywords",
    "next_uidvalidity",
]

UIDLIST_NAME = "dovecot-uidlist"
KEYWORDS_NAME = "dovecot-keywords"
UIDVALIDITY_NAME = "dovecot-uidvalidity"
MAX_KEYWORDS = 26


@dataclass(slots=True)
class UidRecord:
    """One message line: its UID, base name and extension fields (key letter -> value)."""

    uid: int
    base: str
    ext: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class UidList:
    """The parsed file; mutable while a sync holds the lock, records sorted by uid."""

    uidvalidity: int
    nextuid: int
    guid: str
    records: list[UidRecord] = field(default_factory=list)
    header_ext: list[str] = field(default_factory=list)
    guid_new: bool = False  # the file had no mailbox GUID: one was made up, to be written

    @classmethod
    def new(cls, uidvalidity: int) -> UidList:
        return cls(uidvalidity=uidvalidity, nextuid=1, guid=secrets.token_hex(16))


def _parse_v3_header(fields: list[str]) -> tuple[int, int, str, list[str]]:
    uidvalidity = nextuid = 0
    guid = ""
    other: list[str] = []
    for item in fields:
        key, value = item[:1], item[1:]
        if key == "V":
            uidvalidity = int(value)
        elif key == "N":
            nextuid = int(value)
        elif key == "G":
            guid = value.lower()
            int(guid, 16)
            if len(guid) != 32:
                raise ValueError("bad mailbox GUID")
        else:
            other.append(item)
    return uidvalidity, nextuid, guid, other


def parse_uidlist(data: bytes) -> UidList | None:
    """Parse a dovecot-uidlist; None when the file is empty or broken (then rebuilt).

    Like Dovecot, a broken file means a fresh UIDVALIDITY: the caller must not guess.
    """
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # a partial last line (crash while appending): ignore it
    if not lines:
        return None
    header = lines[0].split()
    try:
        version = header[0]
        if version == "3":
            uidvalidity, nextuid, guid, other = _parse_v3_header(header[1:])
        elif version == "1":
            uidvalidity, nextuid, guid, other = int(header[1]), int(header[2]), "", []
        else:
            return None
    except (IndexError, ValueError):
        return None
    if uidvalidity <= 0 or nextuid <= 0:
        return None
    records: list[UidRecord] = []
    prev = 0
    seen: dict[str, int] = {}
    for line in lines[1:]:
        uid_s, sp, rest = line.partition(" ")
        if not sp or not uid_s.isdigit():
            return None
        uid = int(uid_s)
        if uid <= prev or uid >= 0xFFFFFFFF:
            return None
        prev = uid
        ext: dict[str, str] = {}
        if version == "3":
            if rest.startswith(":"):
                base = rest[1:]
            else:
                pos = rest.find(" :")
                if pos < 0:
                    return None
                for item in rest[:pos].split():
                    if "A" <= item[0] <= "Z":
                        ext.setdefault(item[0], item[1:])
                base = rest[pos + 2 :]
        else:
            base = rest
        base = base.partition(":")[0]
        if not base or "/" in base:
            return None
        old = seen.get(base)
        if old is not None:
            # Dovecot: "Duplicate file entry": the later UID wins.
            records = [r for r in records if r.uid != old]
        seen[base] = uid
        records.append(UidRecord(uid, base, ext))
    made_up = not guid
    if made_up:
        guid = secrets.token_hex(16)
    return UidList(uidvalidity, max(nextuid, prev + 1), guid, records, other, guid_new=made_up)


def format_uidlist(ul: UidList) -> bytes:
    """Serialise in version 3 format, records sorted by UID."""
    head = f"3 V{ul.uidvalidity} N{ul.nextuid} G{ul.guid}"
    if ul.header_ext:
        head += " " + " ".join(ul.header_ext)
    parts = [head, "\n"]
    for rec in sorted(ul.records, key=lambda r: r.uid) if _unsorted(ul.records) else ul.records:
        if rec.ext:
            parts.append(f"{rec.uid} {' '.join(k + v for k, v in rec.ext.items())} :{rec.base}\n")
        else:
            parts.append(f"{rec.uid} :{rec.base}\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


def _unsorted(records: list[UidRecord]) -> bool:
    return any(records[i].uid >= records[i + 1].uid for i in range(len(records) - 1))


def parse_keywords(data: bytes) -> dict[int, str]:
    """dovecot-keywords -> {index: keyword}; malformed lines are skipped like Dovecot does."""
    out: dict[int, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        idx_s, sp, name = line.partition(" ")
        if not sp or not idx_s.isdigit() or not name:
            continue
        idx = int(idx_s)
        if 0 <= idx < MAX_KEYWORDS:
            out[idx] = name
    return out


def format_keywords(keywords: dict[int, str]) -> bytes:
    return "".join(f"{i} {keywords[i]}\n" for i in sorted(keywords)).encode("utf-8")


def next_uidvalidity(root: Path) -> int:
    """A UIDVALIDITY for a new folder: now, but above every value given out before."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = root / UIDVALIDITY_NAME
        try:
            last = int(path.read_text("ascii").strip() or "0", 16)
        except (FileNotFoundError, ValueError):
            last = 0
        value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        write_durable(path, f"{value:08x}".encode())
        return value
    finally:
        os.close(fd)  # closing drops the flock


def records_by_base(records: Iterable[UidRecord]) -> dict[str, UidRecord]:
    return {r.base: r for r in records}
