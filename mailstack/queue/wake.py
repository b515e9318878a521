"""Waking the queue runners after an enqueue, in this process and in others.

Two paths, both best effort (a lost wake-up only waits for the runner's next scan,
``[queue] scan_interval``):

- in this process: runners ``register(queue_dir, runner)``; ``notify(queue_dir)`` calls
  ``runner.wake()`` on each of that directory (held weakly: a runner that is gone is
  simply not called);
- across processes and hosts: the mtime of ``<queue dir>/.wake`` (``WAKE_FILE``), which
  every runner watches; ``touch_wake`` sets it.

``announce(queue_dir)`` does both, and is what ``QueueStore.enqueue`` calls once the
message is durably queued; ``on_enqueue(hook)`` adds a hook to it (tests, extensions).

Invariants:
- nothing here ever fails an enqueue that is already on disk: ``announce`` swallows
  (and logs) every error of a hook or of the wake file;
- the wake file is created 0600 and never fsynced (its mtime is a hint, not state).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["WAKE_FILE", "Wakeable", "announce", "notify", "on_enqueue", "register", "touch_wake", "unregister"]

log = logging.getLogger(__name__)

WAKE_FILE = ".wake"  # runners watch its mtime; touched after every enqueue

_HOOKS: list[Callable[[Path], None]] = []


class Wakeable(Protocol):
    """A runner: ``wake()`` makes it scan the queue soon; called on the event loop's thread
    or any other (it must be thread-safe, e.g. ``loop.call_soon_threadsafe``)."""

    def wake(self) -> None: ...


_RUNNERS: weakref.WeakKeyDictionary[Wakeable, Path] = weakref.WeakKeyDictionary()


def register(queue_dir: Path, runner: Wakeable) -> None:
    """Have ``notify(queue_dir)`` wake ``runner`` (until ``unregister`` or it is gone)."""
    _RUNNERS[runner] = Path(queue_dir)


def unregister(runner: Wakeable) -> None:
    _RUNNERS.pop(runner, None)


def notify(queue_dir: Path) -> None:
    """Wake the runners of this process that serve ``queue_dir``."""
    target = Path(queue_dir)
    for runner, directory in list(_RUNNERS.items()):
        if directory == target:
            runner.wake()


def touch_wake(queue_dir: Path) -> None:
    """Wake runners in other processes (they watch this file's mtime); OSError if it cannot."""
    p = Path(queue_dir) / WAKE_FILE
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    os.utime(p)


def on_enqueue(hook: Callable[[Path], None]) -> None:
    """Call ``hook(queue_dir)`` after every durable enqueue in this process."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def remove_hook(hook: Callable[[Path], None]) -> None:
    if hook in _HOOKS:
        _HOOKS.remove(hook)


def announce(queue_dir: Path) -> None:
    """After a durable enqueue: the wake file, this process's runners, the hooks. Never raises."""
    try:
        touch_wake(queue_dir)
    except OSError as e:
        log.debug("queue: cannot touch %s: %s", Path(queue_dir) / WAKE_FILE, e)
    for hook in [notify, *_HOOKS]:
        try:
            hook(queue_dir)
        except Exception:  # a hook must never fail an enqueue that is already on disk
            log.exception("queue: enqueue hook failed")
