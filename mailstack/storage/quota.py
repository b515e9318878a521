"""Maildir++ quota: the `maildirsize` file at the root of a user's Maildir.

Format (Maildir++ spec; Dovecot quota-maildir.c):

    <bytes>S[,<count>C]        the limits; `0S` when there is none
    <bytes> <count>            the totals written at recalculation
    <bytes> <count>            one line appended per delivery (+) or expunge (-)

Invariants:
- Usage is the sum of all lines after the first. Sizes come from `,S=` in file names
  (an lstat only for names without it): no message file is ever opened.
- The file is recalculated (rewritten with write_durable) when it is missing, broken,
  negative, bigger than 5120 bytes, when the wanted limit line differs, or when it
  says "over quota" but has more than one update line or is older than 15 minutes
  (so a stale file never bounces mail for long).
- An update line is appended with a single O_APPEND write (as the spec asks); if the
  file is missing it is recalculated instead, which already counts the new message.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .filename import size_from_name
from .safeio import write_all, write_durable

__all__ = ["MAILDIRSIZE", "QuotaFile", "format_limit", "parse_limit", "read", "recalculate", "update", "usage", "check"]

MAILDIRSIZE = "maildirsize"
MAX_FILE_SIZE = 5120
STALE_SECS = 15 * 60


def format_limit(limit_bytes: int | None, limit_count: int | None = None) -> str:
    """The first line; Dovecot writes `0S` rather than an empty line when unlimited."""
    b, c = limit_bytes or 0, limit_count or 0
    parts = []
    if b or not c:
        parts.append(f"{b}S")
    if c:
        parts.append(f"{c}C")
    return ",".join(parts)


def parse_limit(line: str) -> tuple[int, int]:
    """`<bytes>S,<count>C` -> (bytes, count); 0 means unlimited; ValueError if malformed."""
    b = c = 0
    for item in line.split(","):
        item = item.strip()
        if len(item) < 2 or not item[:-1].isdigit():
            raise ValueError(f"bad maildirsize limit {line!r}")
        if item[-1] == "S":
            b = int(item[:-1])
        elif item[-1] == "C":
            c = int(item[:-1])
        else:
            raise ValueError(f"bad maildirsize limit {line!r}")
    return b, c


@dataclass(frozen=True, slots=True)
class QuotaFile:
    limit_line: str
    bytes: int
    count: int
    update_lines: int
    file_size: int
    mtime: float


def read(root: Path) -> QuotaFile | None:
    """The parsed maildirsize, or None if it is missing, broken or needs recalculation."""
    path = root / MAILDIRSIZE
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_FILE_SIZE or b"\0" in data:
        return None
    end = data.rfind(b"\n")
    lines = data[:end].decode("ascii", "replace").split("\n") if end >= 0 else []
    if len(lines) < 2:
        return None
    try:
        parse_limit(lines[0])
        total_b = total_c = 0
        for line in lines[1:]:
            b_s, c_s = line.split()
            total_b += int(b_s)
            total_c += int(c_s)
    except ValueError:
        return None
    if total_b < 0 or total_c < 0:
        return None
    return QuotaFile(lines[0], total_b, total_c, len(lines) - 2, len(data), st.st_mtime)


def _folder_dirs(root: Path) -> list[Path]:
    dirs = [root]
    try:
        with os.scandir(root) as it:
            for entry in it:
                if entry.name.startswith(".") and entry.name not in (".", "..") and entry.is_dir(follow_symlinks=False):
                    dirs.append(Path(entry.path))
    except FileNotFoundError:
        pass
    return dirs


def sum_sizes(dirs: list[Path]) -> tuple[int, int]:
    """Total S= bytes and message count in new/ and cur/ of the given folder dirs."""
    total_b = total_c = 0
    for folder in dirs:
        for sub in ("new", "cur"):
            d = folder / sub
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith("."):
                    continue
                size = size_from_name(name.partition(":")[0], "S")
                if size is None:
                    try:
                        size = os.lstat(d / name).st_size
                    except FileNotFoundError:
                        continue
                total_b += size
                total_c += 1
    return total_b, total_c


def recalculate(root: Path, limit_line: str) -> QuotaFile:
    """Sum every folder and rewrite maildirsize durably."""
    total_b, total_c = sum_sizes(_folder_dirs(root))
    data = f"{limit_line}\n{total_b} {total_c}\n".encode("ascii")
    write_durable(root / MAILDIRSIZE, data)
    return QuotaFile(limit_line, total_b, total_c, 0, len(data), time.time())


def update(root: Path, delta_bytes: int, delta_count: int) -> None:
    """Append `<bytes> <count>` after a delivery/expunge; recalculates when due."""
    if delta_bytes == 0 and delta_count == 0:
        return
    path = root / MAILDIRSIZE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        recalculate(root, "0S")
        return
    try:
        write_all(fd, f"{delta_bytes} {delta_count}\n".encode("ascii"))
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > MAX_FILE_SIZE:
        current = read(root)
        recalculate(root, current.limit_line if current else _limit_line_of(path))


def _limit_line_of(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            first = f.readline().decode("ascii", "replace").strip()
        parse_limit(first)
        return first
    except (OSError, ValueError):
        return "0S"


def usage(root: Path) -> tuple[int, int]:
    """(bytes, messages), recalculating a missing or stale file (keeping its limit line)."""
    current = read(root)
    if current is None:
        current = recalculate(root, _limit_line_of(root / MAILDIRSIZE))
    return current.bytes, current.count


def check(root: Path, extra_bytes: int, limit_bytes: int | None, limit_count: int | None = None) -> bool:
    """True if one more message of extra_bytes fits; keeps the limit line up to date."""
    want = format_limit(limit_bytes, limit_count)
    current = read(root)
    if current is None or current.limit_line != want:
        current = recalculate(root, want)
    if not limit_bytes and not limit_count:
        return True

    def fits(q: QuotaFile) -> bool:
        if limit_bytes and q.bytes + extra_bytes > limit_bytes:
            return False
        return not (limit_count and q.count + 1 > limit_count)

    if fits(current):
        return True
    # Dovecot: do not trust an over-quota answer from a file with many updates or an old one.
    if current.update_lines >= 1 or current.mtime < time.time() - STALE_SECS:
        current = recalculate(root, want)
        return fits(current)
    return False
