"""The admin's auto-reply (``mailstack vacation``): a generated Sieve script run *before* the
user's own, kept where the user's ManageSieve cannot list, read or overwrite it.

Where: ``<maildir>/sieve-before/vacation.sieve`` (``BEFORE_DIR``), so it moves with the mail
like the user's scripts; every ``*.sieve`` file there is a before-script, run in name order
ahead of the active personal script (``sieve.multiscript``), as Pigeonhole runs a
``sieve_before`` directory (``sieve_before = ~/sieve-before`` gives Dovecot the same
behaviour). ManageSieve only ever sees ``<maildir>/sieve/``.

The script is plain RFC 5230 Sieve, so Pigeonhole runs it too::

    require ["vacation", "date", "relational"];
    if currentdate :value "le" "date" "2026-12-24" {
      vacation :days 7 :subject "..." :from "user@domain" :addresses ["user@domain"] "...";
    }

``--until`` is checked by the script itself with ``currentdate`` (RFC 5260 §5): after that day
(inclusive, in the interpreter's zone: UTC) it sends nothing and needs no clean-up; ``off``
removes the file. The script is the one record: ``show`` reads the settings back from it.
Writes are durable (temp file, fsync, rename, fsync the directory).

Limits: ``--days`` 1..``MAX_DAYS`` (RFC 5230 §4.1 minimum of one day; a year is more than any
absence), subject at most ``MAX_SUBJECT`` characters with no control characters (it becomes a
header), message at most ``MAX_MESSAGE_BYTES`` of UTF-8 text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from mailstack.sieve.check import compile_script
from mailstack.sieve.grammar import MAX_SCRIPT_BYTES, Command, Number, SieveSyntaxError, Strings, Tag
from mailstack.storage.safeio import fsync_dir, make_dirs, write_durable

__all__ = ["BEFORE_DIR", "VACATION_SCRIPT", "MAX_DAYS", "MAX_SUBJECT", "MAX_MESSAGE_BYTES", "Vacation",
           "VacationError", "render", "parse", "before_scripts", "VacationStore"]

BEFORE_DIR = "sieve-before"
VACATION_SCRIPT = "vacation.sieve"
SUFFIX = ".sieve"
MAX_DAYS = 365
MAX_SUBJECT = 255
MAX_MESSAGE_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class VacationError(ValueError):
    """A setting that cannot be used, or a script that is not ours; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class Vacation:
    """One user's auto-reply: ``until`` is the last day it answers (None: until ``off``)."""

    address: str
    subject: str
    message: str
    days: int = 7
    until: date | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.days <= MAX_DAYS:
            raise VacationError(f"--days must be between 1 and {MAX_DAYS}")
        if len(self.subject) > MAX_SUBJECT or _CONTROL.search(self.subject):
            raise VacationError(f"the subject must be one line of at most {MAX_SUBJECT} characters")
        if len(self.message.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
            raise VacationError(f"the message is larger than {MAX_MESSAGE_BYTES} bytes")
        if not self.message.strip():
            raise VacationError("the message is empty")
        if "\x00" in self.message:
            raise VacationError("the message holds a NUL character")

    def active_on(self, day: date) -> bool:
        return self.until is None or day <= self.until


def _quoted(text: str) -> str:
    """RFC 5228 §2.4.2: a quoted string, ``"`` and ``\\`` escaped; line ends kept as CRLF."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(v: Vacation) -> bytes:
    """The before-script for ``v`` (it compiles: ``parse(render(v)) == v``)."""
    action = (f"vacation :days {v.days} :subject {_quoted(v.subject)} :from {_quoted(v.address)}"
              f" :addresses [{_quoted(v.address)}]\r\n  {_quoted(v.message)};\r\n")
    head = "# The auto-reply of `mailstack vacation`, run before the user's own script. Generated:\r\n" \
           "# `mailstack vacation set|off` replaces it; edits here are lost.\r\n"
    if v.until is None:
        text = head + 'require "vacation";\r\n' + action
    else:  # RFC 5260 §5: currentdate, "date" part is YYYY-MM-DD, so a string comparison orders it
        text = (head + 'require ["vacation", "date", "relational"];\r\n'
                + f'if currentdate :value "le" "date" "{v.until.isoformat()}" {{\r\n  ' + action + "}\r\n")
    data = text.encode("utf-8")
    compile_script(data)  # never write what would not run
    return data


def parse(data: bytes) -> Vacation:
    """The settings read back from a script ``render`` made; VacationError for anything else."""
    try:
        commands = compile_script(data)
    except SieveSyntaxError as e:
        raise VacationError(f"the auto-reply script does not compile: {e}") from None
    until: date | None = None
    body: tuple[Command, ...] = commands
    cond = next((c for c in commands if c.name == "if"), None)
    if cond is not None:
        test = cond.tests[0]
        keys = [a for a in test.args if isinstance(a, Strings)]
        if test.name != "currentdate" or not keys:
            raise VacationError("the auto-reply script was not made by `mailstack vacation`")
        try:
            until = date.fromisoformat(keys[-1].values[0])
        except ValueError:
            raise VacationError("the auto-reply script names no valid end date") from None
        body = cond.block or ()
    cmd = next((c for c in body if c.name == "vacation"), None)
    if cmd is None:
        raise VacationError("the auto-reply script holds no vacation action")
    tags: dict[str, object] = {}
    pending: str | None = None
    reason = ""
    for arg in cmd.args:
        if isinstance(arg, Tag):
            pending = arg.name.lower().lstrip(":")
            tags[pending] = None
        elif pending is not None:
            tags[pending], pending = arg, None
        elif isinstance(arg, Strings):
            reason = arg.values[0]
    days, subject, sender = tags.get("days"), tags.get("subject"), tags.get("from")
    return Vacation(
        address=sender.values[0] if isinstance(sender, Strings) else "",
        subject=subject.values[0] if isinstance(subject, Strings) else "",
        message=reason.replace("\r\n", "\n"),
        days=days.value if isinstance(days, Number) else 7,
        until=until,
    )


def before_scripts(home: Path) -> list[bytes]:
    """The texts of ``<home>/sieve-before/*.sieve`` in name order ([] when there is none).

    One ``scandir`` that fails with ENOENT for the usual user without any: cheap enough for
    every delivery."""
    folder = home / BEFORE_DIR
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(SUFFIX) and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[bytes] = []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                out.append(f.read(MAX_SCRIPT_BYTES + 1))
        except OSError:
            continue  # vanished (``off`` at this moment) or unreadable: not run
    return out


class VacationStore:
    """The auto-reply of the user whose Maildir++ is ``home``."""

    def __init__(self, home: Path) -> None:
        self.dir = home / BEFORE_DIR
        self.path = self.dir / VACATION_SCRIPT

    def get(self) -> Vacation | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return parse(data)

    def set(self, v: Vacation) -> None:
        data = render(v)
        make_dirs(self.dir, 0o700)
        write_durable(self.path, data, 0o600)

    def off(self) -> bool:
        """Remove the auto-reply; False when there was none."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        fsync_dir(self.dir)
        return True
