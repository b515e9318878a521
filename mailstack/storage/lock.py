"""The `dovecot-uidlist.lock` dotlock, compatible with Dovecot's file-dotlock.c.

Dovecot and mailstack may serve one Maildir at the same time, so both must take the
same lock before they change `dovecot-uidlist` (and `dovecot-keywords`).

Invariants:
- The lock is the file `<path>.lock`, created with O_CREAT|O_EXCL and holding
  `<pid>:<hostname>` (what Dovecot writes and reads back).
- A lock is overridden only when it is stale: its owner is a dead process on this
  host, or neither the lock file nor the protected file changed for
  `stale_timeout` seconds (Dovecot: MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT = 120 s).
- Release removes the lock only if it is still our inode (never someone else's).
- Not reentrant; a thread lock makes Folder objects of one process queue up cheaply
  before they touch the file system.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

from .errors import LockTimeout, StorageError
from .safeio import write_all

__all__ = ["DotLock", "STALE_TIMEOUT"]

log = logging.getLogger(__name__)

STALE_TIMEOUT = 120
_STALE_PID_CHECK_SECS = 2
_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _thread_lock(path: str) -> threading.Lock:
    with _process_locks_guard:
        lock = _process_locks.get(path)
        if lock is None:
            lock = _process_locks[path] = threading.Lock()
        return lock


class DotLock:
    """`with DotLock(folder / "dovecot-uidlist"):` holds `dovecot-uidlist.lock`."""

    def __init__(self, path: Path, timeout: float = STALE_TIMEOUT + 2, stale_timeout: float = STALE_TIMEOUT):
        self.path = Path(path)
        self.lock_path = Path(str(path) + ".lock")
        self.timeout = timeout
        self.stale_timeout = stale_timeout
        self._ino: tuple[int, int] | None = None
        self._tlock = _thread_lock(str(self.lock_path))

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except FileNotFoundError:
            raise StorageError(f"folder directory missing: {self.lock_path.parent}") from None
        try:
            write_all(fd, f"{os.getpid()}:{socket.gethostname()}".encode())
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self._ino = (st.st_dev, st.st_ino)
        return True

    def _owner_pid(self) -> int | None:
        try:
            text = self.lock_path.read_text("ascii", "replace").strip()
        except OSError:
            return None
        pid, sep, host = text.partition(":")
        if not sep or host != socket.gethostname() or not pid.isdigit():
            return None
        return int(pid)

    def _is_stale(self, now: float) -> bool:
        try:
            st = os.lstat(self.lock_path)
        except FileNotFoundError:
            return False
        if st.st_mtime < now - _STALE_PID_CHECK_SECS:
            pid = self._owner_pid()
            if pid is not None and pid != os.getpid():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
                except PermissionError:
                    pass
        last_change = max(st.st_mtime, st.st_ctime)
        try:
            last_change = max(last_change, os.stat(self.path).st_mtime)
        except FileNotFoundError:
            pass
        return now > last_change + self.stale_timeout

    def acquire(self) -> None:
        if not self._tlock.acquire(timeout=self.timeout):
            raise LockTimeout(f"timeout waiting for {self.lock_path}")
        try:
            deadline = time.monotonic() + self.timeout
            wait = 0.002
            while not self._try_create():
                if self._is_stale(time.time()):
                    log.warning("overriding stale dotlock %s", self.lock_path)
                    try:
                        os.unlink(self.lock_path)
                    except FileNotFoundError:
                        pass
                    time.sleep(random.uniform(0.0, 0.05))
                    continue
                if time.monotonic() > deadline:
                    raise LockTimeout(f"timeout waiting for {self.lock_path}")
                time.sleep(wait * random.uniform(0.5, 1.5))
                wait = min(wait * 1.5, 0.1)
        except BaseException:
            self._tlock.release()
            raise

    def touch(self) -> None:
        """Refresh the lock's mtime during a long operation so nobody thinks it stale."""
        os.utime(self.lock_path)

    def release(self) -> None:
        try:
            st = os.lstat(self.lock_path)
            if (st.st_dev, st.st_ino) == self._ino:
                os.unlink(self.lock_path)
            else:
                log.warning("our dotlock %s was overridden", self.lock_path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            log.warning("our dotlock %s was deleted", self.lock_path)
        finally:
            self._ino = None
            self._tlock.release()

    def __enter__(self) -> DotLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
