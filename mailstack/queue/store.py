"""The durable spool: messages waiting for remote delivery (or a retry, or a bounce).

The store and the per-message claims; the runner (``mailstack.smtp.queue_runner``:
retries, MX lookup, bounces) is built on top of it, ``queue.wake`` wakes it.

On-disk format, all in one flat directory ``[queue] dir``:

- ``<id>.msg``: the message exactly as received, CRLF line ends, with our Received:
  line on top; never modified after enqueue.
- ``<id>.env``: the envelope, UTF-8 JSON object::

      {"version": 1, "id": "<id>", "sender": "a@example.org" | "",
       "recipients": ["b@example.net", ...], "created": <unix seconds, float>,
       "attempts": 0, "next_attempt": <unix seconds>, "smtputf8": false,
       "client": "192.0.2.7" | null, "reason": null | "<why it was queued>",
       "extra": {...}}

  ``sender`` ``""`` is the null reverse-path (a bounce). Unknown keys are kept.
- ``.locks/<id>``: the claim of one message (``claim``): whoever holds an exclusive
  ``flock`` on it works on that message; the file is only a lock, never data.
- ``<id>`` is 18 upper-case hex digits: 13 of microseconds since the epoch, then 5
  random, so ids sort by arrival time and never repeat across processes.

Invariants:
- A message is in the queue iff its ``.env`` exists. ``enqueue`` writes ``.msg`` and
  ``.env`` as temp files (``.tmp-*``, fsynced), renames ``.msg`` first and ``.env``
  last, then fsyncs the directory: after it returns both survive a crash, and a crash
  before that leaves at most an orphan ``.msg``/temp file, never a half envelope.
- ``remove`` deletes ``.env`` first (the message leaves the queue atomically), then
  ``.msg``, then fsyncs the directory.
- ``save`` rewrites an envelope with ``storage.safeio.write_durable`` (attempt counters).
- Files are 0600 and the directory 0700 (its parents too, when it makes them), given
  in each creating call, whatever the umask; nothing here ever follows a name that
  is not a well-formed id.
- What a crashed writer leaves (``.tmp-*`` of ``enqueue``, ``.<name>.<pid>.<hex>.tmp`` of
  ``write_durable``, a ``<id>.msg`` whose ``.env`` never came or was removed first) is
  removed by ``list()`` once it is older than 36 hours (as Maildir ``tmp/``), at most
  once an hour per store; a symlink is never followed or removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mailstack.queue import wake
from mailstack.storage.safeio import create_exclusive, fsync_dir, make_dirs, write_durable
from mailstack.storage.tmpclean import TMP_MAX_AGE, is_stale

__all__ = ["LOCK_DIR", "QueueStore", "QueuedEnvelope", "QueueIdError", "claim", "arrival_time", "delay_since",
           "new_queue_id", "release_claim"]

_ID_RE = re.compile(r"^[0-9A-F]{18}$")
# Temp files: enqueue's ".tmp-<id>-<hex>.msg|env"; write_durable's ".<name>.<pid>.<hex>.tmp".
_TEMP_RE = re.compile(r"^\.tmp-[0-9A-F]{18}-[0-9a-f]+\.(?:msg|env)$|^\.[0-9A-F]{18}\.env\.\d+\.[0-9a-f]+\.tmp$")
CLEAN_INTERVAL = 3600.0  # seconds between two looks for leftovers, per store
LOCK_DIR = ".locks"


class QueueIdError(ValueError):
    """Not a well-formed queue id."""


def new_queue_id() -> str:
    return f"{time.time_ns() // 1000:013X}{secrets.randbelow(16**5):05X}"


def arrival_time(queue_id: str) -> float | None:
    """When the message ``queue_id`` arrived (its first 13 hex digits: microseconds since
    the epoch); None for anything that is not a queue id."""
    if not _ID_RE.match(queue_id or ""):
        return None
    return int(queue_id[:13], 16) / 1e6


def delay_since(queue_id: str, now: float | None = None) -> str | None:
    """The mail log's ``delay=`` (Postfix's): seconds from arrival to ``now``, 3 decimals."""
    t = arrival_time(queue_id)
    if t is None:
        return None
    return f"{max(0.0, (time.time() if now is None else now) - t):.3f}"


@dataclass(frozen=True)
class QueuedEnvelope:
    id: str
    sender: str
    recipients: tuple[str, ...]
    created: float
    attempts: int = 0
    next_attempt: float = 0.0
    smtputf8: bool = False
    client: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def to_json(self) -> bytes:
        d = asdict(self)
        d["recipients"] = list(self.recipients)
        return json.dumps(d, ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> QueuedEnvelope:
        d = json.loads(data.decode("utf-8"))
        known = {f for f in cls.__dataclass_fields__}
        extra = dict(d.get("extra") or {})
        for k in list(d):
            if k not in known:
                extra[k] = d.pop(k)
        d["extra"] = extra
        d["recipients"] = tuple(d.get("recipients") or ())
        return cls(**d)


class QueueStore:
    """A directory of queued messages (see module docstring for the format)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self._cleaned_at: float | None = None  # monotonic time of the last clean_leftovers

    def ensure(self) -> None:
        make_dirs(self.dir, 0o700)

    def _paths(self, queue_id: str) -> tuple[Path, Path]:
        if not _ID_RE.match(queue_id):
            raise QueueIdError(f"not a queue id: {queue_id!r}")
        return self.dir / f"{queue_id}.msg", self.dir / f"{queue_id}.env"

    def enqueue(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        queue_id: str | None = None,
        smtputf8: bool = False,
        client: str | None = None,
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Durably store one message for ``recipients``; returns its queue id."""
        if not recipients:
            raise ValueError("a queued message needs at least one recipient")
        self.ensure()
        qid = queue_id or new_queue_id()
        msg_path, env_path = self._paths(qid)
        if env_path.exists() or msg_path.exists():
            qid = new_queue_id()
            msg_path, env_path = self._paths(qid)
        now = time.time()
        env = QueuedEnvelope(
            id=qid,
            sender=sender,
            recipients=tuple(recipients),
            created=now,
            next_attempt=now,
            smtputf8=smtputf8,
            client=client,
            reason=reason,
            extra=dict(extra or {}),
        )
        token = secrets.token_hex(4)
        tmp_msg = self.dir / f".tmp-{qid}-{token}.msg"
        tmp_env = self.dir / f".tmp-{qid}-{token}.env"
        try:
            create_exclusive(tmp_msg, data)
            create_exclusive(tmp_env, env.to_json())
            os.replace(tmp_msg, msg_path)
            os.replace(tmp_env, env_path)  # the commit point
        except BaseException:
            for p in (tmp_msg, tmp_env):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise
        fsync_dir(self.dir)
        wake.announce(self.dir)
        return qid

    def list(self) -> list[str]:
        """Ids of queued messages, oldest first (and, now and then, leftovers removed)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        ids = sorted(n[:-4] for n in names if n.endswith(".env") and _ID_RE.match(n[:-4]))
        now = time.monotonic()
        if self._cleaned_at is None or now - self._cleaned_at >= CLEAN_INTERVAL:
            self._cleaned_at = now
            self.clean_leftovers(names, set(ids))
        return ids

    def clean_leftovers(self, names: Sequence[str] | None = None, ids: set[str] | None = None,
                        max_age: float = TMP_MAX_AGE) -> int:
        """Remove what crashed writers left (see the module docstring); how many went.

        Old is as in a Maildir's tmp/ (storage.tmpclean): a regular file with one link,
        neither modified nor accessed for ``max_age``. Never raises.
        """
        try:
            if names is None:
                names = os.listdir(self.dir)
            if ids is None:
                ids = {n[:-4] for n in names if n.endswith(".env") and _ID_RE.match(n[:-4])}
        except OSError:
            return 0
        limit = time.time() - max_age
        removed = 0
        for n in names:
            orphan = n.endswith(".msg") and _ID_RE.match(n[:-4]) is not None and n[:-4] not in ids
            if not (orphan or _TEMP_RE.match(n)):
                continue
            p = self.dir / n
            try:
                if not is_stale(os.lstat(p), limit):
                    continue
                if orphan and (self.dir / f"{n[:-4]}.env").exists():
                    continue  # enqueued since the listing
                os.unlink(p)
            except FileNotFoundError:
                continue
            except OSError as e:
                logging.getLogger(__name__).warning("queue: cannot remove %s: %s", p, e.strerror or e)
                continue
            removed += 1
            logging.getLogger(__name__).info("queue: removed %s (left by a writer that died)", p)
        return removed

    def load(self, queue_id: str) -> tuple[QueuedEnvelope, bytes]:
        """(envelope, message bytes); FileNotFoundError if it is not (or no longer) queued."""
        msg_path, env_path = self._paths(queue_id)
        env = QueuedEnvelope.from_json(env_path.read_bytes())
        return env, msg_path.read_bytes()

    def envelope(self, queue_id: str) -> QueuedEnvelope:
        _msg, env_path = self._paths(queue_id)
        return QueuedEnvelope.from_json(env_path.read_bytes())

    def save(self, env: QueuedEnvelope) -> None:
        """Durably rewrite an envelope (e.g. attempts, next_attempt, fewer recipients)."""
        _msg, env_path = self._paths(env.id)
        if not env_path.exists():
            raise FileNotFoundError(str(env_path))
        write_durable(env_path, env.to_json())

    def remove(self, queue_id: str) -> None:
        """Take a message out of the queue (missing is not an error)."""
        msg_path, env_path = self._paths(queue_id)
        for p in (env_path, msg_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        fsync_dir(self.dir)

    @staticmethod
    def updated(env: QueuedEnvelope, **changes: Any) -> QueuedEnvelope:
        return replace(env, **changes)


@contextlib.contextmanager
def claim(queue_dir: Path, queue_id: str) -> Iterator[bool]:
    """Exclusive, non-blocking claim of one message; yields False when someone else has it.

    ``flock`` on ``<dir>/.locks/<id>``: several runners (processes, hosts sharing the
    directory) and the CLI never work on one message at once; a crash drops the lock.
    """
    if not _ID_RE.match(queue_id):
        raise QueueIdError(f"not a queue id: {queue_id!r}")
    d = Path(queue_dir) / LOCK_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(d / queue_id, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def release_claim(queue_dir: Path, queue_id: str) -> None:
    """Remove the lock file of a message that has left the queue (while still holding it)."""
    with contextlib.suppress(OSError):
        (Path(queue_dir) / LOCK_DIR / queue_id).unlink()
