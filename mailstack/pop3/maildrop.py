"""A POP3 session's maildrop: the exclusive lock, the snapshot and the UPDATE.

Synchronous (file system calls): the server runs these functions in a thread.

Invariants:
- One maildrop, one POP3 session (RFC 1939 §8 "exclusive-access lock"): the lock is an
  ``flock(LOCK_EX|LOCK_NB)`` on ``<maildir>/mailstack-pop3.lock``, taken before the
  snapshot and held until the session ends. The kernel drops it when the file is
  closed or the process dies, so no stale lock ever blocks a user; being ``flock``
  it also excludes sessions of the same process and of other processes and hosts
  sharing the Maildir (an in-process set guards file systems that emulate flock).
  IMAP sessions do not take it: they run alongside and see POP3's deletions.
- The snapshot is INBOX's ``Folder.sync()`` state at login: message n is the n-th
  message in UID order; later arrivals wait for the next session (RFC 1939 §5).
  Sizes are ``,W=`` (CRLF) sizes, never read from the files; UIDLs are the ones Dovecot
  gives (``FolderState.pop3_uidl``): a UIDL saved in the message's ``dovecot-uidlist``
  ``P`` field, else Dovecot's default ``%08Xu%08Xv`` in lower-case hex, so they survive
  restarts and a move from Dovecot byte for byte.
- UPDATE (RFC 1939 §6) removes the marked messages through ``Folder.expunge`` (under
  the ``dovecot-uidlist`` lock); any failure there is reported, never hidden.
  Messages RETRieved and kept get \\Seen, as Dovecot does by default
  (``pop3_no_flag_updates = no``); a failure to flag is logged, not fatal.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from mailstack.storage import Maildir
from mailstack.storage.errors import MessageNotFound, StorageError
from mailstack.storage.folder import Folder

from .core import Maildrop, MaildropMessage

__all__ = ["LOCK_NAME", "MaildropInUse", "MaildropSession", "open_maildrop"]

log = logging.getLogger(__name__)

LOCK_NAME = "mailstack-pop3.lock"
_held: set[str] = set()
_held_guard = threading.RLock()  # RLock: __del__ may run while held


class MaildropInUse(Exception):
    """Another POP3 session holds this maildrop ([IN-USE], RFC 2449 §8.1.1)."""


class _SessionLock:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._fd: int | None = None
        with _held_guard:
            if self.path in _held:
                raise MaildropInUse(self.path)
            _held.add(self.path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                self._fd = None
                raise MaildropInUse(self.path) from None
        except BaseException:
            with _held_guard:
                _held.discard(self.path)
            raise

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)  # drops the flock
        with _held_guard:
            _held.discard(self.path)

    def __del__(self) -> None:  # a session object dropped without close() must not keep the lock
        self.release()


@dataclass
class MaildropSession:
    folder: Folder
    maildrop: Maildrop
    lock: _SessionLock

    def path_of(self, message: MaildropMessage) -> Path:
        return self.folder.cur / message.key

    def current_path(self, uid: int) -> Path:
        """The file's path now (flags may have renamed it); MessageNotFound if expunged."""
        return self.folder.open_path(uid)

    def update(self, expunge: tuple[int, ...], seen: tuple[int, ...]) -> bool:
        """RFC 1939 §6 UPDATE. True when every marked message is gone."""
        if seen:
            try:
                state = self.folder.sync()
                for uid in seen:
                    info = state.get(uid)
                    if info is not None and "\\Seen" not in info.flags:
                        try:
                            self.folder.update_flags(uid, add=("\\Seen",))  # keeps flags IMAP set meanwhile
                        except MessageNotFound:
                            pass  # expunged by another session meanwhile
            except (StorageError, OSError) as e:
                log.warning("pop3: could not set \\Seen in %s: %s", self.folder.path, e)
        if not expunge:
            return True
        try:
            self.folder.expunge(expunge)
        except (StorageError, OSError) as e:
            log.error("pop3: UPDATE failed in %s: %s", self.folder.path, e)
            return False
        return True

    def close(self) -> None:
        self.lock.release()


def open_maildrop(maildir_root: Path, domain: str, local: str) -> MaildropSession:
    """Lock and snapshot a user's INBOX; MaildropInUse when another session has it."""
    md = Maildir.for_user(maildir_root, domain, local)
    md.ensure()
    lock = _SessionLock(md.root / LOCK_NAME)
    try:
        folder = md.folder("INBOX")
        state = folder.sync()
        messages = tuple(
            MaildropMessage(uid=m.uid, size=m.vsize, uidl=state.pop3_uidl(m), key=m.filename) for m in state.messages
        )
    except BaseException:
        lock.release()
        raise
    return MaildropSession(folder, Maildrop(messages), lock)
