"""`mailstack restore SRC [--force]`: a snapshot back onto a machine.

``SRC`` is a snapshot folder (it holds ``MANIFEST.json``) or a backup folder (its
``latest`` snapshot is taken). Stop the servers first, and run it as the user they run
as (the files it writes are that user's).

Invariants:
- Everything is checked before anything is written: the manifest's own checksum, then
  every file's presence, size and SHA-256, and every link; a damaged backup is refused
  with one line naming the first damage (and how many more), and the machine is left
  as it was. So is a target that is not empty (`occupied`), unless ``force``.
- Files go where the config given to *restore* says (`areas`); the backed-up config is
  written beside that config as ``<name>.from-backup``, never over it.
- Every file is written to a temp name, hashed again while it is copied, then renamed
  into place with its mode and mtime (a message's INTERNALDATE); one `sync` at the end.
- With ``force`` the backup is laid over what is there: the database is replaced, a
  file of the backup replaces the file of the same path, a message replaces any file
  of the same base name in its folder (a message is never there twice, whatever its
  flags); anything else that is there is kept.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from mailstack.config import Config
from mailstack.directory.dump import DUMP_NAMES, DumpError, Kind, is_empty, kind_of, load
from mailstack.storage.filename import split_name
from mailstack.storage.safeio import make_dirs

from .areas import FROM_BACKUP_SUFFIX, Area, areas
from .maildirs import list_messages
from .manifest import AREAS, MANIFEST_NAME, FileEntry, Manifest, ManifestError
from .snapshot import latest
from .writer import CHUNK, BackupError

__all__ = ["RestoreResult", "find_snapshot", "verify", "occupied", "restore"]

MAX_NAMED = 3  # damaged files named in the one-line refusal; the rest are counted


@dataclass(frozen=True)
class RestoreResult:
    snapshot: Path
    files: int
    config_copy: Path | None  # where the backed-up config was put


def find_snapshot(src: Path) -> Path:
    """``src`` itself when it is a snapshot, else its ``latest``."""
    if (src / MANIFEST_NAME).is_file():
        return src
    snap = latest(src)
    if snap is not None:
        return snap
    if not src.exists():
        raise BackupError(f"{src}: no such folder")
    if any((src / area).is_dir() for area in AREAS):
        raise BackupError(f"{src}: damaged backup, nothing restored: {MANIFEST_NAME} is missing")
    raise BackupError(f"{src}: no backup here (neither {MANIFEST_NAME} nor a 'latest' snapshot)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(snapshot: Path) -> Manifest:
    """The snapshot's manifest, once every file and link matches it; else BackupError."""
    try:
        manifest = Manifest.from_bytes((snapshot / MANIFEST_NAME).read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{snapshot}: damaged backup: {MANIFEST_NAME} is missing") from None
    except OSError as e:
        raise BackupError(f"{snapshot / MANIFEST_NAME}: {e.strerror or e}") from None
    except ManifestError as e:
        raise BackupError(f"{snapshot}: damaged backup: {e}") from None
    problems: list[str] = []
    for f in manifest.files:
        path = snapshot / f.path
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{f.path} is not a file")
            elif st.st_size != f.size:
                problems.append(f"{f.path} has {st.st_size} bytes, not {f.size}")
            elif _sha256(path) != f.sha256:
                problems.append(f"{f.path} does not match its checksum")
        except FileNotFoundError:
            problems.append(f"{f.path} is missing")
        except OSError as e:
            problems.append(f"{f.path}: {e.strerror or e}")
    for ln in manifest.links:
        try:
            if os.readlink(snapshot / ln.path) != ln.target:
                problems.append(f"{ln.path} points elsewhere")
        except OSError:
            problems.append(f"{ln.path} is missing")
    if manifest.database is not None and manifest.database not in DUMP_NAMES:
        problems.append(f"unknown database kind {manifest.database!r}")
    elif manifest.database is not None and not any(
            f.path == f"database/{DUMP_NAMES[manifest.database]}" for f in manifest.files):
        problems.append("the database dump is not in it")
    if problems:
        more = f" (and {len(problems) - MAX_NAMED} more)" if len(problems) > MAX_NAMED else ""
        raise BackupError(f"{snapshot}: damaged backup, nothing restored: {'; '.join(problems[:MAX_NAMED])}{more}")
    return manifest


class _Targets:
    """Snapshot path -> where the config given to restore wants it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.by_name: dict[str, Area] = {a.name: a for a in areas(config)}

    def of(self, rel: str) -> Path | None:
        area = self.by_name.get(rel)
        if area is not None:
            return area.path
        top, _, rest = rel.partition("/")
        if top == "config":
            if self.config.path is None or not rest or "/" in rest:
                return None
            return self.config.path.with_name(self.config.path.name + FROM_BACKUP_SUFFIX)
        area = self.by_name.get(top)
        if area is None or area.kind == "file":
            return None
        return area.path / rest if rest else area.path


def occupied(config: Config) -> list[str]:
    """What the config's places already hold (empty list: a fresh machine)."""
    found: list[str] = []
    try:
        if not is_empty(config.database.url):
            found.append("the database has domains, users or aliases")
    except DumpError as e:
        raise BackupError(str(e)) from None
    for area in areas(config):
        path = area.path
        if area.kind == "file":
            if path.exists():
                found.append(f"{path} exists")
            continue
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if area.kind == "maildirs":
            # domain folders never start with "." (a `.keep` or Dovecot's files at the top do not count)
            names = [n for n in names if not n.startswith(".")]
        elif area.kind == "queue":
            names = [n for n in names if n.endswith((".env", ".msg")) and not n.startswith(".")]
        if names:
            found.append(f"{path} is not empty")
    return found


def restore(config: Config, src: Path, *, force: bool = False) -> RestoreResult:
    """Verify the snapshot at ``src``, then write it where ``config`` says."""
    snapshot = find_snapshot(src)
    manifest = verify(snapshot)
    try:
        target_kind = kind_of(config.database.url)
    except DumpError as e:
        raise BackupError(str(e)) from None
    if manifest.database is not None and manifest.database != target_kind:
        raise BackupError(f"the backup holds a {manifest.database} database but [database] url is {target_kind}: "
                          "nothing restored")
    if not force:
        busy = occupied(config)
        if busy:
            raise BackupError(f"not an empty root: {'; '.join(busy)}; nothing restored (--force restores over it)")
    targets = _Targets(config)
    try:
        if manifest.database is not None:
            kind: Kind = "sqlite" if manifest.database == "sqlite" else "postgresql"
            try:
                load(config.database.url, snapshot / "database" / DUMP_NAMES[kind], kind)
            except DumpError as e:
                raise BackupError(str(e)) from None
        for d in manifest.dirs:
            target = targets.of(d.path)
            if target is not None:
                make_dirs(target, d.mode & 0o777)
        replaced: dict[Path, dict[str, tuple[str, str]]] = {}
        config_copy = None
        for f in manifest.files:
            target = targets.of(f.path)
            if target is None:
                continue
            if force and f.path.startswith("maildirs/") and target.parent.name in ("cur", "new"):
                _drop_other_names(target, replaced)
            _place(snapshot / f.path, target, f)
            if f.path.startswith("config/"):
                config_copy = target
        for ln in manifest.links:
            target = targets.of(ln.path)
            if target is None:
                continue
            make_dirs(target.parent)
            if os.path.lexists(target):
                os.unlink(target)
            os.symlink(ln.target, target)
        os.sync()
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise BackupError(f"restore failed half-way: {where}{e.strerror or e} "
                          "(fix it and run restore again with --force)") from None
    return RestoreResult(snapshot, len(manifest.files), config_copy)


def _drop_other_names(target: Path, seen: dict[Path, dict[str, tuple[str, str]]]) -> None:
    """Remove the files in the target folder that hold the same message under another name."""
    folder = target.parent.parent
    if folder not in seen:
        seen[folder] = list_messages(folder)
    base = split_name(target.name)[0]
    there = seen[folder].pop(base, None)
    if there is not None and folder / there[0] / there[1] != target:
        try:
            os.unlink(folder / there[0] / there[1])
        except FileNotFoundError:
            pass


def _place(src: Path, target: Path, entry: FileEntry) -> None:
    make_dirs(target.parent)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    digest = hashlib.sha256()
    with open(src, "rb", buffering=0) as inp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=False) as out:
                while chunk := inp.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        finally:
            os.close(fd)
    try:
        if digest.hexdigest() != entry.sha256:
            raise BackupError(f"{src} changed while it was restored: restore failed half-way "
                              "(run restore again with --force)")
        os.chmod(tmp, entry.mode & 0o777)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
