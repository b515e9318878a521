"""A user's Sieve scripts on disk, where Dovecot's Pigeonhole keeps them for this layout:
``<maildir>/sieve/NAME.sieve``, the active one named by the symlink ``<maildir>/.dovecot.sieve``
(relative target ``sieve/NAME.sieve``, as Pigeonhole writes it), so scripts move with the mail.

Writes go through a temp file + fsync + rename; activation replaces the symlink atomically
(a new link under a temporary name, renamed over the old one), so delivery always sees either
the old script or the new one. ``put`` compiles first: a bad script changes nothing.
Names: what ManageSieve allows (RFC 5804 §1.6) minus ``/`` and a leading ``.``, at most
``MAX_NAME_LENGTH`` characters. Per user (Pigeonhole's sieve_quota_max_scripts /
sieve_quota_max_storage, sieve_max_script_size): at most ``MAX_SCRIPTS`` scripts of at most
``MAX_SCRIPT_BYTES`` each, ``MAX_STORAGE_BYTES`` in all (docs/limits.md).
Errors are ``ScriptError`` subclasses that say which (ManageSieve turns them into its
response codes: NONEXISTENT, ACTIVE, ALREADYEXISTS, QUOTA...).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from mailstack.sieve.check import compile_script
from mailstack.sieve.grammar import MAX_SCRIPT_BYTES

ACTIVE_LINK = ".dovecot.sieve"
SCRIPT_DIR = "sieve"
SUFFIX = ".sieve"
MAX_NAME_LENGTH = 128
MAX_SCRIPTS = 64
MAX_STORAGE_BYTES = 8 * 1024 * 1024  # all of one user's scripts together
# RFC 5804 §1.6: no control characters (U+0000-001F, U+007F-009F), no line or paragraph
# separator; and nothing that could leave the sieve folder: no "/" or "\\"
_BAD_NAME = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029/\\\\]")


class ScriptError(ValueError):
    """A request on the scripts that cannot be done (bad name, missing script...)."""


class InvalidName(ScriptError):
    pass


class NoSuchScript(ScriptError):
    pass


class ScriptActive(ScriptError):
    pass


class ScriptExists(ScriptError):
    pass


class QuotaExceeded(ScriptError):
    """``what`` is "size" (one script too large), "scripts" (too many) or "storage"."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


@dataclass(frozen=True)
class ScriptInfo:
    name: str
    active: bool


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or _BAD_NAME.search(name) or name.startswith("."):
        raise InvalidName(f"invalid script name {name!r}")
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
            raise NoSuchScript(f"no script named {name!r}") from None

    def put(self, name: str, text: bytes) -> None:
        """Store (or replace) a script after it compiles; ``SieveSyntaxError`` otherwise."""
        path = self._path(name)
        compile_script(text)
        self.check_space(name, len(text))
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.dir / f".{secrets.token_hex(8)}.tmp"  # unique: sessions may store at once
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.dir)

    def sizes(self) -> dict[str, int]:
        """Every script's size in octets."""
        out = {}
        for info in self.list():
            try:
                out[info.name] = (self.dir / (info.name + SUFFIX)).stat().st_size
            except OSError:
                continue
        return out

    def check_space(self, name: str, size: int) -> None:
        """RFC 5804 §2.5 HAVESPACE: would a script of ``size`` octets named ``name`` fit?
        ``QuotaExceeded`` if not (replacing a script frees its old size)."""
        check_name(name)
        if size > MAX_SCRIPT_BYTES:
            raise QuotaExceeded(f"script is larger than {MAX_SCRIPT_BYTES} bytes", "size")
        sizes = self.sizes()
        if name not in sizes and len(sizes) >= MAX_SCRIPTS:
            raise QuotaExceeded(f"too many scripts (at most {MAX_SCRIPTS})", "scripts")
        if sum(v for k, v in sizes.items() if k != name) + size > MAX_STORAGE_BYTES:
            raise QuotaExceeded(f"all scripts together would be larger than {MAX_STORAGE_BYTES} bytes", "storage")

    def rename(self, old: str, new: str) -> None:
        """RFC 5804 §2.11.1: ``new`` must not exist; an active ``old`` stays active as ``new``.
        The script is linked under its new name before the old one goes, so delivery always
        finds the active script."""
        src, dst = self._path(old), self._path(new)
        try:
            os.link(src, dst)  # fails if dst exists: never replaces a script
        except FileExistsError:
            raise ScriptExists(f"a script named {new!r} already exists") from None
        except FileNotFoundError:
            raise NoSuchScript(f"no script named {old!r}") from None
        if self.active_name() == old:
            self.activate(new)
        os.unlink(src)
        _fsync_dir(self.dir)

    def activate(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            raise NoSuchScript(f"no script named {name!r}")
        tmp = self.home / f"{ACTIVE_LINK}.{secrets.token_hex(8)}.tmp"
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
            raise ScriptActive(f"script {name!r} is active; deactivate it first")
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise NoSuchScript(f"no script named {name!r}") from None
        _fsync_dir(self.dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
