"""Durable file writes: the one helper every storage write goes through.

Invariants (docs/architecture.md convention 4, chasquid's safeio):
- `write_durable` never leaves a half-written target: data goes into a temp file in
  the same directory, is fsynced, renamed over the target, and the directory is
  fsynced, so after it returns the new content survives a crash.
- `create_exclusive` never overwrites: O_EXCL, then fsync before it returns.
- Nothing here calls os.fsync/os.replace through a local alias, so tests can record
  the order of calls by monkeypatching the `os` module.
- Modes are explicit in every creating call (files 0600 unless told otherwise, never
  wider than asked whatever the umask), and `make_dirs` gives every directory it
  creates exactly its mode, parents included (os.makedirs gives parents the umask's
  default, 0755 or even 0777). `PRIVATE_UMASK` is the process-wide backstop that the
  CLI and the server set at start, for anything created elsewhere.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "write_durable", "fsync_dir", "create_exclusive", "write_all", "make_dirs"]

# Mail, password hashes, keys, queue: nothing the group or others may read unless a
# creating call says so (Dovecot: 0700 dirs, 0600 files).
PRIVATE_UMASK = 0o077


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of data to fd (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike[str], mode: int = 0o700) -> bool:
    """Create path and any missing parent, each with exactly ``mode`` (umask or not).

    Directories that exist already are left as they are (an admin's choice). Returns
    True when path itself was created. Races with another creator are harmless.
    """
    target = Path(path)
    missing: list[Path] = []
    p = target
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created = False
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        os.chmod(d, mode)  # mkdir's mode went through the umask
        created = d == target
    return created


def create_exclusive(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Create path with O_EXCL (FileExistsError if it exists), write data and fsync it.

    The directory entry itself is not fsynced: callers put the file into `tmp/` and
    fsync the directory they finally rename it into.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def write_durable(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Atomically replace path with data: temp in same dir, write, fsync, rename, fsync dir."""
    target = Path(path)
    directory = target.parent
    temp = directory / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    create_exclusive(temp, data, mode)
    try:
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_dir(directory)
