"""Dovecot passwd-file lines -> users to import (no I/O, no database).

The format (Dovecot's passwd-file driver, as for /etc/passwd)::

    user[@domain]:password:uid:gid:gecos:home:shell:extra_fields

Only the first two fields are required; extra fields are space-separated `key=value`
(or bare `key`). What is kept:

- the password, in any `{SCHEME}hash` form `directory.passwords` accepts (validated there);
- the quota, from `userdb_quota_rule=*:storage=...` (a passdb line) or `quota_rule=...`
  (a userdb line). Dovecot's units: `storage=` without a suffix is in kilobytes,
  `bytes=` in bytes; suffixes b, k, M, G, T (powers of 1024). `0` = unlimited. Rules for
  one folder (`Trash:storage=+100M`), `%` and `+` relative limits and `messages=` limits
  have no equivalent here: they are ignored (the `messages` one is reported as a note).
- `nologin`, `nopassword`... flags are not honoured: a line with `nopassword` or an empty
  password cannot be used (mailstack always wants a password) and is skipped.

uid, gid, home and shell mean nothing to mailstack (one system user owns every Maildir,
laid out by address): they are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PasswdEntry", "PasswdLineError", "parse_line", "parse_quota_rule"]

_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_RULE = re.compile(r"(?P<mailbox>[^:]*):(?P<rest>.*)", re.DOTALL)
_LIMIT = re.compile(r"(?P<num>\d+)(?P<unit>[bBkKmMgGtT]?)")
MAX_LINE = 8192  # a passwd-file line longer than this is not a user (limits.md)


class PasswdLineError(ValueError):
    """A line that cannot be imported; `str()` says why, in one line."""


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """One usable line: the address (with the domain added when the file had none)."""

    line_no: int
    address: str
    password_hash: str
    quota_bytes: int | None  # None: no quota rule (unlimited)
    notes: tuple[str, ...] = ()


def parse_line(line: str, line_no: int, default_domain: str | None = None) -> PasswdEntry | None:
    """One line of the file -> an entry, None for a blank or `#` comment line.

    Raises `PasswdLineError` for a line that cannot be used (the caller names and skips it).
    """
    text = line.rstrip("\r\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    if len(text) > MAX_LINE:
        raise PasswdLineError(f"longer than {MAX_LINE} characters")
    fields = text.split(":", 7)
    if len(fields) < 2:
        raise PasswdLineError("no password field (expected user:{SCHEME}hash:...)")
    user, password = fields[0].strip(), fields[1]
    if not user:
        raise PasswdLineError("empty user name")
    if "@" not in user:
        if default_domain is None:
            raise PasswdLineError(f"{user!r} has no @domain (give --domain)")
        user = f"{user}@{default_domain}"
    extras = _extra_fields(fields[7] if len(fields) > 7 else "")
    if not password or "nopassword" in extras:
        raise PasswdLineError(f"{user}: no password (mailstack needs one)")
    quota: int | None = None
    notes: list[str] = []
    for key in ("userdb_quota_rule", "quota_rule"):
        rule = extras.get(key)
        if rule:
            quota, note = parse_quota_rule(rule)
            if note:
                notes.append(note)
            break
    return PasswdEntry(line_no, user, password, quota, tuple(notes))


def _extra_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        out.setdefault(key.lower(), value)
    return out


def parse_quota_rule(rule: str) -> tuple[int | None, str | None]:
    """`*:storage=1G` -> (bytes or None for unlimited/unusable, a note for the admin or None)."""
    m = _RULE.fullmatch(rule.strip())
    if m is None or m.group("mailbox") not in ("*", "?"):
        return None, f"quota rule {rule!r} is not for the whole account: ignored"
    rest = m.group("rest").strip()
    if rest.lower() in ("noenforcing", "ignore", ""):
        return None, None
    quota: int | None = None
    note: str | None = None
    for part in rest.split(":"):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        value = value.strip()
        if key in ("storage", "bytes"):
            limit = _LIMIT.fullmatch(value)
            if limit is None:
                return None, f"quota {key}={value!r} (relative or malformed): ignored"
            unit = limit.group("unit").lower()
            factor = _UNITS[unit] if unit else (1024 if key == "storage" else 1)
            n = int(limit.group("num")) * factor
            quota = n if n > 0 else None
        elif key == "messages":
            note = f"a limit of {value} messages has no equivalent: ignored"
    return quota, note
