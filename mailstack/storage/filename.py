"""Maildir file names: unique base names, `,S=`/`,W=` sizes and `:2,` flag letters.

Invariants:
- A new base name is `<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>`; `<host>`
  has `/` and `:` escaped as Dovecot does (`\\057`, `\\072`), so a base name never
  holds `/` or `:` and the first `:` of a file name always starts its info part.
- The base name (the name up to the first `:`) never changes while a message lives in
  a folder; flags live only in the info part `:2,<letters>` (Maildir spec, Dovecot).
- Flag letters are written sorted by ASCII code: system flags `DFRST` (upper case),
  keywords `a`-`z`; letters we do not know (e.g. `P`, passed) are kept as found.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterable

__all__ = [
    "SYSTEM_FLAGS",
    "FLAG_TO_LETTER",
    "LETTER_TO_FLAG",
    "escaped_hostname",
    "new_basename",
    "split_name",
    "size_from_name",
    "flag_letters",
    "with_flags",
    "lf_and_vsize",
]

# Maildir spec ("info starting with 2,") and Dovecot maildir-filename-flags.c.
FLAG_TO_LETTER: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_TO_FLAG: dict[str, str] = {v: k for k, v in FLAG_TO_LETTER.items()}
SYSTEM_FLAGS: frozenset[str] = frozenset(FLAG_TO_LETTER)
_FLAGS_BY_LOWER = {k.lower(): k for k in FLAG_TO_LETTER}

_counter = itertools.count(1)
_counter_lock = threading.Lock()
_hostname: str | None = None


def escaped_hostname() -> str:
    """socket.gethostname() with '/' -> '\\057' and ':' -> '\\072' (Dovecot's escaping)."""
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return _hostname


def new_basename(size: int, vsize: int) -> str:
    """A fresh, process-unique base name carrying the on-disk and CRLF sizes."""
    now = time.time_ns()
    sec, rest = divmod(now, 1_000_000_000)
    with _counter_lock:
        n = next(_counter)
    return f"{sec}.M{rest // 1000}P{os.getpid()}Q{n}.{escaped_hostname()},S={size},W={vsize}"


def split_name(name: str) -> tuple[str, str | None]:
    """(base, flag letters) of a file name; letters is None when there is no `:2,` info."""
    base, sep, info = name.partition(":")
    if not sep or not info.startswith("2,"):
        return base, None
    return base, info[2:]


def size_from_name(base: str, key: str) -> int | None:
    """The `,S=` or `,W=` value in a base name (key "S" or "W"), or None."""
    prefix = key + "="
    for field in base.split(",")[1:]:
        if field.startswith(prefix):
            digits = field[len(prefix) :]
            if digits.isdigit():
                return int(digits)
            return None
    return None


def normalize_flag(flag: str) -> str:
    """`\\seen` -> `\\Seen` (system flags are case-insensitive, RFC 3501 §2.3.2)."""
    known = _FLAGS_BY_LOWER.get(flag.lower())
    if known is None:
        raise ValueError(f"not a storable system flag: {flag!r}")
    return known


def flag_letters(flags: Iterable[str]) -> str:
    """System flag names -> their Maildir letters (\\Recent is never stored)."""
    out = []
    for flag in flags:
        if flag.lower() == "\\recent":
            continue
        out.append(FLAG_TO_LETTER[normalize_flag(flag)])
    return "".join(sorted(set(out)))


def with_flags(base: str, old_letters: str | None, system_letters: str, keyword_letters: str | None) -> str:
    """File name for base with new system flag letters.

    keyword_letters None keeps the old keyword letters; unknown letters in the old info
    (anything but DFRST and a-z) are always kept.
    """
    old = old_letters or ""
    kept = [c for c in old if c not in "DFRST" and not ("a" <= c <= "z")]
    if keyword_letters is None:
        keyword_letters = "".join(c for c in old if "a" <= c <= "z")
    letters = "".join(sorted(set(system_letters) | set(keyword_letters) | set(kept)))
    return f"{base}:2,{letters}"


def lf_and_vsize(data: bytes) -> tuple[bytes, int]:
    """Wire bytes (CRLF or LF) -> (bytes with LF line ends, size with every LF as CRLF)."""
    lf = data.replace(b"\r\n", b"\n")
    return lf, len(lf) + lf.count(b"\n")
