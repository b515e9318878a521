"""Fills one snapshot folder: copies files (hashing as it goes) or hard-links unchanged
ones from the previous snapshot, and collects the manifest's entries.

Incremental backups: a file is taken from the previous snapshot by a hard link, with
the checksum the previous manifest gives it, when

- it is a message file (Maildir ``cur/`` or ``new/``) whose *base name* (the part before
  ``:2,``) the previous snapshot holds in the same folder with the same size and mtime.
  Message files are never modified (flags change by renaming, docs/on-disk.md), so the
  base name names the content: a message whose flags changed is linked under its new
  name, and costs nothing;
- any other file at the same path with the same size and mtime (in ns).

Everything else is copied: read once, hashed, written 0600 with the source's mtime
(a message's INTERNALDATE). A file that vanishes before it is opened is reported to
the caller (``copy_file`` returns False), who knows whether that means "expunged" or
"renamed, look again".
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mailstack.storage.filename import split_name

from .manifest import DirEntry, FileEntry, LinkEntry, Manifest

__all__ = ["Writer", "Previous", "BackupError", "message_key"]

CHUNK = 1 << 20


class BackupError(Exception):
    """A backup or restore that cannot go on; ``str()`` is the one line the admin sees."""


def message_key(folder: str, name: str) -> str:
    """The identity of a message file across snapshots: its folder and base name."""
    return f"{folder}\0{split_name(name)[0]}"


def _message_key_of(path: str) -> str | None:
    parts = path.split("/")
    if parts[0] != "maildirs" or len(parts) < 3 or parts[-2] not in ("cur", "new"):
        return None
    return message_key("/".join(parts[:-2]), parts[-1])


@dataclass(frozen=True)
class Previous:
    """The snapshot an incremental backup links from."""

    root: Path
    manifest: Manifest

    def indexes(self) -> tuple[dict[str, FileEntry], dict[str, FileEntry]]:
        by_path = {f.path: f for f in self.manifest.files}
        by_message = {}
        for f in self.manifest.files:
            key = _message_key_of(f.path)
            if key is not None:
                by_message[key] = f
        return by_path, by_message


class Writer:
    """One snapshot in the making under ``root``."""

    def __init__(self, root: Path, previous: Previous | None = None) -> None:
        self.root = root
        self.previous = previous
        self._by_path, self._by_message = previous.indexes() if previous else ({}, {})
        self.files: dict[str, FileEntry] = {}
        self.dirs: dict[str, DirEntry] = {}
        self.links: dict[str, LinkEntry] = {}
        self.copied = 0
        self.linked = 0
        self.bytes_copied = 0

    def path(self, rel: str) -> Path:
        return self.root / rel

    # ------------------------------------------------------------------ entries

    def mkdir(self, rel: str, mode: int = 0o700) -> None:
        """A folder of the snapshot (made 0700; ``mode`` is what restore gives it)."""
        if rel in self.dirs:
            return
        parent = rel.rpartition("/")[0]
        if parent and parent not in self.dirs:
            self.mkdir(parent)
        os.makedirs(self.root / rel, 0o700, exist_ok=True)
        self.dirs[rel] = DirEntry(rel, stat.S_IMODE(mode))

    def symlink(self, rel: str, target: str) -> None:
        os.symlink(target, self.root / rel)
        self.links[rel] = LinkEntry(rel, target)

    def drop(self, rel: str) -> None:
        """Take a file back out (a queue entry that left the queue while it was copied)."""
        if self.files.pop(rel, None) is not None:
            os.unlink(self.root / rel)

    def add_file(self, rel: str, mode: int = 0o600) -> None:
        """A file written into the snapshot by someone else (the database dump): hash it."""
        path = self.root / rel
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
            st = os.fstat(f.fileno())
        self.files[rel] = FileEntry(rel, st.st_size, digest.hexdigest(), st.st_mtime_ns, stat.S_IMODE(mode))
        self.copied += 1
        self.bytes_copied += st.st_size

    def copy_file(self, src: Path, rel: str, *, message_folder: str | None = None) -> bool:
        """Copy (or link from the previous snapshot) ``src`` as ``rel``; False if ``src`` is gone.

        ``message_folder``: ``src`` is a message file of that snapshot folder (links by base name).
        """
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return True  # a socket, a fifo, a device: nothing a backup can hold
        prev = (self._by_message.get(message_key(message_folder, src.name)) if message_folder is not None
                else self._by_path.get(rel))
        if prev is not None and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns and self._link(prev, rel):
            self.files[rel] = FileEntry(rel, prev.size, prev.sha256, prev.mtime_ns, stat.S_IMODE(st.st_mode))
            self.linked += 1
            return True
        return self._copy(src, rel)

    def _link(self, prev: FileEntry, rel: str) -> bool:
        assert self.previous is not None
        try:
            os.link(self.previous.root / prev.path, self.root / rel)
        except FileNotFoundError:
            return False  # the previous snapshot lost it: copy afresh
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP):
                return False
            raise
        return True

    def _copy(self, src: Path, rel: str) -> bool:
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        dst = self.root / rel
        digest = hashlib.sha256()
        try:
            st = os.fstat(fd)
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                size = 0
                while chunk := os.read(fd, CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view):]
                    size += len(chunk)
            finally:
                os.close(out)
        finally:
            os.close(fd)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.files[rel] = FileEntry(rel, size, digest.hexdigest(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        self.copied += 1
        self.bytes_copied += size
        return True

    def entries(self) -> tuple[tuple[FileEntry, ...], tuple[DirEntry, ...], tuple[LinkEntry, ...]]:
        return (tuple(sorted(self.files.values(), key=lambda f: f.path)),
                tuple(sorted(self.dirs.values(), key=lambda d: d.path)),
                tuple(sorted(self.links.values(), key=lambda ln: ln.path)))
