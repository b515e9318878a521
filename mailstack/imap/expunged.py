"""Messages expunged by one session that other sessions may still fetch (RFC 2180 §4.1).

A session learns of an expunge only by an EXPUNGE response, which it may not get during
FETCH, STORE or SEARCH (RFC 3501 §7.4.1); until then the message keeps its sequence
number there. RFC 2180 §4.1 lets the server go on serving it, and Dovecot does, so a
client never gets ``NO [EXPUNGEISSUED]`` for data the server can still give.

How: every ``MailboxView`` registers itself here (``register``, a weak reference). A
session that expunges (EXPUNGE, UID EXPUNGE, MOVE) does so inside ``expunging(view,
uids)``, which opens each message file first. A file is kept (its open descriptor, shared by all sessions of this process) while some
*other* view of the same folder still lists the UID, and in any case for ``GRACE``
seconds after the expunge: a view that was syncing at that moment (its listing of cur/
taken just before the unlink, its list of UIDs replaced just after) lists the UID
without having been seen listing it, and it is served too. ``read(view, uid)`` gives the
bytes to any view that lists the UID. A kept file is closed once its grace is over and no
view still lists the UID: each was told the EXPUNGE (``MailboxView.changes`` drops the
UID), or closed (unselected, logged out, gone).

Limits and choices:
- At most ``MAX_KEPT`` files are kept per process (one descriptor each, whatever the
  number of sessions); beyond that an expunged message is not kept and a FETCH of it
  still answers ``NO [EXPUNGEISSUED]`` (RFC 5530 §3). Nothing is ever copied to memory
  or disk: the descriptor only delays the freeing of the file's blocks.
- Only expunges made by IMAP sessions of this process are seen here; a message another
  process (Dovecot, a POP3 server in another process) removed cannot be served any more.
- Views are checked lazily (on every ``register``, ``expunging`` and ``read``), so
  nothing in the view's own code has to call back; a descriptor no view needs any more
  is closed by the next of these calls in the process.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailstack.storage import MessageNotFound

if TYPE_CHECKING:
    from .mailbox import MailboxView

__all__ = ["GRACE", "MAX_KEPT", "ExpungedFiles", "KEPT"]

log = logging.getLogger(__name__)

MAX_KEPT = 512  # open descriptors of expunged-but-unannounced messages, per process
GRACE = 2.0  # seconds a kept file stays open even when no view lists its UID (yet)


@dataclass
class _Kept:
    fd: int
    since: float  # time.monotonic() of the expunge (inf while it is under way)
    viewers: weakref.WeakSet[MailboxView] = field(default_factory=weakref.WeakSet)


class ExpungedFiles:
    """The process-wide keeper (``KEPT``); thread-safe (sessions run in worker threads)."""

    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self.max_kept = max_kept
        self._lock = threading.RLock()
        self._views: dict[Path, weakref.WeakSet[MailboxView]] = {}
        self._kept: dict[tuple[Path, int, int], _Kept] = {}  # (folder path, uidvalidity, uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def register(self, view: MailboxView) -> None:
        """A new view of a folder (SELECT / EXAMINE)."""
        with self._lock:
            self._views.setdefault(view.folder.path, weakref.WeakSet()).add(view)
        self.release()

    @contextmanager
    def expunging(self, view: MailboxView, uids: Iterable[int]) -> Iterator[None]:
        """Open the files of ``uids`` before the block removes them; keep them for views that
        list them (and for ``GRACE`` seconds). If the block fails nothing is kept."""
        path = view.folder.path
        opened: dict[int, int] = {}
        with self._lock:
            others = [v for v in self._views.get(path, ()) if v is not view and v.uidvalidity == view.uidvalidity]
        # Every one, even with no other view now: a session in the middle of SELECT (not
        # registered yet, its listing of cur/ taken before the unlink) lists it next.
        room = self.max_kept - len(self)
        for uid in uids:
            if len(opened) >= room:
                if others:
                    log.info("imap: over %d expunged messages kept open: %s UID %d is not", self.max_kept, path, uid)
                break
            fd = self._open(view, uid)
            if fd is not None:
                opened[uid] = fd
        # Readable from now on: another session may find the file gone while the block is
        # still busy (the unlinks are done, the directory's fsync is not).
        entries = {(path, view.uidvalidity, uid): _Kept(fd, math.inf) for uid, fd in opened.items()}
        with self._lock:
            for key, entry in entries.items():
                old = self._kept.pop(key, None)
                if old is not None:
                    os.close(old.fd)
                self._kept[key] = entry
        try:
            yield
        except BaseException:
            with self._lock:
                for key, entry in entries.items():
                    if self._kept.get(key) is entry:  # else replaced, and closed, by a later expunge
                        del self._kept[key]
                        os.close(entry.fd)
            raise
        now = time.monotonic()
        with self._lock:
            others = [v for v in self._views.get(path, ()) if v is not view and v.uidvalidity == view.uidvalidity]
            for (_, _, uid), entry in entries.items():
                entry.since = now  # the grace starts when the expunge is done
                for v in others:
                    if uid in v.infos:
                        entry.viewers.add(v)
        self.release()

    @staticmethod
    def _open(view: MailboxView, uid: int) -> int | None:
        folder = view.folder
        for _ in range(3):
            try:
                return os.open(folder.open_path(uid), os.O_RDONLY | os.O_CLOEXEC)
            except MessageNotFound:
                return None
            except FileNotFoundError:
                continue  # renamed (flags) meanwhile: look it up again
        return None

    def read(self, view: MailboxView, uid: int) -> bytes | None:
        """The bytes of a message expunged elsewhere that ``view`` still lists, or None."""
        self.release()
        with self._lock:
            entry = self._kept.get((view.folder.path, view.uidvalidity, uid))
            if entry is None or uid not in view.infos:
                return None
            entry.viewers.add(view)  # listed it after the expunge (it was syncing then)
            fd = os.dup(entry.fd)  # read without holding the lock; release() may close entry.fd
        try:
            chunks: list[bytes] = []
            offset = 0
            while True:  # pread: the file offset (shared by dup) is never used
                chunk = os.pread(fd, 1 << 20, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Close what no view still lists (each was told the EXPUNGE, or is gone) once its
        grace is over."""
        cutoff = time.monotonic() - GRACE
        with self._lock:
            for key, entry in list(self._kept.items()):
                uid = key[2]
                for v in list(entry.viewers):
                    if uid not in v.infos:
                        entry.viewers.discard(v)
                if not entry.viewers and entry.since <= cutoff:
                    del self._kept[key]
                    os.close(entry.fd)
            for path in [p for p, views in self._views.items() if not views]:
                del self._views[path]


KEPT = ExpungedFiles()
