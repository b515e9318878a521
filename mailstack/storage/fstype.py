"""Which file system a path lives on, and how SQLite files on it must be opened.

mailstack keeps small SQLite files in each folder (the IMAP index, the full-text index).
On a local disk they run in WAL mode, whose ``-shm`` file is a memory map that every
process of the machine shares. Several *hosts* serving one mail root over NFS or CephFS
cannot share a memory map: SQLite's own documentation says WAL "does not work over a
network filesystem", and two hosts would corrupt the file. So on a network or cluster
file system these files use a rollback journal (``journal_mode=DELETE``) and no mmap
(``mmap_size=0``): every transaction then takes POSIX ``fcntl`` locks on the file
itself, which NFSv4 (and NFSv3 with lockd), CephFS and the other types below carry to
the server, and a lock makes the Linux NFS client drop its cached pages. This is what
Dovecot asks of its index files on NFS (``mmap_disable = yes``, fcntl locking).

The file system type is read from ``/proc/self/mountinfo`` (the mount whose mount point
is the longest prefix of the resolved path), once per mount point list: mounts do not
change under a running server often enough to matter, and ``refresh()`` re-reads them.

Invariants:
- Unknown or unreadable (no ``/proc``): treated as local, exactly today's behaviour.
- ``sqlite_journal_mode(path)`` is ``"WAL"`` on a local file system, ``"DELETE"`` on a
  network or cluster one; nothing else is ever returned.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["NETWORK_TYPES", "fs_type", "is_network_fs", "open_sqlite_mode", "parse_mountinfo", "refresh",
           "sqlite_journal_mode"]

# File systems where several hosts may open one file (network and shared-disk cluster
# file systems, and FUSE clients of them)
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "ceph", "cifs", "smb3", "smbfs", "9p", "afs", "glusterfs", "lustre", "ocfs2", "gfs2", "gpfs",
    "beegfs", "fuse.ceph-fuse", "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.juicefs", "fuse.gcsfuse",
})
MOUNTINFO = Path("/proc/self/mountinfo")

_lock = threading.Lock()
_mounts: list[tuple[str, str]] | None = None  # (mount point, type), longest mount point first


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` (octal)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, file system type) of every line, longest mount point first (proc(5))."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)  # optional fields end with a lone "-"
            mounts.append((_unescape(fields[4]), fields[sep + 1]))
        except (ValueError, IndexError):
            continue
    mounts.sort(key=lambda m: len(m[0]), reverse=True)
    return mounts


def refresh() -> None:
    """Forget the mount list (it is read again at the next question)."""
    global _mounts
    with _lock:
        _mounts = None


def _mount_list() -> list[tuple[str, str]]:
    global _mounts
    with _lock:
        if _mounts is None:
            try:
                _mounts = parse_mountinfo(MOUNTINFO.read_text("utf-8", "surrogateescape"))
            except OSError:
                _mounts = []
        return _mounts


def fs_type(path: Path, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """The type of the file system ``path`` is on (``"ext4"``, ``"nfs4"``, ...), None if unknown."""
    real = os.path.realpath(path)
    for point, kind in mounts if mounts is not None else _mount_list():
        if real == point or real.startswith(point.rstrip("/") + "/"):
            return kind
    return None


def is_network_fs(path: Path, mounts: list[tuple[str, str]] | None = None) -> bool:
    return fs_type(path, mounts) in NETWORK_TYPES


def sqlite_journal_mode(path: Path, mounts: list[tuple[str, str]] | None = None) -> str:
    """``"WAL"`` for a SQLite file in folder ``path`` on a local disk, ``"DELETE"`` on a
    file system other hosts may share (see the module docstring)."""
    return "DELETE" if is_network_fs(path, mounts) else "WAL"


def open_sqlite_mode(db: sqlite3.Connection, path: Path) -> bool:
    """Put a just-opened SQLite connection to file ``path`` in the mode its file system
    needs; False when it must not be used now (on a network file system, a file that
    stays in WAL mode because another host has it open that way). On a local disk it is
    ``journal_mode=WAL`` as always, and always True."""
    mode = sqlite_journal_mode(path.parent)
    row = db.execute(f"PRAGMA journal_mode={mode}").fetchone()
    if mode == "WAL":
        return True
    db.execute("PRAGMA mmap_size=0")
    return row is not None and str(row[0]).upper() == mode
