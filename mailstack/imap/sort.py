"""SORT keys (RFC 5256 §2-3, RFC 5957 DISPLAYFROM/DISPLAYTO) and the sort itself; no I/O.

Every key is computed from what the folder index keeps (decoded top-level header fields)
and from the stored INTERNALDATE / RFC822.SIZE, so a SORT reads each message file at
most once, ever (when it is not yet in the index), never once per comparison.

Invariants:
- Ties, after every criterion, are broken by sequence number, ascending (RFC 5256 §3:
  "message sequence number order"), also under REVERSE (REVERSE reverses only its key).
- Address keys are the addr-mailbox of the first address (RFC 5256 §3 FROM/TO/CC); a
  field that starts with a group gives the group's name (Dovecot 2.3 does so; imaptest's
  sort-addresses expects it); a missing or empty field sorts as "" (first).
- DISPLAYFROM / DISPLAYTO (RFC 5957 §3) use the first address's decoded display name, or
  its addr-spec when it has none (a group: its name). Strings compare case-insensitively,
  folded to upper case (i;ascii-casemap, RFC 4790 §9.2).
- DATE is the Date: header in UTC, or INTERNALDATE when it is missing or unparsable
  (RFC 5256 §3 DATE).
- ``base_subject`` follows RFC 5256 §2.1 step by step in linear time; a subject is
  considered on its first ``MAX_SUBJECT`` characters (a longer one is spam or an attack;
  two such subjects equal that far compare equal and fall back to sequence order).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from .addresses import MISSING_DOMAIN, MISSING_MAILBOX, parse_address_list

__all__ = ["MAX_SUBJECT", "SortItem", "base_subject", "base_subject_info", "sort_key", "sort_items"]

MAX_SUBJECT = 2000

_WSP = re.compile(r"[ \t\r\n]+")


@dataclass(frozen=True)
class SortItem:
    """What SORT knows of one message: its sequence number, UID and the index's data."""

    seq: int
    uid: int
    internaldate: datetime
    size: int
    headers: Sequence[tuple[str, str]]  # (lower-case name, decoded value)


def _field(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _skip_blobs(s: str, i: int) -> int:
    """The index after ``*subj-blob`` at ``i`` (RFC 5256 §5: "[" *BLOBCHAR "]" *WSP)."""
    while i < len(s) and s[i] == "[":
        j = i + 1
        while j < len(s) and s[j] not in "[]":
            j += 1
        if j >= len(s) or s[j] != "]":
            break
        i = j + 1
        while i < len(s) and s[i] == " ":
            i += 1
    return i


def _refwd_end(s: str, i: int) -> int | None:
    """The index after a subj-refwd at ``i`` ("re" / "fw" ["d"], *WSP, [subj-blob], ":")."""
    low = s[i : i + 3].lower()
    if low.startswith("re"):
        k = i + 2
    elif low == "fwd":
        k = i + 3
    elif low.startswith("fw"):
        k = i + 2
    else:
        return None
    while k < len(s) and s[k] == " ":
        k += 1
    if k < len(s) and s[k] == "[":  # at most one blob
        j = k + 1
        while j < len(s) and s[j] not in "[]":
            j += 1
        if j < len(s) and s[j] == "]":
            k = j + 1
            while k < len(s) and s[k] == " ":
                k += 1
    return k + 1 if k < len(s) and s[k] == ":" else None


def _strip_leaders(s: str) -> tuple[str, bool]:
    """RFC 5256 §2.1 steps 3-5: leading subj-leader (WSP, *blob + re/fw/fwd ":") and
    subj-blob prefixes removed until none is left. A blob is not removed when nothing
    would remain after it (step 4). Also says whether a subj-refwd was removed."""
    i = 0
    refwd = False
    while True:
        while i < len(s) and s[i] == " ":  # step 3, WSP
            i += 1
        b = _skip_blobs(s, i)
        end = _refwd_end(s, b)
        if end is not None:  # step 3, *subj-blob subj-refwd
            i = end
            refwd = True
            continue
        if b > i:  # step 4: blobs, but keep the last one if nothing follows it
            if b < len(s):
                i = b
                continue
            last = s.rfind("[", i, b)
            if last > i:
                i = last
        return s[i:], refwd


def _fold(s: str) -> str:
    """Case-folded for comparison as i;ascii-casemap does it, to UPPER case (RFC 4790 §9.2:
    "[" and "_" sort after the letters; imaptest's sort-subject expects that), extended to
    Unicode like Dovecot's i;unicode-casemap (casefold first: "ß" and "SS" compare equal)."""
    return s.casefold().upper()


def base_subject(subject: str) -> str:
    """The base subject of RFC 5256 §2.1, case-folded by ``_fold``."""
    return base_subject_info(subject)[0]


def base_subject_info(subject: str) -> tuple[str, bool]:
    """The base subject (as ``base_subject``) and whether the subject was a reply or a
    forward: whether extracting it removed a subj-refwd ("Re:", "Fw:", "Fwd:"), a
    "(fwd)" trailer or a "[fwd: ...]" wrapper (RFC 5256 §2.1 steps 2, 3 and 6; THREAD
    REFERENCES §4 step 6 needs it)."""
    s = _WSP.sub(" ", subject[:MAX_SUBJECT])  # step 1
    reply = False
    while True:
        # step 2: trailing subj-trailer ("(fwd)" / WSP)
        while True:
            t = s.rstrip(" ")
            if t.lower().endswith("(fwd)"):
                t = t[:-5]
                reply = True
            if t == s:
                break
            s = t
        s, refwd = _strip_leaders(s)  # steps 3-5
        reply = reply or refwd
        # step 6: "[fwd:" subject "]": unwrap and start over at step 2
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return _fold(s), reply


def _first_address(value: str | None) -> tuple[str, str] | None:
    """(mailbox, display text) of the first address in a field, or None."""
    if not value:
        return None
    for a in parse_address_list(value):
        if a.host is None:  # a group: its name (a group end alone gives nothing)
            if a.mailbox is None:
                continue
            return a.mailbox, a.mailbox
        local = "" if a.mailbox == MISSING_MAILBOX else a.mailbox or ""
        spec = local if a.host == MISSING_DOMAIN else f"{local}@{a.host}"
        return local, a.name or spec
    return None


def _address_key(field: str, display: bool) -> Callable[[SortItem], str]:
    def key(m: SortItem) -> str:
        got = _first_address(_field(m.headers, field))
        if got is None:
            return ""
        return _fold(got[1] if display else got[0])

    return key


def _date_key(m: SortItem) -> float:
    value = _field(m.headers, "date")
    if value:
        try:
            d = email.utils.parsedate_to_datetime(value)
            if d.tzinfo is None:  # RFC 5322 -0000: "no information": taken as UTC
                d = d.replace(tzinfo=timezone.utc)
            return d.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return m.internaldate.timestamp()


_KEYS: dict[str, Callable[[SortItem], object]] = {
    "ARRIVAL": lambda m: m.internaldate.timestamp(),
    "CC": _address_key("cc", False),
    "DATE": _date_key,
    "FROM": _address_key("from", False),
    "SIZE": lambda m: m.size,
    "SUBJECT": lambda m: base_subject(_field(m.headers, "subject") or ""),
    "TO": _address_key("to", False),
    "DISPLAYFROM": _address_key("from", True),  # RFC 5957 §3
    "DISPLAYTO": _address_key("to", True),
}


def sort_key(name: str) -> Callable[[SortItem], object]:
    return _KEYS[name]


def sort_items(items: Sequence[SortItem], criteria: Sequence[tuple[bool, str]]) -> list[SortItem]:
    """``items`` in the order of ``criteria`` ((reverse, key) pairs, RFC 5256 §3). Each
    key is computed once per message; stable sorts from the last criterion to the first,
    over the items in sequence order, leave ties in sequence order."""
    out = sorted(items, key=lambda m: m.seq)
    for reverse, name in reversed(criteria):
        f = _KEYS[name]
        keys = {m.seq: f(m) for m in out}
        out.sort(key=lambda m: keys[m.seq], reverse=reverse)  # type: ignore[arg-type,return-value]
    return out
