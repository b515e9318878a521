"""Durable file writes: the one helper every storage write goes through.

Invariants (docs/architecture.md convention 4, chasquid's safeio):
- `write_durable` never leaves a half-written target: data goes into a temp file in
  the same directory, is fsynced, renamed over the target, and the directory is
  fsynced, so after it returns the new content survives a crash.
- `create_exclusive` never overwrites: O_EXCL, then fsync before it returns.
- Nothing here calls os.fsync/os.replace through a local alias, so tests can record
  the order of calls by monkeypatching the `os` module.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_durable", "fsync_dir", "create_exclusive", "write_all"]


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
