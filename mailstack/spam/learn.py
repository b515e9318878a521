"""Learning from the user's own sorting: a message moved or copied into Junk over IMAP is
taught to rspamd as spam, one moved or copied out of Junk (not to Trash) as ham.

This is what Dovecot's imapsieve + ``rspamc learn_spam``/``learn_ham`` setup does (its
``imapsieve_mailbox1_causes = COPY`` covers MOVE too, and so do we). The folders are the
``[checks] junk_folder`` (default ``Junk``) or any folder created with the ``\\Junk``
special use, and ``Trash`` or any ``\\Trash`` one.

The IMAP command never waits for rspamd: ``Learning.note_copy`` (called by COPY and MOVE in
the IMAP worker thread, after the copy) only puts the message into a durable queue on disk,
``[spam] learn_dir``; a ``Learner`` task of the IMAP service drains it into the controller
(``/learnspam``, ``/learnham``, ``Password:`` from ``[spam] rspamd_password``) and retries
while rspamd is away.

The queue (one directory, any number of processes):

- an entry is ``<id>.msg`` (a hard link to the message file: no copy of the bytes, and the
  user may expunge their copy meanwhile; copied when the link is impossible) and
  ``<id>.json`` (``{"class": "spam"|"ham", "user": ..., "created": ...}``), written last
  with ``safeio.write_durable``: an entry exists once its ``.json`` does, and it is on disk
  before the IMAP command answers; a ``.msg`` left without one (a crash between the two) is
  removed after an hour;
- ids sort by time, so the oldest is learned first; one process drains at a time (an
  ``flock`` on ``.lock``), so two IMAP workers never teach rspamd a message twice;
- an entry is removed once rspamd has learned it or says it never will (too short,
  already learned: ``RspamdClient.learn``); rspamd away, failing, or refusing the
  password keeps it and the learner retries with a growing delay (``RETRY_MIN`` doubling
  up to ``RETRY_MAX``); an entry older than ``MAX_AGE`` is dropped with a warning;
- at most ``MAX_ENTRIES`` entries wait: past that, new moves are not queued (a warning),
  so a user who moves mail in a loop while rspamd is down cannot fill the disk's inodes.

Invariant: nothing here raises into the IMAP command: a queue that cannot be written is a
warning in the log, never a failed COPY or MOVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mailstack.config import Config
from mailstack.spam.rspamd import RspamdClient
from mailstack.storage import Folder, Maildir, safeio
from mailstack.storage.errors import StorageError

__all__ = ["Entry", "LearnQueue", "Learner", "Learning", "MAX_ENTRIES", "MAX_AGE", "RETRY_MIN", "RETRY_MAX"]

log = logging.getLogger(__name__)

MAX_ENTRIES = 10_000  # entries waiting at once; more moves are not queued (a warning)
MAX_AGE = 7 * 86400.0  # seconds an entry may wait for rspamd before it is dropped
RETRY_MIN = 5.0  # seconds before the first retry while rspamd is away ...
RETRY_MAX = 300.0  # ... doubling up to this
POLL = 30.0  # seconds between looks at the queue when nobody wakes the learner (other processes' entries)
ORPHAN_AGE = 3600.0  # a .msg without its .json (a crash between the two writes) is removed after this
TRASH = "Trash"

_counter = itertools.count()


@dataclass(frozen=True)
class Entry:
    id: str
    spam: bool
    user: str
    created: float

    def paths(self, root: Path) -> tuple[Path, Path]:
        return root / f"{self.id}.msg", root / f"{self.id}.json"


class LearnQueue:
    """The durable queue of messages to learn (see the module docstring). Synchronous."""

    def __init__(self, root: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.root = root
        self.max_entries = max_entries

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def add(self, spam: bool, user: str, sources: Sequence[Folder | Path], uids: Sequence[int] = ()) -> int:
        """Queue messages: ``sources`` are paths, or one folder whose ``uids`` are meant.
        Returns how many were queued."""
        self.ensure()
        waiting = sum(1 for n in os.listdir(self.root) if n.endswith(".json"))
        items: list[tuple[Folder, int] | Path] = []
        for src in sources:
            if isinstance(src, Path):
                items.append(src)
            else:
                items += [(src, uid) for uid in uids]
        done = 0
        for item in items:
            if waiting + done >= self.max_entries:
                log.warning("spam: learn queue %s is full (%d entries): %d message(s) not queued for learning",
                            self.root, self.max_entries, len(items) - done)
                break
            entry_id = f"{time.time_ns():020d}.{os.getpid()}.{next(_counter)}.{secrets.token_hex(3)}"
            entry = Entry(entry_id, spam, user, time.time())
            msg, meta = entry.paths(self.root)
            self._link(item, msg)
            body = json.dumps({"class": "spam" if spam else "ham", "user": user, "created": entry.created})
            safeio.write_durable(meta, body.encode(), mode=0o600)  # fsyncs the dir: the link is durable too
            done += 1
        return done

    @staticmethod
    def _link(item: tuple[Folder, int] | Path, target: Path) -> None:
        """A hard link to the message file (renamed by a flag change meanwhile: looked up again)."""
        for _ in range(3):
            try:
                source = item if isinstance(item, Path) else item[0].open_path(item[1])
                os.link(source, target)
                return
            except FileNotFoundError:
                continue
            except OSError as e:  # another file system, no links allowed: a copy
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                break
        data = item.read_bytes() if isinstance(item, Path) else item[0].read(item[1])
        safeio.create_exclusive(target, data)

    def entries(self) -> list[Entry]:
        """The waiting entries, oldest first; unreadable ones and orphans are cleaned up."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        have = set(names)
        out = []
        now = time.time()
        for name in names:
            if name.endswith(".msg") and name[:-4] + ".json" not in have:
                self._remove_if_old(self.root / name, now)
            if not name.endswith(".json"):
                continue
            path = self.root / name
            try:
                doc = json.loads(path.read_bytes())
                out.append(Entry(name[:-5], doc["class"] == "spam", str(doc.get("user", "")),
                                 float(doc.get("created", now))))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("spam: dropping unreadable learn entry %s: %s", path, e)
                self.remove(Entry(name[:-5], False, "", now))
        return out

    def read(self, entry: Entry) -> bytes | None:
        try:
            return entry.paths(self.root)[0].read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, entry: Entry) -> None:
        for p in reversed(entry.paths(self.root)):  # the .json first: the entry is gone at once
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    @staticmethod
    def _remove_if_old(path: Path, now: float) -> None:
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > ORPHAN_AGE and now - path.stat().st_ctime > ORPHAN_AGE:
                path.unlink()

    @contextlib.contextmanager
    def drain_lock(self) -> Iterator[bool]:
        """Exclusive right to drain (one process at a time); yields False when another has it."""
        self.ensure()
        f: IO[bytes] = open(self.root / ".lock", "ab")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            f.close()  # releases the lock


class Learner:
    """The task that feeds the queue to rspamd's controller. ``start()``/``wake()``/``stop()``."""

    def __init__(self, queue: LearnQueue, client: RspamdClient, *, poll: float = POLL) -> None:
        self.queue = queue
        self.client = client
        self.poll = poll
        self.delay = 0.0  # the current retry delay while rspamd is away
        self.learned = 0  # entries done with since start (for tests and status)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="spam-learner")

    def wake(self) -> None:
        """From any thread: something was queued."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.client.close()

    async def _run(self) -> None:
        wait = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            try:
                wait = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end learning for good
                log.exception("spam: learner failed; retrying")
                wait = RETRY_MAX

    async def drain(self) -> float:
        """Learn what waits; returns how long to wait before the next look."""
        lock = self.queue.drain_lock()
        held = await asyncio.to_thread(lock.__enter__)
        try:
            if not held:
                return self.poll  # another process drains
            entries = await asyncio.to_thread(self.queue.entries)
            for entry in entries:
                if time.time() - entry.created > MAX_AGE:
                    log.warning("spam: dropping a %s learn entry of %s: waited over %g days for rspamd",
                                "spam" if entry.spam else "ham", entry.user, MAX_AGE / 86400)
                    await asyncio.to_thread(self.queue.remove, entry)
                    continue
                data = await asyncio.to_thread(self.queue.read, entry)
                if data is None:
                    await asyncio.to_thread(self.queue.remove, entry)
                    continue
                result = await self.client.learn(data, entry.spam, deliver_to=entry.user or None)
                if result.retry:
                    self.delay = min(RETRY_MAX, max(RETRY_MIN, self.delay * 2))
                    log.warning("spam: cannot learn from %s now (%s); %d waiting, retry in %g s",
                                entry.user, result.detail, len(entries), self.delay)
                    return self.delay
                log.info("spam: %s as %s for %s: %s", entry.id, "spam" if entry.spam else "ham", entry.user,
                         result.detail)
                await asyncio.to_thread(self.queue.remove, entry)
                self.learned += 1
            self.delay = 0.0
            return self.poll
        finally:
            await asyncio.to_thread(lock.__exit__, None, None, None)


class Learning:
    """What the IMAP service holds: the queue, its learner, the folder rules."""

    def __init__(self, queue: LearnQueue, learner: Learner | None, junk_folder: str = "Junk") -> None:
        self.queue = queue
        self.learner = learner
        self.junk_folder = junk_folder

    @classmethod
    def from_config(cls, config: Config) -> Learning | None:
        """None when ``[spam] rspamd_controller_url`` is empty."""
        spam = config.spam
        if not spam.rspamd_controller_url:
            return None
        client = RspamdClient(controller_url=spam.rspamd_controller_url, password=spam.rspamd_password,
                              timeout=max(spam.timeout, 30.0))  # learning a big message takes a while
        queue = LearnQueue(spam.learn_dir)
        return cls(queue, Learner(queue, client), config.checks.junk_folder)

    async def start(self) -> None:
        await asyncio.to_thread(self.queue.ensure)
        if self.learner is not None:
            self.learner.start()

    async def stop(self) -> None:
        if self.learner is not None:
            await self.learner.stop()

    def _is(self, md: Maildir, name: str, default: str, attr: str) -> bool:
        return name == default or attr in md.special_use(name)

    def verdict(self, md: Maildir, source: str, target: str) -> bool | None:
        """True: learn as spam; False: as ham; None: nothing to learn from this copy."""
        from_junk = self._is(md, source, self.junk_folder, "\\Junk")
        to_junk = self._is(md, target, self.junk_folder, "\\Junk")
        if to_junk and not from_junk:
            return True
        if from_junk and not to_junk and not self._is(md, target, TRASH, "\\Trash"):
            return False
        return None

    def note_copy(self, md: Maildir, user: str, source: str, target: Folder, uids: Sequence[int]) -> None:
        """COPY or MOVE of ``uids`` (their new UIDs in ``target``) from folder ``source``.
        Never raises: learning is a side effect, the IMAP command has succeeded."""
        if not uids:
            return
        try:
            spam = self.verdict(md, source, target.name)
            if spam is None:
                return
            if self.queue.add(spam, user, [target], uids):
                if self.learner is not None:
                    self.learner.wake()
        except (OSError, StorageError, ValueError) as e:
            log.warning("spam: cannot queue %d message(s) of %s for learning: %s", len(uids), user, e)


def note_copy(learning: Learning | None, md: Maildir, user: str, source: str, target: Folder,
              moved: Sequence[tuple[int, int]]) -> None:
    """The one call IMAP COPY/MOVE make (``moved``: their (old, new) UID pairs)."""
    if learning is not None and moved:
        learning.note_copy(md, user, source, target, [new for _, new in moved])
