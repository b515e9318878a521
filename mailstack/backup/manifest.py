"""The manifest of one backup snapshot: every file with its size and SHA-256.

``MANIFEST.json`` at the top of a snapshot lists every regular file (path relative to
the snapshot, size, SHA-256, mtime in ns, mode), every directory (mode) and every
symbolic link (its target, e.g. Pigeonhole's ``.dovecot.sieve``). The manifest checks
itself: ``checksum`` is the SHA-256 of the canonical JSON of everything else, so a
changed manifest is refused like a changed file.

Invariants:
- ``Manifest.from_bytes`` accepts only what ``to_bytes`` writes: the right format and
  version, a matching self-checksum, well-typed entries, and paths that stay inside the
  snapshot (relative, no ``..``, no empty component, no NUL) under a known area.
- Parsing does no I/O; reading and writing the file is the caller's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MANIFEST_NAME", "FORMAT", "VERSION", "AREAS", "ManifestError", "FileEntry", "DirEntry", "LinkEntry",
           "Manifest", "safe_path"]

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "mailstack-backup"
VERSION = 1
# The top folders of a snapshot (see backup.areas): nothing else may appear in a manifest.
AREAS = ("database", "maildirs", "queue", "dkim", "tls", "tls-certs", "acme", "config")


class ManifestError(Exception):
    """A manifest that cannot be trusted; ``str()`` is one line."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    mtime_ns: int
    mode: int


@dataclass(frozen=True)
class DirEntry:
    path: str
    mode: int


@dataclass(frozen=True)
class LinkEntry:
    path: str
    target: str


@dataclass(frozen=True)
class Manifest:
    created: str  # ISO 8601, UTC
    hostname: str  # the backed-up server's `hostname`
    mailstack_version: str
    database: str | None  # "sqlite" | "postgresql": the dump under database/
    parent: str | None  # the snapshot this one hard-links unchanged files from
    files: tuple[FileEntry, ...] = ()
    dirs: tuple[DirEntry, ...] = ()
    links: tuple[LinkEntry, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def _body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "hostname": self.hostname,
            "mailstack_version": self.mailstack_version,
            "database": self.database,
            "parent": self.parent,
            "extra": self.extra,
            "dirs": [asdict(d) for d in self.dirs],
            "links": [asdict(ln) for ln in self.links],
            "files": [asdict(f) for f in self.files],
        }

    def to_bytes(self) -> bytes:
        body = self._body()
        body["checksum"] = _checksum(body)
        return json.dumps(body, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ManifestError("the manifest is not valid JSON") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ManifestError("not a mailstack backup manifest")
        if body.get("version") != VERSION:
            raise ManifestError(f"manifest version {body.get('version')!r} is not {VERSION}")
        claimed = body.pop("checksum", None)
        if claimed != _checksum(body):
            raise ManifestError("the manifest does not match its own checksum (changed or damaged)")
        try:
            files = tuple(FileEntry(safe_path(f["path"]), _int(f["size"]), _sha(f["sha256"]), _int(f["mtime_ns"]),
                                    _int(f["mode"])) for f in body["files"])
            dirs = tuple(DirEntry(safe_path(d["path"]), _int(d["mode"])) for d in body["dirs"])
            links = tuple(LinkEntry(safe_path(ln["path"]), _str(ln["target"])) for ln in body["links"])
            manifest = cls(_str(body["created"]), _str(body["hostname"]), _str(body["mailstack_version"]),
                           _opt_str(body["database"]), _opt_str(body["parent"]), files, dirs, links,
                           dict(body.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"the manifest has a bad entry: {e}") from None
        seen: set[str] = set()
        for path in [f.path for f in files] + [ln.path for ln in links]:
            if path in seen:
                raise ManifestError(f"the manifest lists {path} twice")
            seen.add(path)
        return manifest


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{v!r} is not a count")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a string")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _sha(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError(f"{v!r} is not a SHA-256")
    return v


def safe_path(path: Any) -> str:
    """``path`` if it is a relative path inside a snapshot area, else ValueError."""
    if not isinstance(path, str) or not path or "\0" in path or path.startswith("/"):
        raise ValueError(f"unsafe path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] not in AREAS:
        raise ValueError(f"unsafe path {path!r}")
    return path
