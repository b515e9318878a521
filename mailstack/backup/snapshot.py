"""`mailstack backup DEST`: one consistent snapshot of a running installation.

``DEST`` is a folder of snapshots, one per run, named by the UTC time it started
(``20261201T031500Z``), with ``DEST/latest`` a symlink to the newest complete one:

```
DEST/
  .lock                     flock'ed by the running backup: one at a time per DEST
  20261130T031500Z/         a complete snapshot (MANIFEST.json, database/, maildirs/, ...)
  20261201T031500Z/
  latest -> 20261201T031500Z
```

Order (each step after the one before it, see also `areas` and `maildirs`):
1. the directory database through its online backup (`directory.dump`), so every user
   it names has its Maildir copied afterwards: nothing in the database points at mail
   missing from the snapshot;
2. the queue, then the Maildirs, then the DKIM keys, the certificate and the config;
3. ``MANIFEST.json`` (every file with its SHA-256), one `sync`, then the folder is renamed
   from ``.partial-<name>`` to ``<name>`` and ``latest`` is moved to it. A backup that
   fails or is killed leaves no snapshot (a next run removes its ``.partial-*``), and
   ``latest`` always names a complete one.

Incremental: unless ``full``, files unchanged since ``latest`` are hard links into it
(`writer`), so a nightly run costs the new mail and the database dump. ``keep`` > 0
removes the oldest complete snapshots beyond that many (linked files live on in the
snapshots that still hold them).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mailstack import __version__
from mailstack.config import Config
from mailstack.directory.dump import DumpError, dump, kind_of
from mailstack.storage.safeio import fsync_dir, make_dirs

from .areas import areas, config_area
from .maildirs import copy_maildirs, copy_queue, copy_tree
from .manifest import MANIFEST_NAME, Manifest, ManifestError
from .writer import BackupError, Previous, Writer

__all__ = ["BackupResult", "backup", "snapshots", "latest", "LATEST", "SNAPSHOT_RE"]

log = logging.getLogger(__name__)

LATEST = "latest"
LOCK_NAME = ".lock"
PARTIAL_PREFIX = ".partial-"
SNAPSHOT_RE = re.compile(r"^\d{8}T\d{6}Z(?:-\d+)?$")


@dataclass(frozen=True)
class BackupResult:
    path: Path  # the new snapshot
    parent: str | None  # the snapshot unchanged files were linked from
    files: int
    copied: int
    linked: int
    bytes_copied: int
    removed: tuple[str, ...]  # old snapshots removed by `keep`


def snapshots(dest: Path) -> list[str]:
    """The complete snapshots in ``dest``, oldest first."""
    try:
        names = os.listdir(dest)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if SNAPSHOT_RE.match(n) and (dest / n / MANIFEST_NAME).is_file())


def latest(dest: Path) -> Path | None:
    """The snapshot ``DEST/latest`` names, when it is a complete one."""
    link = dest / LATEST
    try:
        name = os.readlink(link)
    except OSError:
        return None
    if not SNAPSHOT_RE.match(name) or not (dest / name / MANIFEST_NAME).is_file():
        return None
    return dest / name


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    fd = os.open(dest / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"{dest}: another backup into it is running") from None
        yield
    finally:
        os.close(fd)


def _previous(dest: Path) -> Previous | None:
    snap = latest(dest)
    if snap is None:
        return None
    try:
        manifest = Manifest.from_bytes((snap / MANIFEST_NAME).read_bytes())
    except (OSError, ManifestError) as e:
        log.warning("%s: cannot link from it (%s): taking a full backup", snap, e)
        return None
    return Previous(snap, manifest)


def _new_name(dest: Path, now: datetime) -> str:
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name, n = stamp, 0
    while (dest / name).exists() or (dest / f"{PARTIAL_PREFIX}{name}").exists():
        n += 1
        name = f"{stamp}-{n}"
    return name


def _set_latest(dest: Path, name: str) -> None:
    tmp = dest / f".{LATEST}.{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(name, tmp)
    os.replace(tmp, dest / LATEST)
    fsync_dir(dest)


def backup(config: Config, dest: Path, *, full: bool = False, keep: int = 0,
           now: datetime | None = None) -> BackupResult:
    """Take one snapshot of what ``config`` names into ``dest`` (see the module docstring)."""
    try:
        kind = kind_of(config.database.url)
    except DumpError as e:
        raise BackupError(str(e)) from None
    if (dest / MANIFEST_NAME).exists():
        raise BackupError(f"{dest} is a snapshot itself: give the folder that holds the snapshots")
    where = dest.resolve()
    for area in areas(config):
        if area.kind != "file" and (where == area.path or area.path in where.parents):
            raise BackupError(f"{dest} is inside {area.path}, which it backs up: choose a folder outside it")
    try:
        make_dirs(dest, 0o700)
    except OSError as e:
        raise BackupError(f"{dest}: cannot create: {e.strerror or e}") from None
    if not dest.is_dir():
        raise BackupError(f"{dest}: not a folder")
    try:
        with _locked(dest):
            return _backup_locked(config, dest, kind, full, keep, now or datetime.now(timezone.utc))
    except OSError as e:
        path = f"{e.filename}: " if e.filename else ""
        raise BackupError(f"{path}{e.strerror or e}") from None


def _backup_locked(config: Config, dest: Path, kind: str, full: bool, keep: int, now: datetime) -> BackupResult:
    for name in os.listdir(dest):
        if name.startswith(PARTIAL_PREFIX):  # left by a backup that died
            shutil.rmtree(dest / name, ignore_errors=True)
    previous = None if full else _previous(dest)
    name = _new_name(dest, now)
    work = dest / f"{PARTIAL_PREFIX}{name}"
    os.mkdir(work, 0o700)
    try:
        writer = Writer(work, previous)
        writer.mkdir("database")
        try:
            out = dump(config.database.url, work / "database")
        except DumpError as e:
            raise BackupError(str(e)) from None
        writer.add_file(f"database/{out.name}")
        for area in areas(config):
            if area.kind == "queue":
                copy_queue(area.path, writer, area.name)
            elif area.kind == "maildirs":
                copy_maildirs(area.path, writer, area.name)
            elif area.kind == "tree":
                copy_tree(area.path, writer, area.name)
            else:
                writer.mkdir(area.name.rpartition("/")[0])
                writer.copy_file(area.path, area.name)
        conf = config_area(config)
        if conf is not None:
            writer.mkdir("config")
            writer.copy_file(conf.path, conf.name)
        files, dirs, links = writer.entries()
        manifest = Manifest(now.astimezone(timezone.utc).isoformat(timespec="seconds"), config.hostname, __version__,
                            kind, previous.root.name if previous else None, files, dirs, links)
        fd = os.open(work / MANIFEST_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, manifest.to_bytes())
        finally:
            os.close(fd)
        os.sync()  # every file of the snapshot on disk before it is named complete
        os.rename(work, dest / name)
        fsync_dir(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _set_latest(dest, name)
    removed = _prune(dest, keep, name) if keep > 0 else ()
    return BackupResult(dest / name, previous.root.name if previous else None, len(files), writer.copied,
                        writer.linked, writer.bytes_copied, removed)


def _prune(dest: Path, keep: int, newest: str) -> tuple[str, ...]:
    old = [n for n in snapshots(dest) if n != newest]
    doomed = old[: max(0, len(old) - (keep - 1))]
    for name in doomed:
        shutil.rmtree(dest / name)
    return tuple(doomed)
