"""A user's Sieve scripts on disk, where Dovecot's Pigeonhole keeps them for this layout:
``<maildir>/sieve/NAME.sieve``, the active one named by the symlink ``<maildir>/.dovecot.sieve``
(relative target ``sieve/NAME.sieve``, as Pigeonhole writes it), so scripts move with the mail.

Writes go through a temp file + fsync + rename; activation replaces the symlink atomically
(a new link under a temporary name, renamed over the old one), so delivery always sees either
the old script or the new one. ``put`` compiles first: a bad script changes nothing.
Names: what ManageSieve allows (RFC 5804 §1.6) minus ``/`` and a leading ``.``, at most
``MAX_NAME_LENGTH`` characters; at most ``MAX_SCRIPTS`` scripts per user.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mailstack.sieve.check import compile_script
from mailstack.sieve.grammar import MAX_SCRIPT_BYTES

ACTIVE_LINK = ".dovecot.sieve"
SCRIPT_DIR = "sieve"
SUFFIX = ".sieve"
MAX_NAME_LENGTH = 128
MAX_SCRIPTS = 64
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


class ScriptError(ValueError):
    """A request on the scripts that cannot be done (bad name, missing script...)."""


@dataclass(frozen=True)
class ScriptInfo:
    name: str
    active: bool


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or _BAD_NAME.search(name) or name.startswith("."):
        raise ScriptError(f"invalid script name {name!r}")
    return name


class ScriptStore:
    """The scripts of one user whose Maildir++ is ``home``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / SCRIPT_DIR
        self.link = home / ACTIVE_LINK

    def _path(self, name: str) -> Path:
        return self.dir / (check_name(name) + SUFFIX)

    def active_name(self) -> str | None:
        try:
            target = os.readlink(self.link)
        except OSError:
            return None
        base = os.path.basename(target)
        if not base.endswith(SUFFIX) or not (self.dir / base).is_file():
            return None
        return base[: -len(SUFFIX)]

    def active_script(self) -> bytes | None:
        """The active script's text, or None when none is active (a dangling link counts as none)."""
        name = self.active_name()
        if name is None:
            return None
        try:
            with open(self.dir / (name + SUFFIX), "rb") as f:
                return f.read(MAX_SCRIPT_BYTES + 1)
        except OSError:
            return None

    def list(self) -> list[ScriptInfo]:
        active = self.active_name()
        try:
            names = sorted(p.name[: -len(SUFFIX)] for p in self.dir.iterdir()
                           if p.name.endswith(SUFFIX) and p.is_file() and not p.name.startswith("."))
        except FileNotFoundError:
            return []
        return [ScriptInfo(n, n == active) for n in names]

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise ScriptError(f"no script named {name!r}") from None

    def put(self, name: str, text: bytes) -> None:
        """Store (or replace) a script after it compiles; ``SieveSyntaxError`` otherwise."""
        path = self._path(name)
        compile_script(text)
        if not path.exists() and len(self.list()) >= MAX_SCRIPTS:
            raise ScriptError(f"too many scripts (at most {MAX_SCRIPTS})")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.dir)

    def activate(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            raise ScriptError(f"no script named {name!r}")
        tmp = self.home / f"{ACTIVE_LINK}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(f"{SCRIPT_DIR}/{path.name}", tmp)
        os.replace(tmp, self.link)
        _fsync_dir(self.home)

    def deactivate(self) -> None:
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            return
        _fsync_dir(self.home)

    def delete(self, name: str) -> None:
        """RFC 5804 §2.10: the active script cannot be deleted."""
        path = self._path(name)
        if self.active_name() == name:
            raise ScriptError(f"script {name!r} is active; deactivate it first")
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise ScriptError(f"no script named {name!r}") from None
        _fsync_dir(self.dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
