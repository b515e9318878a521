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

- an entry is one file, ``<learn_dir>/<spam|ham>/<domain>/<local>/<id>``: a hard link to
  the message file (no copy of the bytes, and the user may expunge their copy meanwhile;
  a copy where a link is impossible, e.g. another file system). Its place says what to
  learn and for whom, so queueing a COPY of many messages costs one link each and one
  directory fsync for the lot, before the IMAP command answers;
- ids start with the time in ns, so the oldest is learned first; one process drains at a
  time (an ``flock`` on ``.lock``), so two IMAP workers never teach rspamd a message twice;
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
TRASH = "Trash"

_counter = itertools.count()


@dataclass(frozen=True)
class Entry:
    path: Path
    spam: bool
    user: str
    created: float

    @property
    def id(self) -> str:
        return self.path.name


CLASSES = (("spam", True), ("ham", False))


class LearnQueue:
    """The durable queue of messages to learn (see the module docstring). Synchronous."""

    def __init__(self, root: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.root = root
        self.max_entries = max_entries

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _dir(self, spam: bool, user: str) -> Path:
        """``<root>/<spam|ham>/<domain>/<local>`` (storage's checks: never outside the root)."""
        local, _, domain = user.rpartition("@")
        return Maildir.for_user(self.root / ("spam" if spam else "ham"), domain, local).root

    def add(self, spam: bool, user: str, folder: Folder, uids: Sequence[int]) -> int:
        """Queue the messages ``uids`` of ``folder`` for ``user``; returns how many were queued.
        They are on disk (the directory fsynced) when this returns."""
        self.ensure()
        waiting = self.count()
        if waiting >= self.max_entries:
            log.warning("spam: learn queue %s is full (%d entries): %d message(s) not queued for learning",
                        self.root, self.max_entries, len(uids))
            return 0
        target = self._dir(spam, user)
        new_dirs = [d for d in (target.parent.parent, target.parent, target) if not d.is_dir()]
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        done = 0
        for uid in uids[: self.max_entries - waiting]:
            name = f"{time.time_ns():020d}.{os.getpid()}.{next(_counter)}.{secrets.token_hex(3)}"
            self._link(folder, uid, target / name)
            done += 1
        if done < len(uids):
            log.warning("spam: learn queue %s is full (%d entries): %d message(s) not queued for learning",
                        self.root, self.max_entries, len(uids) - done)
        safeio.fsync_dir(target)
        for d in reversed(new_dirs):  # the new directories' entries in their parents too
            safeio.fsync_dir(d.parent)
        return done

    @staticmethod
    def _link(folder: Folder, uid: int, target: Path) -> None:
        """A hard link to the message file (renamed by a flag change meanwhile: looked up again)."""
        for _ in range(3):
            try:
                os.link(folder.open_path(uid), target)
                return
            except FileNotFoundError:
                continue
            except OSError as e:  # another file system, no links allowed: a copy
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                break
        safeio.create_exclusive(target, folder.read(uid))

    def _files(self) -> Iterator[tuple[Path, bool, str]]:
        for cls, spam in CLASSES:
            base = self.root / cls
            try:
                domains = list(os.scandir(base))
            except FileNotFoundError:
                continue
            for d in domains:
                if not d.is_dir(follow_symlinks=False):
                    continue
                for u in os.scandir(d.path):
                    if not u.is_dir(follow_symlinks=False):
                        continue
                    for f in os.scandir(u.path):
                        if f.is_file(follow_symlinks=False):
                            yield Path(f.path), spam, f"{u.name}@{d.name}"

    def count(self) -> int:
        return sum(1 for _ in self._files())

    def entries(self) -> list[Entry]:
        """The waiting entries, oldest first."""
        out = []
        for path, spam, user in self._files():
            try:
                created = int(path.name.split(".", 1)[0]) / 1e9
            except ValueError:
                created = path.stat().st_mtime if path.exists() else time.time()
            out.append(Entry(path, spam, user, created))
        out.sort(key=lambda e: e.id)
        return out

    def read(self, entry: Entry) -> bytes | None:
        try:
            return entry.path.read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, entry: Entry) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()

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
            if self.queue.add(spam, user, target, uids):
                if self.learner is not None:
                    self.learner.wake()
        except (OSError, StorageError, ValueError) as e:
            log.warning("spam: cannot queue %d message(s) of %s for learning: %s", len(uids), user, e)


def note_copy(learning: Learning | None, md: Maildir, user: str, source: str, target: Folder,
              moved: Sequence[tuple[int, int]]) -> None:
    """The one call IMAP COPY/MOVE make (``moved``: their (old, new) UID pairs)."""
    if learning is not None and moved:
        learning.note_copy(md, user, source, target, [new for _, new in moved])
