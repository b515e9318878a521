"""The failed-login throttle: failure counts per key, blocks that grow, behind a tiny store.

A key is an account (``acct:alice@example.test``) or a client network
(``net:192.0.2.0/24``), see ``keys``. The policy (``ThrottlePolicy``), like Dovecot's
``auth_penalty`` with fail2ban's growing ban time:

- every failed login adds one failure to the account's key and to the network's key;
- a key with ``max_failures`` failures is *blocked* for ``block_time`` seconds; each
  further failure of that key (possible only after the block ends, or by attempts that
  were already being checked when it started) doubles the block, up to
  ``max_block_time``;
- while a key is blocked, attempts on it are refused at once, right password or not,
  without hashing anything;
- a key is forgotten ``failure_window`` seconds after its last failure and the end of its
  block, whichever is later;
- a successful login clears the account's key, never the network's (one valid account
  must not whitewash a network that guesses at others).

Stores (``ThrottleStore``): ``DirectoryThrottleStore``, the default, keeps the records in
the directory database (table ``auth_failures``), so every process and every host that
shares the directory shares the counts, and restarting or adding processes does not reset
an attacker's delay (one write transaction per failure, exact on SQLite and PostgreSQL:
``Directory.throttle_update``); ``SQLiteThrottleStore``, a small SQLite file of its own
(``[auth] state_file``: for a host that wants the throttle's writes off the directory
database; WAL, ``BEGIN IMMEDIATE`` for each read-modify-write); ``MemoryThrottleStore``
for a directory that lives in memory only (tests, ``sqlite://``), bounded to ``max_keys``
keys. All are synchronous and not thread-safe: ``mailstack.auth.service`` calls them from
one thread.
Time is wall-clock seconds (``time.time``), the only clock processes share.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mailstack.directory import Directory

__all__ = [
    "Block",
    "DirectoryThrottleStore",
    "MemoryThrottleStore",
    "Record",
    "SQLiteThrottleStore",
    "ThrottlePolicy",
    "ThrottleStore",
    "next_record",
]


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How many failures block a key, for how long, and when a key is forgotten."""

    max_failures: int = 5
    failure_window: float = 300.0
    block_time: float = 60.0
    max_block_time: float = 900.0

    def block_for(self, failures: int) -> float:
        """Seconds of block after ``failures`` failures (0 below the threshold)."""
        excess = failures - self.max_failures
        if excess < 0:
            return 0.0
        return float(min(self.max_block_time, self.block_time * 2 ** min(excess, 30)))


@dataclass(frozen=True, slots=True)
class Record:
    """What a store keeps per key."""

    failures: int
    last_failure: float
    blocked_until: float

    def expired(self, now: float, window: float) -> bool:
        return now - max(self.last_failure, self.blocked_until) > window


@dataclass(frozen=True, slots=True)
class Block:
    """A blocked key: refused until ``until`` (wall-clock seconds)."""

    key: str
    failures: int
    until: float


def next_record(old: Record | None, now: float, policy: ThrottlePolicy) -> Record:
    """The record of a key after one more failure at ``now``."""
    live = old is not None and not old.expired(now, policy.failure_window)
    failures = old.failures + 1 if live and old is not None else 1
    block = policy.block_for(failures)
    previous = old.blocked_until if live and old is not None else 0.0
    return Record(failures, now, max(previous, now + block) if block else previous)


class ThrottleStore(Protocol):
    """Where failure records live; see the module docstring."""

    def blocked(self, keys: Sequence[str], now: float) -> Block | None:
        """The longest block among ``keys`` at ``now``, or None."""
        ...

    def failure(self, keys: Sequence[str], now: float) -> list[Block]:
        """Count one failure on each key; the blocks this failure started or lengthened."""
        ...

    def success(self, key: str) -> None:
        """Forget a key (the account of a successful login)."""
        ...

    def close(self) -> None: ...


class MemoryThrottleStore:
    """Records in a dict of at most ``max_keys`` keys (least recently failed dropped first).

    Only for a directory that is itself in memory: it is not shared between processes.
    """

    def __init__(self, policy: ThrottlePolicy, max_keys: int = 100_000) -> None:
        self.policy = policy
        self.max_keys = max_keys
        self._records: OrderedDict[str, Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _get(self, key: str, now: float) -> Record | None:
        rec = self._records.get(key)
        if rec is not None and rec.expired(now, self.policy.failure_window):
            del self._records[key]
            return None
        return rec

    def blocked(self, keys: Sequence[str], now: float) -> Block | None:
        blocks = [Block(k, r.failures, r.blocked_until) for k in keys
                  if (r := self._get(k, now)) is not None and r.blocked_until > now]
        return max(blocks, key=lambda b: b.until, default=None)

    def failure(self, keys: Sequence[str], now: float) -> list[Block]:
        started = []
        for key in keys:
            old = self._records.pop(key, None)
            rec = next_record(old, now, self.policy)
            self._records[key] = rec  # most recent last
            if rec.blocked_until > now and (old is None or rec.blocked_until > old.blocked_until):
                started.append(Block(key, rec.failures, rec.blocked_until))
        while len(self._records) > self.max_keys:
            self._records.popitem(last=False)
        return started

    def success(self, key: str) -> None:
        self._records.pop(key, None)

    def close(self) -> None:
        self._records.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure REAL NOT NULL,
    blocked_until REAL NOT NULL
) WITHOUT ROWID
"""
_PRUNE_EVERY = 256  # failures between two sweeps of forgotten keys


class SQLiteThrottleStore:
    """Records in a SQLite file shared by every process (and service) of one host.

    The file (mode 0600: it holds user names and client addresses) and its folder are
    created on first use. Opened lazily, in the thread that first uses it.
    """

    def __init__(self, path: Path, policy: ThrottlePolicy, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.policy = policy
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # losing the last failures in a crash is fine
                db.execute(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def blocked(self, keys: Sequence[str], now: float) -> Block | None:
        if not keys:
            return None
        marks = ",".join("?" * len(keys))
        row = self._conn().execute(
            f"SELECT key, failures, blocked_until FROM auth_failures WHERE key IN ({marks}) AND blocked_until > ? "
            "ORDER BY blocked_until DESC LIMIT 1", (*keys, now)).fetchone()
        return Block(row[0], int(row[1]), float(row[2])) if row is not None else None

    def failure(self, keys: Sequence[str], now: float) -> list[Block]:
        db = self._conn()
        started = []
        db.execute("BEGIN IMMEDIATE")  # read-modify-write under the write lock: no lost failure
        try:
            for key in keys:
                row = db.execute("SELECT failures, last_failure, blocked_until FROM auth_failures WHERE key = ?",
                                 (key,)).fetchone()
                old = Record(int(row[0]), float(row[1]), float(row[2])) if row is not None else None
                rec = next_record(old, now, self.policy)
                db.execute("INSERT OR REPLACE INTO auth_failures (key, failures, last_failure, blocked_until) "
                           "VALUES (?, ?, ?, ?)", (key, rec.failures, rec.last_failure, rec.blocked_until))
                if rec.blocked_until > now and (old is None or rec.blocked_until > old.blocked_until):
                    started.append(Block(key, rec.failures, rec.blocked_until))
            self._writes += 1
            if self._writes % _PRUNE_EVERY == 0:
                db.execute("DELETE FROM auth_failures WHERE MAX(last_failure, blocked_until) < ?",
                           (now - self.policy.failure_window,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return started

    def success(self, key: str) -> None:
        self._conn().execute("DELETE FROM auth_failures WHERE key = ?", (key,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class DirectoryThrottleStore:
    """Records in the directory database (``auth_failures``), shared by every process and host."""

    def __init__(self, directory: Directory, policy: ThrottlePolicy) -> None:
        self.directory = directory
        self.policy = policy
        self._writes = 0

    def blocked(self, keys: Sequence[str], now: float) -> Block | None:
        blocks = [Block(k, f, until) for k, (f, _last, until) in self.directory.throttle_records(keys).items()
                  if until > now]
        return max(blocks, key=lambda b: b.until, default=None)

    def failure(self, keys: Sequence[str], now: float) -> list[Block]:
        def step(_key: str, old: tuple[int, float, float] | None) -> tuple[int, float, float]:
            rec = next_record(Record(*old) if old is not None else None, now, self.policy)
            return rec.failures, rec.last_failure, rec.blocked_until

        self._writes += 1
        prune = now - self.policy.failure_window if self._writes % _PRUNE_EVERY == 0 else None
        started = []
        for key, (old, new) in self.directory.throttle_update(keys, step, prune_before=prune).items():
            if new[2] > now and (old is None or new[2] > old[2]):
                started.append(Block(key, new[0], new[2]))
        return started

    def success(self, key: str) -> None:
        self.directory.throttle_clear(key)

    def close(self) -> None:
        pass  # the directory is closed by its owner
