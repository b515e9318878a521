"""A per-folder cache of what FETCH ENVELOPE/BODY/BODYSTRUCTURE and SEARCH need.

Maildir message files never change once written (flags live in the name), so what is
derived from a file's content is keyed by its base name (the part before ``:2,``) and
is valid for ever. The cache is an SQLite file ``mailstack-index.sqlite`` in the folder
directory (next to ``dovecot-uidlist``; Dovecot ignores it), shared by every session and
process; a client that asks for ENVELOPEs of 100,000 messages twice reads the files once.

Invariants:
- The ``msg`` table is only a cache: losing it, or finding it corrupt, costs a re-read,
  never a wrong answer or a failed command (a broken file is removed and rebuilt; any SQLite error
  falls back to parsing the message).
- Entries hold the wire form of ENVELOPE, BODY and BODYSTRUCTURE and the decoded
  top-level header fields (for SEARCH FROM/TO/SUBJECT/HEADER/SENT*); the message body
  text is not cached (SEARCH BODY/TEXT reads the file).
- Thread-safe: one connection per folder per process, used under a lock, in WAL mode
  with a busy timeout so several processes can write.
- Several hosts: on a network or cluster file system (NFS, CephFS, ...: ``storage.fstype``)
  the file uses a rollback journal and no mmap instead of WAL, whose shared-memory
  ``-shm`` cannot be shared between hosts; its state is then serialized by fcntl locks
  that the file server arbitrates. A file another host still holds in WAL mode is not
  used until it can be switched (the callers' fallbacks: parse the message, state in
  memory). Alternative considered, for a later step: the non-cache state (modseq,
  meta, vanished, savedate) in PostgreSQL tables when the directory is PostgreSQL and the
  cache host-local (docs/on-disk.md, "Several hosts").

The same file also keeps the folder's IMAP state that is *not* a cache (``reconcile``,
``record``, ``claim_recent``): per-message MODSEQ, the HIGHESTMODSEQ (RFC 7162 §3.1), the last
UID claimed as ``\\Recent`` (RFC 3501 §2.3.2). Those writes run in ``BEGIN IMMEDIATE``
transactions with ``synchronous=FULL`` (the cache rows stay ``OFF``), so concurrent
sessions and processes serialize on them and a commit survives a crash.

Modseq invariants (RFC 7162 §3.1.1: HIGHESTMODSEQ never goes backwards for one
UIDVALIDITY):
- Changes are found by comparison, not by being told: ``reconcile(state)`` compares the
  flags storage reports with the flags the index remembers per UID; a message whose
  flags differ, a new UID and a vanished UID each bump HIGHESTMODSEQ (one new value per
  reconcile, shared by every message changed in it). So changes made by POP3, the MDA,
  another process or a Dovecot on the same Maildir get new modseqs at the next sync.
- Floor: a tiny file ``mailstack-modseq`` next to the index holds a ceiling that every
  modseq handed out stays at or below; it is raised (``safeio.write_durable``) in steps
  of ``MODSEQ_BLOCK`` before a modseq would pass it, so it costs one fsync per
  ``MODSEQ_BLOCK`` changes. When the index is lost or rebuilt, modseqs restart *above*
  that ceiling, hence above anything a client could have seen. (Chosen over a clock:
  no dependence on the system time never going back.)
- The ``\\Recent`` claim is not protected by the floor: losing the index makes the
  folder's messages recent once more (harmless; RFC 3501 lets a server be generous).

Expunge records, for QRESYNC's ``VANISHED (EARLIER)`` (RFC 7162 §3.2.5.1, §3.2.6):
- Each reconcile that finds UIDs gone writes one ``vanished`` row: its new modseq and the
  UIDs as ranges (``uidranges``). "Gone" is both the UIDs the index knew that storage no
  longer lists and the UIDs that came and went between two reconciles (never listed by
  any): those below the folder's UIDNEXT, at or above the UIDNEXT the last reconcile saw
  (``meta.uidnext``), that storage does not list. So every UID expunged after the state a
  modseq names is in a row with a higher modseq, whoever expunged it (IMAP, POP3, Dovecot).
- ``meta.vanishedfrom`` (V): the rows are complete for every modseq >= V. A new or lost
  index, an index from before this table, a new UIDVALIDITY all start tracking at the
  reconcile that finds ``uidnext`` unknown; V is then the modseq that reconcile hands out
  (or the one after the current, when it hands out none). For a modseq below V,
  ``expunged_since`` answers None and the caller falls back to the conservative answer
  RFC 7162 §3.2.5.2 allows (every UID the client may know of that no longer exists), which
  is never wrong; after an index loss every modseq a client holds is below the floor, so
  below V.
- Bounded: at most ``VANISHED_KEEP_ROWS`` rows and ``VANISHED_KEEP_BYTES`` of UID-set text;
  the oldest rows beyond go, and V rises to the newest modseq dropped.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mailstack.storage import FolderState, MessageInfo, fstype
from mailstack.storage.safeio import write_durable

from . import uidranges
from .message import ParsedMessage
from .responses import render_body_structure, render_envelope
from .search import decode_header_value

__all__ = ["Entry", "FolderIndex", "IndexCache", "entry_from_message", "INDEX_NAME", "FLOOR_NAME", "MODSEQ_BLOCK",
           "VANISHED_KEEP_ROWS", "VANISHED_KEEP_BYTES"]

log = logging.getLogger(__name__)

INDEX_NAME = "mailstack-index.sqlite"
FLOOR_NAME = "mailstack-modseq"
MODSEQ_BLOCK = 4096  # modseqs handed out per durable write of the floor file
VANISHED_KEEP_ROWS = 1000  # reconciles with expunges remembered per folder (QRESYNC)
VANISHED_KEEP_BYTES = 1 << 20  # UID-set text remembered per folder; older expunges: conservative answer
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS msg (base TEXT PRIMARY KEY, envelope BLOB NOT NULL, body BLOB NOT NULL, "
    "bodystructure BLOB NOT NULL, headers TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS modseq (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL, flags TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS vanished (modseq INTEGER PRIMARY KEY, uids TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS savedate (base TEXT PRIMARY KEY, t REAL NOT NULL)",  # RFC 8514
)


def _flag_key(info: MessageInfo) -> frozenset[str]:
    return info.flags | info.keywords if info.keywords else info.flags


def _flag_text(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


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
        # modseq state, a per-process copy of the ``modseq`` / ``meta`` tables
        self._mod: dict[int, tuple[int, frozenset[str]]] = {}
        self._highest = 0  # 0: not loaded yet
        self._uidvalidity = 0
        self._ceiling = 0
        self._recent_uid = 0
        self._uidnext = 0  # UIDNEXT at the last reconcile; 0: expunge tracking not started
        self._vanished_from = 0  # expunge records complete for modseqs >= this (0: none)

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        for attempt in range(2):
            try:
                db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
                if not fstype.open_sqlite_mode(db, self.path):
                    db.close()
                    return None  # not usable in a safe mode now (another host holds it in WAL): try again later
                db.execute("PRAGMA synchronous=OFF")  # a cache: losing the tail is harmless
                for stmt in _SCHEMA:
                    db.execute(stmt)
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

    def save_time(self, base: str, first_sight: Callable[[], float | None]) -> float | None:
        """RFC 8514 save date of a message whose file name tells none: the value kept for
        ``base``, else ``first_sight()`` (the file's ctime), kept from now on and never
        changed (the first writer wins across sessions and processes). Without a usable
        index, ``first_sight()`` each time."""
        with self._lock:
            db = self._connect()
            if db is not None:
                try:
                    row = db.execute("SELECT t FROM savedate WHERE base = ?", (base,)).fetchone()
                    if row is not None:
                        return float(row[0])
                except sqlite3.Error as e:
                    log.warning("imap index %s: %s", self.path, e)
                    db = None
            t = first_sight()
            if t is None or db is None:
                return t
            try:
                db.execute("INSERT OR IGNORE INTO savedate VALUES (?, ?)", (base, t))
                row = db.execute("SELECT t FROM savedate WHERE base = ?", (base,)).fetchone()
            except sqlite3.Error as e:
                log.warning("imap index %s: %s", self.path, e)
                return t
            return float(row[0]) if row is not None else t

    def entry(self, base: str, load: Callable[[], bytes]) -> Entry:
        """The cached entry, or one built from the message (``load`` reads it) and stored."""
        got = self.get(base)
        if got is None:
            got = entry_from_message(ParsedMessage(load()))
            self.put(base, got)
        return got

    # -- modseq and \\Recent state (RFC 7162, RFC 3501 §2.3.2) ----------------------------
    @property
    def floor_path(self) -> Path:
        return self.path.parent / FLOOR_NAME

    def _read_floor(self) -> int:
        try:
            return int(self.floor_path.read_text("ascii").split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def _begin(self) -> sqlite3.Connection | None:
        """Start a write transaction (other processes wait) and refresh the copy if stale."""
        db = self._connect()
        if db is not None:
            try:
                db.execute("PRAGMA synchronous=FULL")
                db.execute("BEGIN IMMEDIATE")
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.Error as e:
                log.warning("imap index %s: %s", self.path, e)
                self._rollback(db)
                if self._highest == 0:
                    self._highest = max(self._read_floor(), 1)
                    self._ceiling = self._highest
                return None
            highest = int(meta.get("highestmodseq", 0))
            if highest == 0:  # a new (or lost) index: start above anything ever handed out
                floor = self._read_floor()
                highest = max(floor, self._highest, 1)
                self._mod.clear()
                self._uidvalidity = int(meta.get("uidvalidity", 0))
                self._ceiling = floor
                self._recent_uid = 0
                self._uidnext = self._vanished_from = 0
            elif highest != self._highest or int(meta.get("uidvalidity", 0)) != self._uidvalidity:
                self._mod = {int(u): (int(m), frozenset(f.split()) if f else frozenset())
                             for u, m, f in db.execute("SELECT uid, modseq, flags FROM modseq")}
                self._uidvalidity = int(meta.get("uidvalidity", 0))
                self._ceiling = int(meta.get("ceiling", 0))
            self._highest = max(highest, self._highest)  # memory ahead only after a failed commit
            self._recent_uid = int(meta.get("recentuid", self._recent_uid))
            if highest:
                self._uidnext = int(meta.get("uidnext", 0))
                self._vanished_from = int(meta.get("vanishedfrom", 0))
            return db
        if self._highest == 0:  # no usable index: keep the state in memory, floor still honoured
            self._highest = max(self._read_floor(), 1)
            self._ceiling = self._highest
        return None

    def _commit(self, db: sqlite3.Connection | None, rows: dict[int, tuple[int, frozenset[str]]],
                gone: Iterable[int], vanished: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Write the changes and ``_meta()`` (after ``vanished``, which may move it) and commit."""
        if db is None:
            return
        try:
            db.executemany("DELETE FROM modseq WHERE uid = ?", ((u,) for u in gone))
            db.executemany("INSERT OR REPLACE INTO modseq VALUES (?, ?, ?)",
                           ((u, m, _flag_text(f)) for u, (m, f) in rows.items()))
            if vanished is not None:
                vanished(db)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self._meta().items())
            db.execute("COMMIT")
        except sqlite3.Error as e:
            log.warning("imap index %s: %s", self.path, e)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        finally:
            try:
                db.execute("PRAGMA synchronous=OFF")
            except sqlite3.Error:
                pass

    def _rollback(self, db: sqlite3.Connection | None) -> None:
        if db is None:
            return
        for stmt in ("ROLLBACK", "PRAGMA synchronous=OFF"):
            try:
                db.execute(stmt)
            except sqlite3.Error:
                pass

    def _next_modseq(self) -> int:
        """A new HIGHESTMODSEQ, the floor file raised first when it would pass it."""
        new = self._highest + 1
        if new > self._ceiling:
            ceiling = new + MODSEQ_BLOCK
            try:
                write_durable(self.floor_path, b"%d\n" % ceiling, 0o600)
            except OSError as e:  # pragma: no cover - read-only folder and the like
                log.warning("imap: cannot write %s: %s", self.floor_path, e)
            self._ceiling = ceiling
        self._highest = new
        return new

    def _meta(self) -> dict[str, int]:
        return {"highestmodseq": self._highest, "uidvalidity": self._uidvalidity, "ceiling": self._ceiling,
                "recentuid": self._recent_uid, "uidnext": self._uidnext, "vanishedfrom": self._vanished_from}

    def _new_validity(self, uidvalidity: int) -> list[int]:
        """RFC 3501 §2.3.1.1: other UIDs, start over (HIGHESTMODSEQ still only grows).
        Returns the UIDs to forget."""
        if uidvalidity == self._uidvalidity:
            return []
        gone = list(self._mod)
        self._mod = {}
        self._uidvalidity = uidvalidity
        self._recent_uid = 0
        self._uidnext = self._vanished_from = 0  # expunge records start over (reconcile)
        return gone

    def reconcile(self, state: FolderState) -> int:
        """Compare a freshly synced state with the remembered flags; new modseqs for what
        differs (arrivals, flag changes, expunges, by anyone). Returns HIGHESTMODSEQ."""
        with self._lock:
            db = self._begin()
            reset = state.uidvalidity != self._uidvalidity
            gone_all = self._new_validity(state.uidvalidity)
            mod = self._mod
            changed: list[tuple[int, frozenset[str]]] = []
            for m in state.messages:
                key = _flag_key(m)
                old = mod.get(m.uid)
                if old is None or old[1] != key:
                    changed.append((m.uid, key))
            gone = gone_all
            if len(mod) + len(changed) > len(state.messages) or gone_all:
                present = {m.uid for m in state.messages}
                gone = gone_all + [u for u in mod if u not in present]
            tracking = self._uidnext > 0  # False after _new_validity too
            vanished: uidranges.Ranges = []
            if tracking:  # RFC 7162 §3.2.5.1: remember what went, with the modseq of now
                vanished = uidranges.from_sorted(sorted(gone))
                if state.uidnext > self._uidnext:  # came and went since the last reconcile
                    fresh = uidranges.gaps([(self._uidnext, state.uidnext - 1)], [m.uid for m in state.messages])
                    vanished = uidranges.normalize(vanished + fresh)
            uidnext = max(state.uidnext, self._uidnext if tracking else 0)
            if not changed and not gone and not vanished:
                if reset or uidnext != self._uidnext:
                    if not tracking:
                        self._vanished_from = self._highest + 1
                    self._uidnext = uidnext
                    self._commit(db, {}, (), None if tracking else self._clear_vanished)
                else:
                    self._rollback(db)
                return self._highest
            new = self._next_modseq()
            rows = {u: (new, key) for u, key in changed}
            for u in gone:
                mod.pop(u, None)
            mod.update(rows)
            self._uidnext = uidnext
            if not tracking:
                self._vanished_from = new
                self._commit(db, rows, gone, self._clear_vanished)
            elif vanished:
                text = uidranges.render(vanished)
                self._commit(db, rows, gone, lambda d: self._add_vanished(d, new, text))
            else:
                self._commit(db, rows, gone)
            return self._highest

    def record(self, infos: Iterable[MessageInfo]) -> int:
        """This process changed these messages (their state as storage returned it): one new
        modseq for those whose flags differ. Returns the modseq now current (HIGHESTMODSEQ)."""
        with self._lock:
            db = self._begin()
            rows = {i.uid: _flag_key(i) for i in infos}
            rows = {u: k for u, k in rows.items() if u in self._mod and self._mod[u][1] != k}
            if not rows:
                self._rollback(db)
                return self._highest
            new = self._next_modseq()
            out = {u: (new, k) for u, k in rows.items()}
            self._mod.update(out)
            self._commit(db, out, ())
            return new

    @staticmethod
    def _clear_vanished(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM vanished")  # tracking starts (over): older rows mean nothing

    def _add_vanished(self, db: sqlite3.Connection, modseq: int, text: str) -> None:
        """One row of expunged UIDs; the oldest rows beyond the bounds go, V rises."""
        db.execute("INSERT OR REPLACE INTO vanished VALUES (?, ?)", (modseq, text))
        total = 0
        for i, (m, n) in enumerate(db.execute("SELECT modseq, length(uids) FROM vanished ORDER BY modseq DESC")
                                   .fetchall()):
            total += int(n)
            if i >= VANISHED_KEEP_ROWS or total > VANISHED_KEEP_BYTES:
                db.execute("DELETE FROM vanished WHERE modseq <= ?", (m,))
                self._vanished_from = max(self._vanished_from, int(m))
                break

    def expunged_since(self, uidvalidity: int, modseq: int) -> uidranges.Ranges | None:
        """The UIDs expunged after the state ``modseq`` names (RFC 7162 §3.2.5.1, §3.2.6), as
        the last reconcile found them; None when the index cannot tell (records pruned, or
        started after ``modseq``: a new, lost or unusable index, another UIDVALIDITY): the
        caller then answers conservatively (RFC 7162 §3.2.5.2)."""
        with self._lock:
            db = self._connect()
            if db is None:
                return None
            try:
                db.execute("BEGIN")  # one snapshot for meta and rows
                meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('uidvalidity', 'vanishedfrom')")
                            .fetchall())
                since = int(meta.get("vanishedfrom", 0))
                if int(meta.get("uidvalidity", 0)) != uidvalidity or since == 0 or modseq < since:
                    return None
                texts = [str(t) for (t,) in db.execute("SELECT uids FROM vanished WHERE modseq > ?", (modseq,))]
            except sqlite3.Error as e:
                log.warning("imap index %s: %s", self.path, e)
                return None
            finally:
                try:
                    db.execute("COMMIT")
                except sqlite3.Error:
                    pass
        try:
            return uidranges.normalize(r for t in texts for r in uidranges.parse(t))
        except ValueError as e:
            log.warning("imap index %s: bad expunge record (%s): answering conservatively", self.path, e)
            return None

    def modseq(self, uid: int) -> int:
        """The last modseq of a message (as of the last ``reconcile``/``record``)."""
        got = self._mod.get(uid)
        return got[0] if got is not None else max(self._highest, 1)

    @property
    def highest(self) -> int:
        return max(self._highest, 1)

    def claim_recent(self, uidvalidity: int, max_uid: int, claim: bool) -> int:
        """RFC 3501 §2.3.2: UIDs above the returned value are recent for the caller; with
        ``claim`` they are taken (no other session will see them as recent)."""
        with self._lock:
            db = self._begin()
            reset = uidvalidity != self._uidvalidity
            gone = self._new_validity(uidvalidity)
            before = self._recent_uid
            if (claim and max_uid > before) or reset:
                self._recent_uid = max(before, max_uid) if claim else before
                self._commit(db, {}, gone, self._clear_vanished if reset else None)
            else:
                self._rollback(db)
            return before

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class IndexCache:
    """Process-wide: one ``FolderIndex`` per folder path, the least recently used closed first.
    ``full_text``: SEARCH BODY/TEXT use the folders' full-text indexes (``imap.fts``)."""

    def __init__(self, max_open: int = 64, full_text: bool = True) -> None:
        self.max_open = max_open
        self.full_text = full_text
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
