"""A full-text index of message bodies: SEARCH BODY / TEXT without reading message files.

An SQLite file ``mailstack-fts.sqlite`` in each folder directory (next to the folder
index ``mailstack-index.sqlite``; Dovecot ignores both), shared by every session and
process in WAL mode (on a file system several hosts share, NFS or CephFS, a rollback
journal and no mmap instead: ``storage.fstype``). Per message base name (a Maildir file's content never changes, so
an entry is valid for ever) it keeps:

- ``doc``: the exact text that a scan compares a needle with (``fold_body``: the decoded
  text parts, ``search.body_text_of``, case-folded), zlib-compressed;
- ``body``: an FTS5 table over that text with the trigram tokenizer, contentless and
  ``detail=none`` (it says which documents hold a trigram, nothing more: small).

Semantics never change (RFC 3501 §6.4.4: BODY/TEXT are case-insensitive substring
matches over the decoded text). The trigram index is only a *candidate filter*: a text
that lacks one of the needle's trigrams cannot contain the needle; every candidate is
then confirmed exactly, ``needle in text`` over the stored text, the same comparison the
scan makes. A needle shorter than three characters has no trigram: every indexed
message is a candidate, still confirmed from the stored text, no file opened.

Kept in step at delivery, as Dovecot's fts with ``fts_autoindex``: ``Indexer`` (registered
by the runner as a ``storage.hooks`` hook when ``[imap] full_text_index`` is on) indexes
every message that LMTP, the MX, submission or APPEND stores, in its own thread, after the
delivery is acknowledged (it never slows or fails one; a full backlog is skipped, not
waited for). And lazily, for everything else (COPY, MOVE, mail written by another program,
an index deleted or rebuilt, a backlog that was skipped): a SEARCH that needs the body of
a message not yet in the index reads the file as before (same answer) and adds its text,
in batches, through a second connection; the next search finds it. An index that is
missing gives correct answers meanwhile, by scanning. Entries whose base name is no
longer in the folder (expunged) are removed at the end of a search.

Invariants:
- Each search reads one snapshot (a read transaction held for the whole search), so a
  document it counts as indexed has its trigrams and its text in what it reads, whatever
  other processes delete or add meanwhile.
- The stored text is produced by ``fold_body`` under ``FORMAT`` and the running Python's
  Unicode tables (``str.casefold``); an index written under another ``FORMAT`` or
  ``unicodedata.unidata_version`` is emptied and rebuilt, never trusted.
- Characters the tokenizer cannot take (NUL ends its C string; a lone surrogate has no
  UTF-8) are replaced one for one in the *indexed* copy only; trigrams of the needle that
  hold such a character are not used to filter. A replacement keeps every other trigram
  in place, so the filter never drops a message that matches.
- Nothing here raises: an SQLite error turns the index off for the rest of that search
  (it scans); a file SQLite calls corrupt or not a database is removed and rebuilt.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sqlite3
import threading
import unicodedata
import zlib
from collections.abc import Callable, Collection
from pathlib import Path

from mailstack.storage import fstype

from .message import ParsedMessage
from .search import body_text_of

__all__ = ["FTS_NAME", "FORMAT", "BodySearch", "Indexer", "fold_body", "trigram_query"]

log = logging.getLogger(__name__)

FTS_NAME = "mailstack-fts.sqlite"
FORMAT = 1  # bump when fold_body (or search.body_text_of) changes what a message's text is
TRIGRAM = 3  # the FTS5 trigram tokenizer's token length
MAX_TRIGRAMS = 32  # a longer needle filters on this many of its trigrams (spread over it)
BATCH_DOCS = 500  # new documents per write transaction ...
BATCH_BYTES = 8 * 1024 * 1024  # ... or this much text, whichever comes first
BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's write
MAX_OPEN_INDEXES = 32  # folder indexes the delivery-time indexer keeps open (file descriptors: 3 each, WAL)
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_UNTOKENIZABLE = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS doc (id INTEGER PRIMARY KEY, base TEXT NOT NULL UNIQUE, body BLOB NOT NULL)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS body USING fts5(text, tokenize='trigram case_sensitive 1', "
    "content='', detail=none)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def fold_body(data: bytes) -> str:
    """What SEARCH BODY compares a (case-folded) needle with: the decoded text parts of the
    message, case-folded (exactly ``search._Folded.body`` over ``body_text_of``)."""
    return body_text_of(ParsedMessage(data)).casefold()


def _version() -> str:
    return f"{FORMAT} unicode {unicodedata.unidata_version}"


def _indexed_copy(text: str) -> str:
    """The text as the tokenizer is given it: NUL and lone surrogates replaced one for one.

    ASCII text without NUL (most mail) is returned as it is: ``str.isascii`` reads a flag and
    ``in`` is a memchr, where the regex scan cost ~30 ns a character at every delivery."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNTOKENIZABLE.sub(_REPLACEMENT, text)


def _pack(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8", "surrogatepass"), 1)


def _unpack(blob: bytes) -> str:
    return zlib.decompress(blob).decode("utf-8", "surrogatepass")


def trigram_query(needle: str) -> str | None:
    """An FTS5 query that every text containing ``needle`` matches (an AND of its
    trigrams, each a quoted string), or None when the needle gives no usable trigram."""
    grams = sorted({needle[i : i + TRIGRAM] for i in range(len(needle) - TRIGRAM + 1)})
    grams = [g for g in grams if not _UNTOKENIZABLE.search(g)]
    if not grams:
        return None
    if len(grams) > MAX_TRIGRAMS:  # a subset still only drops texts that cannot match
        step = len(grams) / MAX_TRIGRAMS
        grams = [grams[int(i * step)] for i in range(MAX_TRIGRAMS)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


def _is_corrupt(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorname", "") in _CORRUPT


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            Path(str(path) + suffix).unlink()
        except OSError:
            pass


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
    try:
        if not fstype.open_sqlite_mode(db, path):  # WAL on a local disk, a rollback journal on NFS/CephFS
            raise sqlite3.OperationalError(f"{path}: cannot leave WAL mode while another host uses it")
        db.execute("PRAGMA synchronous=OFF")  # a cache: losing the tail costs a re-read, nothing else
        row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() if _has_meta(db) else None
        if row is None or row[0] != _version():
            _prepare(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _has_meta(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or empty them when written under another format (see module doc)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _SCHEMA:
            db.execute(stmt)
        row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is None or row[0] != _version():
            if row is not None:
                log.info("imap fts index %s: format %r, want %r: rebuilding", path, row[0], _version())
            db.execute("DELETE FROM doc")
            db.execute("INSERT INTO body(body) VALUES ('delete-all')")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (_version(),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class BodySearch:
    """One SEARCH's use of a folder's full-text index.

    ``bases`` are the base names of the folder's messages as the search sees them (used to
    find the entries of expunged messages). Call ``contains`` for each BODY/TEXT test and
    ``close`` at the end (it writes what was learnt and drops the expunged entries)."""

    def __init__(self, folder_path: Path, bases: Collection[str]) -> None:
        self.path = folder_path / FTS_NAME
        self._bases = bases
        self._reader: sqlite3.Connection | None = None
        self._known: dict[str, int] = {}
        self._stale: list[int] = []
        self._candidates: dict[str, frozenset[int] | None] = {}
        self._pending: list[tuple[str, str]] = []
        self._pending_bytes = 0
        self._queued: set[str] = set()
        self._last: tuple[str, str] | None = None  # one message's text for its other keys
        self.read_files = 0  # messages whose file this search had to read
        self._open()

    # -- reading ------------------------------------------------------------------------
    def _open(self) -> None:
        for _attempt in range(2):
            try:
                db = _connect(self.path)
            except sqlite3.Error as e:
                if _is_corrupt(e):
                    log.warning("imap fts index %s is corrupt (%s): rebuilding it", self.path, e)
                    _remove(self.path)
                    continue
                log.warning("imap fts index %s unusable: %s", self.path, e)
                return
            except OSError as e:  # pragma: no cover - a folder we may not write to
                log.warning("imap fts index %s cannot be opened: %s", self.path, e)
                return
            try:
                db.execute("BEGIN")  # one snapshot for the whole search (see module doc)
                row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
                if row is None or row[0] != _version():  # rebuilt meanwhile by another format
                    db.close()
                    return
                known: dict[str, int] = {}
                stale: list[int] = []
                for i, base in db.execute("SELECT id, base FROM doc"):
                    if base in self._bases:
                        known[base] = i
                    else:
                        stale.append(i)
            except sqlite3.Error as e:
                db.close()
                if _is_corrupt(e):
                    log.warning("imap fts index %s is corrupt (%s): rebuilding it", self.path, e)
                    _remove(self.path)
                    continue
                log.warning("imap fts index %s: %s", self.path, e)
                return
            self._reader, self._known, self._stale = db, known, stale
            return

    def _fail(self, e: sqlite3.Error) -> None:
        """The index is no use for the rest of this search: scan instead."""
        log.warning("imap fts index %s: %s; scanning instead", self.path, e)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._known = {}
        self._stale = []
        if _is_corrupt(e):
            _remove(self.path)

    def _candidate_ids(self, needle: str) -> frozenset[int] | None:
        """The documents that hold every usable trigram of ``needle``; None: no filter."""
        if needle in self._candidates:
            return self._candidates[needle]
        query = trigram_query(needle)
        got: frozenset[int] | None = None
        if query is not None and self._reader is not None:
            try:
                got = frozenset(r for (r,) in self._reader.execute("SELECT rowid FROM body WHERE body MATCH ?",
                                                                     (query,)))
            except sqlite3.Error as e:
                self._fail(e)
                return None
        self._candidates[needle] = got
        return got

    def _stored_text(self, doc: int) -> str | None:
        assert self._reader is not None
        try:
            row = self._reader.execute("SELECT body FROM doc WHERE id = ?", (doc,)).fetchone()
        except sqlite3.Error as e:
            self._fail(e)
            return None
        if row is None:
            return None
        try:
            return _unpack(bytes(row[0]))
        except (zlib.error, UnicodeDecodeError) as e:
            log.warning("imap fts index %s: entry %d unreadable (%s)", self.path, doc, e)
            return None

    def may_contain(self, base: str, needle: str) -> bool:
        """False only when the index shows that message ``base`` lacks ``needle`` (case-folded);
        lets a search skip it before anything else is looked at."""
        doc = self._known.get(base)
        if doc is None or self._reader is None:
            return True
        ids = self._candidate_ids(needle)
        return ids is None or doc in ids

    def contains(self, base: str, needle: str, load: Callable[[], bytes | None]) -> bool:
        """Whether the body text of message ``base`` contains ``needle`` (already
        case-folded). ``load`` reads the message file (None: it is gone, matched as empty);
        it is called only when the index does not know the message."""
        if not needle:
            return True  # the empty string is in every text
        if self._last is not None and self._last[0] == base:
            return needle in self._last[1]
        doc = self._known.get(base)
        if doc is not None and self._reader is not None:
            ids = self._candidate_ids(needle)
            if self._reader is not None:  # still usable (the query may have failed)
                if ids is not None and doc not in ids:
                    return False
                text = self._stored_text(doc)
                if text is not None:
                    self._last = (base, text)
                    return needle in text
        data = load()
        self.read_files += 1
        text = fold_body(data) if data is not None else ""
        self._last = (base, text)
        if data is not None and base not in self._known and base not in self._queued:
            self._queue(base, text)
        return needle in text

    # -- writing ------------------------------------------------------------------------
    def _queue(self, base: str, text: str) -> None:
        self._queued.add(base)
        self._pending.append((base, text))
        self._pending_bytes += len(text)
        if len(self._pending) >= BATCH_DOCS or self._pending_bytes >= BATCH_BYTES:
            self._flush()

    def _write(self, work: Callable[[sqlite3.Connection], None]) -> None:
        try:
            db = _connect(self.path)
        except (sqlite3.Error, OSError) as e:
            log.warning("imap fts index %s: cannot write: %s", self.path, e)
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            work(db)
            db.execute("COMMIT")
        except sqlite3.Error as e:  # a cache: what is not written is read again next time
            log.warning("imap fts index %s: write failed: %s", self.path, e)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        finally:
            db.close()

    def _flush(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return

        def add(db: sqlite3.Connection) -> None:
            for base, text in pending:
                cur = db.execute("INSERT OR IGNORE INTO doc (base, body) VALUES (?, ?)", (base, _pack(text)))
                if cur.rowcount == 1:  # not added meanwhile by another session or process
                    db.execute("INSERT INTO body (rowid, text) VALUES (?, ?)", (cur.lastrowid, _indexed_copy(text)))

        self._write(add)

    def _drop_stale(self) -> None:
        stale, self._stale = self._stale, []
        if not stale:
            return

        def drop(db: sqlite3.Connection) -> None:
            for doc in stale:
                row = db.execute("SELECT body FROM doc WHERE id = ?", (doc,)).fetchone()
                if row is None:  # dropped meanwhile by someone else
                    continue
                try:
                    text = _unpack(bytes(row[0]))
                except (zlib.error, UnicodeDecodeError):
                    # cannot tell FTS5 which trigrams to forget: start the index afresh
                    db.execute("DELETE FROM doc")
                    db.execute("INSERT INTO body(body) VALUES ('delete-all')")
                    return
                # a contentless table forgets a row given the very text it indexed
                db.execute("INSERT INTO body (body, rowid, text) VALUES ('delete', ?, ?)", (doc, _indexed_copy(text)))
                db.execute("DELETE FROM doc WHERE id = ?", (doc,))

        self._write(drop)

    def close(self) -> None:
        """End the snapshot, write the new entries, forget the expunged ones."""
        if self._reader is not None:
            try:
                self._reader.close()
            except sqlite3.Error:
                pass
            self._reader = None
        self._flush()
        self._drop_stale()


def _add_documents(path: Path, docs: list[tuple[str, str]], db: sqlite3.Connection) -> bool:
    """Write ``(base, folded text)`` entries to the index at ``path`` (missing ones only) through
    ``db``, left open; False when the write failed (the caller drops ``db``)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        for base, text in docs:
            cur = db.execute("INSERT OR IGNORE INTO doc (base, body) VALUES (?, ?)", (base, _pack(text)))
            if cur.rowcount == 1:
                db.execute("INSERT INTO body (rowid, text) VALUES (?, ?)", (cur.lastrowid, _indexed_copy(text)))
        db.execute("COMMIT")
        return True
    except sqlite3.Error as e:  # a cache: a search indexes what is missing
        log.warning("imap fts index %s: write failed: %s", path, e)
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return False


class _Connections:
    """The indexer thread's open index files, at most ``MAX_OPEN_INDEXES`` (least recently used
    closed first). Opening one (connect, WAL pragma, format check) cost as much as indexing a
    5 KB message, at every delivery. A file replaced or removed meanwhile (another process
    rebuilt a corrupt index) is noticed by its inode and opened afresh."""

    def __init__(self) -> None:
        self._open: dict[Path, tuple[sqlite3.Connection, int]] = {}
        self.opened = 0

    def get(self, path: Path) -> sqlite3.Connection:
        hit = self._open.pop(path, None)
        if hit is not None:
            db, ino = hit
            try:
                same = os.stat(path).st_ino == ino
            except OSError:
                same = False
            if same:
                self._open[path] = hit  # most recent last
                return db
            db.close()
        db = _connect(path)
        self.opened += 1
        try:
            ino = os.stat(path).st_ino
        except OSError:
            db.close()
            raise
        self._open[path] = (db, ino)
        while len(self._open) > MAX_OPEN_INDEXES:
            oldest = next(iter(self._open))
            self._open.pop(oldest)[0].close()
        return db

    def drop(self, path: Path) -> None:
        hit = self._open.pop(path, None)
        if hit is not None:
            hit[0].close()

    def close(self) -> None:
        for db, _ino in self._open.values():
            db.close()
        self._open.clear()


class Indexer:
    """Indexes stored messages in a background thread (a ``storage.hooks`` hook).

    ``__call__`` only queues (at most ``backlog`` messages; beyond that a message is left
    to the lazy path, with one log line per overflow episode); the thread folds each text
    and writes them per folder in one transaction per batch, through the folder indexes it keeps
open (``_Connections``). ``close`` drains and stops it.
    """

    def __init__(self, backlog: int = 2000) -> None:
        self._queue: queue.Queue[tuple[Path, str, bytes] | None] = queue.Queue(maxsize=backlog)
        self._overflowing = False
        self.indexed = 0  # for tests and metrics
        self._dbs = _Connections()  # used by the indexer thread only
        self._thread = threading.Thread(target=self._run, name="imap-fts-indexer", daemon=True)
        self._thread.start()

    def __call__(self, folder_dir: Path, base: str, data: bytes) -> None:
        try:
            self._queue.put_nowait((folder_dir, base, data))
            self._overflowing = False
        except queue.Full:
            if not self._overflowing:
                log.warning("imap fts: indexing backlog full; new mail is indexed at its first search")
                self._overflowing = True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while item is not None and len(batch) < BATCH_DOCS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            by_folder: dict[Path, list[tuple[str, str]]] = {}
            stop = False
            for entry in batch:
                if entry is None:
                    stop = True
                    continue
                folder_dir, base, data = entry
                try:
                    text = fold_body(data)
                except Exception:  # a message we cannot fold is read at search time, as before
                    log.exception("imap fts: cannot index %s in %s", base, folder_dir)
                    continue
                by_folder.setdefault(folder_dir, []).append((base, text))
            for folder_dir, docs in by_folder.items():
                path = folder_dir / FTS_NAME
                try:
                    db = self._dbs.get(path)
                except (sqlite3.Error, OSError) as e:
                    if isinstance(e, sqlite3.Error) and _is_corrupt(e):
                        _remove(path)
                    log.warning("imap fts index %s: cannot write: %s", path, e)
                    continue
                if not _add_documents(path, docs, db):
                    self._dbs.drop(path)
                    continue
                self.indexed += len(docs)
            for _ in batch:
                self._queue.task_done()
            if stop:
                self._dbs.close()
                return

    @property
    def indexes_opened(self) -> int:
        """How many times an index file was opened (tests; each costs a connect and checks)."""
        return self._dbs.opened

    def drain(self) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
