"""One user's Maildir++ (`<maildir_root>/<domain>/<localpart>/`): delivery, folders, subscriptions, quota.

Laid out exactly as Dovecot does with `mail_location = maildir:<root>/%d/%n`:
INBOX is the root (`cur/ new/ tmp/`), folder `A.B` is the directory `.A.B/` with
each component in modified UTF-7 (RFC 3501 §5.1.3), holding `cur/ new/ tmp/` and an
empty `maildirfolder` file (Maildir++). The hierarchy separator is `.`.

Invariants:
- No path built here leaves the Maildir root: domains, local parts and folder names
  are checked component by component before any path is joined (`UnsafeName`).
- `deliver` returns only after the message is fsynced in `tmp/`, renamed into
  `new/`, and `new/` is fsynced (docs/on-disk.md "Every durable write": nothing is
  acknowledged before it is on disk). The stored bytes have LF line ends; the name carries S= and W=.
- Everything created here is private as in Dovecot: directories 0700, files 0600,
  given in each creating call (not left to the umask).
- Folder deletion is atomic for readers: the directory is renamed out of the way
  (into the root's `tmp/`) before it is removed.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import unicodedata
from pathlib import Path

from . import hooks, mutf7, quota, tmpclean
from .errors import FolderExists, FolderNotFound, StorageError, UnsafeName
from .filename import lf_and_vsize, new_basename
from .folder import Folder
from .lock import DotLock
from .safeio import create_exclusive, fsync_dir, make_dirs, write_durable

__all__ = ["Maildir", "validate_folder_name"]

log = logging.getLogger(__name__)

SUBSCRIPTIONS = "subscriptions"
MAILDIRFOLDER = "maildirfolder"
# RFC 6154 §5.2 (CREATE-SPECIAL-USE): a folder's special use given at CREATE, kept in a
# file inside the folder's own directory, so it moves with RENAME and goes with DELETE.
# Dovecot keeps it in its attribute dict (keyed by mailbox GUID, which this layout has
# not); it ignores this file, so the Maildir stays one Dovecot can take over.
SPECIAL_USE_FILE = "mailstack-special-use"
_SUBS_V2_HEADER = "V\t2\n\n"
_MAX_NAME_BYTES = 255


def _has_bad_char(text: str) -> bool:
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o <= 0x9F or ch in "/\\":
            return True
        if unicodedata.category(ch) == "Cs":  # lone surrogate
            return True
    return False


def _check_path_component(kind: str, value: str) -> None:
    """A domain or local part that is safe as one directory name under the root."""
    if not isinstance(value, str) or not value:
        raise UnsafeName(f"empty {kind}")
    if value in (".", "..") or value.startswith((".", "~")):
        raise UnsafeName(f"{kind} may not start with '.' or '~': {value!r}")
    if _has_bad_char(value):
        raise UnsafeName(f"{kind} holds '/', '\\', NUL or a control character: {value!r}")
    if len(value.encode("utf-8")) > _MAX_NAME_BYTES:
        raise UnsafeName(f"{kind} too long: {value[:40]!r}...")


def validate_folder_name(name: str) -> tuple[str, str | None]:
    """(canonical IMAP name, directory name or None for INBOX); UnsafeName if refused."""
    if not isinstance(name, str) or not name:
        raise UnsafeName("empty folder name")
    if name.upper() == "INBOX":
        return "INBOX", None
    if name.startswith("~"):
        raise UnsafeName(f"folder name may not start with '~': {name!r}")
    if _has_bad_char(name):
        raise UnsafeName(f"folder name holds '/', '\\', NUL or a control character: {name!r}")
    parts = name.split(".")
    if any(p == "" for p in parts):
        raise UnsafeName(f"folder name has an empty component: {name!r}")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    try:
        dirname = "." + ".".join(mutf7.encode(p) for p in parts)
    except UnicodeError:
        raise UnsafeName(f"folder name is not valid Unicode: {name!r}") from None
    if len(dirname.encode("utf-8")) > _MAX_NAME_BYTES:
        raise UnsafeName(f"folder name too long: {name[:40]!r}...")
    return ".".join(parts), dirname


def _tab_escape(text: str) -> str:
    # Dovecot str_append_tabescaped()
    return text.replace("\x01", "\x011").replace("\t", "\x01t").replace("\r", "\x01r").replace("\n", "\x01n")


def _tab_unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    table = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}
    while i < len(text):
        ch = text[i]
        if ch == "\x01" and i + 1 < len(text):
            out.append(table.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class Maildir:
    """One user's Maildir++ root."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Maildir({str(self.root)!r})"

    @classmethod
    def for_user(cls, maildir_root: Path, domain: str, local: str) -> Maildir:
        """`<maildir_root>/<domain>/<local>/`, refusing any name that would leave the root."""
        _check_path_component("domain", domain)
        _check_path_component("local part", local)
        root = Path(os.path.abspath(maildir_root))
        path = Path(os.path.normpath(root / domain / local))
        if path.parent.parent != root:
            raise UnsafeName(f"mailbox path leaves the Maildir root: {domain!r}/{local!r}")
        return cls(path)

    # ------------------------------------------------------------------ layout

    @staticmethod
    def _make_maildir(path: Path) -> bool:
        created = False
        for sub in ("cur", "new", "tmp"):
            try:
                os.mkdir(path / sub, 0o700)
                created = True
            except FileExistsError:
                pass
        return created

    def ensure(self) -> None:
        """Create the root and its `cur/ new/ tmp/` when missing: 0700 each, and so is a
        missing `<domain>/` above it (its listing names the users), whatever the umask."""
        if (self.root / "cur").is_dir() and (self.root / "new").is_dir() and (self.root / "tmp").is_dir():
            return
        make_dirs(self.root, 0o700)
        if self._make_maildir(self.root):
            fsync_dir(self.root)
            fsync_dir(self.root.parent)

    def _folder_path(self, name: str) -> tuple[str, Path]:
        canonical, dirname = validate_folder_name(name)
        return canonical, self.root if dirname is None else self.root / dirname

    def has_folder(self, name: str) -> bool:
        """True if the folder exists; False also for a name that could never exist."""
        try:
            canonical, path = self._folder_path(name)
        except UnsafeName:
            return False
        if canonical == "INBOX":
            return True
        return (path / "cur").is_dir()

    def folder(self, name: str = "INBOX") -> Folder:
        """The Folder for an IMAP name (IMAP SELECT/EXAMINE/STATUS/APPEND, the POP3
        maildrop); FolderNotFound if it does not exist. Like Dovecot's mailbox open, it
        removes what crashed writers left in tmp/, at most every few hours (tmpclean)."""
        canonical, path = self._folder_path(name)
        if canonical == "INBOX":
            self.ensure()
        elif not path.is_dir():
            raise FolderNotFound(f"no folder {name!r}")
        else:
            self._make_maildir(path)  # a folder made by hand may lack tmp/
        tmpclean.maybe_clean_tmp(path / "tmp")
        return Folder(self, canonical, path)

    def list_folders(self) -> list[str]:
        """Every folder's IMAP name, INBOX first, then sorted."""
        names: list[str] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return ["INBOX"]
        for entry in entries:
            n = entry.name
            if not n.startswith(".") or n in (".", "..") or not entry.is_dir():
                continue
            try:
                parts = [mutf7.decode(p) for p in n[1:].split(".")]
            except ValueError:
                log.warning("skipping folder directory with invalid modified UTF-7 name: %r", n)
                continue
            if any(not p for p in parts):
                continue
            names.append(".".join(parts))
        return ["INBOX"] + sorted(names)

    def create_folder(self, name: str) -> Folder:
        canonical, path = self._folder_path(name)
        if canonical == "INBOX":
            raise FolderExists("INBOX always exists")
        self.ensure()
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise FolderExists(f"folder {name!r} already exists") from None
        self._make_maildir(path)
        try:
            create_exclusive(path / MAILDIRFOLDER, b"")
        except FileExistsError:
            pass
        fsync_dir(path)
        fsync_dir(self.root)
        return Folder(self, canonical, path)

    def create_special_folder(self, name: str, uses: tuple[str, ...]) -> Folder:
        """CREATE with special-use attributes (RFC 6154 §5.2): the folder and its uses or
        nothing (a failure to record the uses removes the folder again)."""
        folder = self.create_folder(name)
        try:
            write_durable(folder.path / SPECIAL_USE_FILE, (" ".join(uses) + "\n").encode("ascii"))
        except BaseException:
            self.delete_folder(name)
            raise
        return folder

    def special_use(self, name: str) -> tuple[str, ...]:
        """The special-use attributes recorded for a folder at CREATE, if any."""
        try:
            _, path = self._folder_path(name)
            raw = (path / SPECIAL_USE_FILE).read_bytes()[:1024]
        except (OSError, UnsafeName):
            return ()
        return tuple(a for a in raw.decode("ascii", "replace").split() if a.startswith("\\"))

    def delete_folder(self, name: str) -> None:
        """Remove a folder and its messages (children, being separate dirs, stay)."""
        canonical, path = self._folder_path(name)
        if canonical == "INBOX":
            raise StorageError("INBOX cannot be deleted")
        if not path.is_dir():
            raise FolderNotFound(f"no folder {name!r}")
        size, count = quota.sum_sizes([path])
        self.ensure()
        trash = self.root / "tmp" / f"{tmpclean.TRASH_PREFIX}{secrets.token_hex(8)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            raise FolderNotFound(f"no folder {name!r}") from None
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        quota.update(self.root, -size, -count)

    def rename_folder(self, old: str, new: str) -> None:
        """RFC 3501 §6.3.5 RENAME; children move too; renaming INBOX moves its messages."""
        old_c, old_path = self._folder_path(old)
        new_c, new_path = self._folder_path(new)
        if new_c == "INBOX":
            raise FolderExists("INBOX always exists")
        if new_path.exists():
            raise FolderExists(f"folder {new!r} already exists")
        if old_c == "INBOX":
            inbox = self.folder("INBOX")
            target = self.create_folder(new_c)
            inbox.move_to(inbox.sync().uids(), target)
            return
        if not old_path.is_dir():
            raise FolderNotFound(f"no folder {old!r}")
        if new_c.startswith(old_c + "."):
            raise UnsafeName(f"cannot rename {old!r} into itself")
        prefix = old_path.name + "."
        children = sorted(e.name for e in os.scandir(self.root) if e.name.startswith(prefix) and e.is_dir())
        moves = [(old_path, new_path)] + [
            (self.root / c, self.root / (new_path.name + c[len(old_path.name) :])) for c in children
        ]
        for _, dst in moves[1:]:
            if dst.exists():
                raise FolderExists(f"folder directory {dst.name!r} already exists")
        for src, dst in moves:
            os.rename(src, dst)
        fsync_dir(self.root)
        # Keep subscriptions pointing at the renamed folders.
        subs = self.list_subscriptions()
        renamed = [
            new_c + s[len(old_c) :] if (s == old_c or s.startswith(old_c + ".")) else s for s in subs
        ]
        if renamed != subs:
            self._write_subscriptions(renamed)

    # ------------------------------------------------------------------ subscriptions

    def _read_subscriptions(self) -> tuple[int, list[str]]:
        try:
            text = (self.root / SUBSCRIPTIONS).read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return 1, []
        if text.startswith(_SUBS_V2_HEADER):
            lines = text[len(_SUBS_V2_HEADER) :].split("\n")
            return 2, [".".join(_tab_unescape(p) for p in line.split("\t")) for line in lines if line]
        return 1, [line for line in text.split("\n") if line]

    def list_subscriptions(self) -> list[str]:
        """Subscribed IMAP names, in file order (names need not exist, RFC 3501 §6.3.6)."""
        return self._read_subscriptions()[1]

    def _write_subscriptions(self, names: list[str], version: int | None = None) -> None:
        if version is None:
            version = self._read_subscriptions()[0]
        if version >= 2:
            body = _SUBS_V2_HEADER + "".join("\t".join(_tab_escape(p) for p in n.split(".")) + "\n" for n in names)
        else:
            body = "".join(n + "\n" for n in names)
        self.ensure()
        write_durable(self.root / SUBSCRIPTIONS, body.encode("utf-8"))

    def _set_subscribed(self, name: str, on: bool) -> None:
        canonical, _ = validate_folder_name(name)
        self.ensure()
        with DotLock(self.root / SUBSCRIPTIONS, timeout=120, stale_timeout=30):
            version, names = self._read_subscriptions()
            present = canonical in names
            if on and not present:
                names.append(canonical)
            elif not on and present:
                names = [n for n in names if n != canonical]
            else:
                return
            self._write_subscriptions(names, version)

    def subscribe(self, name: str) -> None:
        self._set_subscribed(name, True)

    def unsubscribe(self, name: str) -> None:
        self._set_subscribed(name, False)

    # ------------------------------------------------------------------ delivery

    def deliver(self, data: bytes, folder: str | None = None) -> str:
        """Store wire bytes (CRLF or LF) durably in new/ of INBOX or folder; returns the file name."""
        if folder is None or validate_folder_name(folder)[1] is None:
            self.ensure()
            path = self.root
        else:
            _, path = self._folder_path(folder)
            if not (path / "new").is_dir():
                raise FolderNotFound(f"no folder {folder!r}")
        lf, vsize = lf_and_vsize(data)
        tmp = path / "tmp"
        tmpclean.maybe_clean_tmp(tmp)  # delivery opens the folder too (Dovecot's LMTP does the same)
        for _ in range(100):
            base = new_basename(len(lf), vsize)
            try:
                create_exclusive(tmp / base, lf)
                break
            except FileExistsError:
                continue
        else:
            raise StorageError(f"cannot create a unique file in {tmp}")
        try:
            os.rename(tmp / base, path / "new" / base)
        except BaseException:
            try:
                os.unlink(tmp / base)
            except OSError:
                pass
            raise
        fsync_dir(path / "new")
        quota.update(self.root, len(lf), 1)
        hooks.stored(path, base, lf)
        return base

    # ------------------------------------------------------------------ quota

    def quota_usage(self) -> tuple[int, int]:
        """(bytes, messages) from maildirsize, rebuilt when missing or stale."""
        self.ensure()
        return quota.usage(self.root)

    def quota_check(self, extra_bytes: int, limit_bytes: int | None, limit_count: int | None = None) -> bool:
        """True if a message of extra_bytes fits under the limit (None or 0: unlimited)."""
        self.ensure()
        return quota.check(self.root, extra_bytes, limit_bytes, limit_count)

    def recalculate_quota(self, limit_bytes: int | None = None, limit_count: int | None = None) -> tuple[int, int]:
        """Rewrite maildirsize from the file names; returns (bytes, messages)."""
        self.ensure()
        q = quota.recalculate(self.root, quota.format_limit(limit_bytes, limit_count))
        return q.bytes, q.count
