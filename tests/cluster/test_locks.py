"""Dotlocks on shared storage: a lock names ``<pid>:<hostname>`` (Dovecot's format), and a
pid means something only on the host that wrote it.

A lock left by a process of *another* host is never broken because no process of that
pid runs here: only the stale timeout (nothing changed for ``stale_timeout`` seconds)
overrides it. A dead process of this host is overridden at once.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from mailstack.storage.errors import LockTimeout
from mailstack.storage.lock import DotLock


def dead_pid() -> int:
    pid = 4_000_000  # counting down to one that is not running here
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


def planted(tmp_path: Path, owner: str, age: float, stale_timeout: float = 60) -> DotLock:
    target = tmp_path / "dovecot-uidlist"
    target.write_text("3 V1 N1\n")
    lock = Path(str(target) + ".lock")
    lock.write_text(owner)
    then = time.time() - age
    os.utime(lock, (then, then))
    os.utime(target, (then, then))
    return DotLock(target, timeout=min(stale_timeout, 60) + 2, stale_timeout=stale_timeout)


def test_lock_of_a_dead_process_here_is_overridden(tmp_path: Path) -> None:
    lock = planted(tmp_path, f"{dead_pid()}:{socket.gethostname()}", age=5)
    with lock:
        assert lock.lock_path.read_text().startswith(f"{os.getpid()}:")


def test_lock_of_another_host_waits_for_the_stale_timeout(tmp_path: Path) -> None:
    lock = planted(tmp_path, f"{dead_pid()}:other-host.example.test", age=5)
    lock.timeout = 3.0  # well past the 2 s after which a pid of this host is checked
    with pytest.raises(LockTimeout):
        lock.acquire()
    assert lock.lock_path.read_text().endswith(":other-host.example.test")


def test_lock_of_another_host_is_overridden_once_stale(tmp_path: Path) -> None:
    # the lock's ctime is now (utime cannot set it): stale once nothing changed for 1 s
    lock = planted(tmp_path, f"{dead_pid()}:other-host.example.test", age=5, stale_timeout=1.0)
    with lock:
        assert lock.lock_path.read_text().startswith(f"{os.getpid()}:")
