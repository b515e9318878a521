"""A per-folder cache of what FETCH ENVELOPE/BODY/BODYSTRUCTURE and SEARCH need.

Maildir message files never change once written (flags live in the name), so what is
derived from a file's content is keyed by its base name (the part before ``:2,``) and
is valid for ever. The cache is an SQLite file ``mailstack-index.sqlite`` in the folder
directory (next to ``dovecot-uidlist``; Dovecot ignores it), shared by every session and
process; a client that asks for ENVELOPEs of 100,000 messages twice reads the files once.

Invariants:
- It is only a cache: losing it, or finding it corrupt, costs a re-read, never a wrong
  answer or a failed command (a broken file is removed and rebuilt; any SQLite error
  falls back to parsing the message).
- Entries hold the wire form of ENVELOPE, BODY and BODYSTRUCTURE and the decoded
  top-level header fields (for SEARCH FROM/TO/SUBJECT/HEADER/SENT*); the message body
  text is not cached (SEARCH BODY/TEXT reads the file).
- Thread-safe: one connection per folder per process, used under a lock, in WAL mode
  with a busy timeout so several processes can write.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .message import ParsedMessage
from .responses import render_body_structure, render_envelope
from .search import decode_header_value

__all__ = ["Entry", "FolderIndex", "IndexCache", "entry_from_message", "INDEX_NAME"]

log = logging.getLogger(__name__)

INDEX_NAME = "mailstack-index.sqlite"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS msg (base TEXT PRIMARY KEY, envelope BLOB NOT NULL, body BLOB NOT NULL, "
    "bodystructure BLOB NOT NULL, headers TEXT NOT NULL)"
)


@dataclass(frozen=True)
class Entry:
    envelope: bytes
    body: bytes
    bodystructure: bytes
    headers: tuple[tuple[str, str], ...]


def entry_from_message(parsed: ParsedMessage) -> Entry:
    bs = parsed.body_structure()
    headers = tuple((f.name, decode_header_value(f.value)) for f in parsed.root.fields)
    return Entry(render_envelope(parsed.envelope()), render_body_structure(bs, False), render_body_structure(bs, True),
                 headers)


class FolderIndex:
    """The cache of one folder. ``get``/``put`` never raise."""

    def __init__(self, folder_path: Path) -> None:
        self.path = folder_path / INDEX_NAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        for attempt in range(2):
            try:
                db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")  # a cache: losing the tail is harmless
                db.execute(_SCHEMA)
                self._db = db
                return db
            except sqlite3.DatabaseError as e:
                log.warning("imap index %s unusable (%s): rebuilding it", self.path, e)
                for suffix in ("", "-wal", "-shm"):
                    try:
                        Path(str(self.path) + suffix).unlink()
                    except OSError:
                        pass
            except OSError as e:  # pragma: no cover - read-only folder and the like
                log.warning("imap index %s cannot be opened: %s", self.path, e)
                break
        self._broken = True
        return None

    def get(self, base: str) -> Entry | None:
        with self._lock:
            db = self._connect()
            if db is None:
                return None
            try:
                row = db.execute("SELECT envelope, body, bodystructure, headers FROM msg WHERE base = ?",
                                 (base,)).fetchone()
            except sqlite3.Error as e:
                log.warning("imap index %s: %s", self.path, e)
                return None
        if row is None:
            return None
        try:
            headers = tuple((str(n), str(v)) for n, v in json.loads(row[3]))
        except (ValueError, TypeError):
            return None
        return Entry(bytes(row[0]), bytes(row[1]), bytes(row[2]), headers)

    def put(self, base: str, entry: Entry) -> None:
        with self._lock:
            db = self._connect()
            if db is None:
                return
            try:
                db.execute("INSERT OR REPLACE INTO msg VALUES (?, ?, ?, ?, ?)",
                           (base, entry.envelope, entry.body, entry.bodystructure, json.dumps(entry.headers)))
            except sqlite3.Error as e:
                log.warning("imap index %s: %s", self.path, e)

    def entry(self, base: str, load: Callable[[], bytes]) -> Entry:
        """The cached entry, or one built from the message (``load`` reads it) and stored."""
        got = self.get(base)
        if got is None:
            got = entry_from_message(ParsedMessage(load()))
            self.put(base, got)
        return got

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class IndexCache:
    """Process-wide: one ``FolderIndex`` per folder path, the least recently used closed first."""

    def __init__(self, max_open: int = 64) -> None:
        self.max_open = max_open
        self._lock = threading.Lock()
        self._open: OrderedDict[Path, FolderIndex] = OrderedDict()

    def get(self, folder_path: Path) -> FolderIndex:
        with self._lock:
            idx = self._open.pop(folder_path, None)
            if idx is None:
                idx = FolderIndex(folder_path)
            self._open[folder_path] = idx
            while len(self._open) > self.max_open:
                _, old = self._open.popitem(last=False)
                old.close()
            return idx

    def close(self) -> None:
        with self._lock:
            for idx in self._open.values():
                idx.close()
            self._open.clear()
