"""UID ranges: what VANISHED reports (RFC 7162 §3.2.10) and the index remembers of expunges.

A ``Ranges`` value is a list of ``(lo, hi)`` pairs, sorted, disjoint and not adjacent
(``[(1, 3), (5, 5)]`` is ``1:3,5``). Sets of expunged UIDs are kept and combined in this
form, never as lists of single UIDs: a client may name ``1:4294967295`` and a folder may
have lost 100,000 messages, and every function here costs time in the number of ranges
(plus the present UIDs it is given), not in the number of UIDs they span.

No I/O; ``vanished_responses`` renders the untagged responses, split into lines of at
most ``MAX_LINE`` octets (RFC 7162 §4 updates RFC 2683 §3.2.1.5: clients accept lines of
8192 octets, so a long set goes out as several VANISHED responses, each valid alone).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

__all__ = ["Ranges", "MAX_UID", "MAX_LINE", "from_sorted", "normalize", "render", "parse", "intersect",
           "gaps", "clip", "vanished_responses"]

Ranges = list[tuple[int, int]]

MAX_UID = 4294967295  # RFC 3501 §9: nz-number is 32 bits
MAX_LINE = 8000  # octets per VANISHED line (RFC 2683 §3.2.1.5 as updated by RFC 7162 §4: 8192)


def from_sorted(uids: Iterable[int]) -> Ranges:
    """Ascending UIDs (duplicates allowed) as ranges."""
    out: Ranges = []
    for u in uids:
        if out and u <= out[-1][1] + 1:
            if u > out[-1][1]:
                out[-1] = (out[-1][0], u)
        else:
            out.append((u, u))
    return out


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Any ``(lo, hi)`` pairs (``lo <= hi``) as sorted, merged ranges."""
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def render(ranges: Ranges) -> str:
    """``1:3,5`` (RFC 3501 §9 sequence-set); "" for no ranges."""
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges)


def parse(text: str) -> Ranges:
    """The form ``render`` writes (no ``*``); ``ValueError`` for anything else."""
    if not text:
        return []
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        a = int(lo)
        b = int(hi) if sep else a
        if not 0 < a <= b <= MAX_UID:
            raise ValueError(f"bad UID range {part!r}")
        out.append((a, b))
    return normalize(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The UIDs in both."""
    out: Ranges = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(ranges: Ranges, lo: int, hi: int) -> Ranges:
    """The UIDs of ``ranges`` within ``lo..hi``."""
    return intersect(ranges, [(lo, hi)]) if lo <= hi else []


def gaps(ranges: Ranges, present: Sequence[int]) -> Ranges:
    """The UIDs of ``ranges`` that are not in ``present`` (ascending, distinct)."""
    out: Ranges = []
    for lo, hi in ranges:
        i = bisect_left(present, lo)
        cur = lo
        while i < len(present) and present[i] <= hi:
            if present[i] > cur:
                out.append((cur, present[i] - 1))
            cur = present[i] + 1
            i += 1
        if cur <= hi:
            out.append((cur, hi))
    return out


def vanished_responses(ranges: Ranges, *, earlier: bool = False) -> list[bytes]:
    """``* VANISHED [(EARLIER)] <uid-set>`` lines (RFC 7162 §3.2.10) for ``ranges``, as many
    as keep each under ``MAX_LINE`` octets; none for no ranges."""
    head = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    out: list[bytes] = []
    parts: list[bytes] = []
    size = len(head)
    for lo, hi in ranges:
        part = b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi)
        if parts and size + 1 + len(part) + 2 > MAX_LINE:
            out.append(head + b",".join(parts) + b"\r\n")
            parts, size = [], len(head)
        size += len(part) + (1 if parts else 0)
        parts.append(part)
    if parts:
        out.append(head + b",".join(parts) + b"\r\n")
    return out
