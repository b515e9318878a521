"""Change notification for IDLE (RFC 2177), across sessions and processes.

Another process (the MDA, POP3, Dovecot, another ``mailstack serve``) changes a Maildir
without telling us, so changes are found on disk: a folder's fingerprint (the mtimes of
``new/`` and ``cur/`` and the stat of ``dovecot-uidlist`` / ``dovecot-keywords``, see
``mailbox.folder_stamp``) is polled every ``interval`` seconds (0.5 s by default), far
inside the 2 s the issue allows, for the folders that idling sessions watch. A session of
this process that changes a folder calls ``poke(path)`` so its neighbours hear at once.

Invariants:
- One poller per process and event loop, whatever the number of idling sessions: the
  cost is a few ``stat`` calls per watched folder per tick, not per session.
- Watchers are ``asyncio.Event`` objects; ``watch`` returns a handle whose ``close()``
  removes it; a folder nobody watches is no longer polled.
- Polling never raises: a folder that vanished just stops being polled.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

__all__ = ["Notifier", "Watch"]

log = logging.getLogger(__name__)


def _stamp(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    for name in ("new", "cur", "dovecot-uidlist", "dovecot-keywords"):
        try:
            st = os.stat(path / name)
            out.extend((st.st_mtime_ns, st.st_ino, st.st_size))
        except OSError:
            out.extend((0, 0, 0))
    return tuple(out)


class Watch:
    """A session's interest in one folder; ``event`` is set when it (may have) changed."""

    def __init__(self, notifier: Notifier, path: Path) -> None:
        self.notifier = notifier
        self.path = path
        self.event = asyncio.Event()

    def close(self) -> None:
        self.notifier._unwatch(self)


class Notifier:
    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._watches: dict[Path, set[Watch]] = {}
        self._stamps: dict[Path, tuple[int, ...]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, path: Path) -> Watch:
        w = Watch(self, path)
        if path not in self._watches:
            self._watches[path] = set()
            self._stamps[path] = _stamp(path)
        self._watches[path].add(w)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return w

    def _unwatch(self, w: Watch) -> None:
        ws = self._watches.get(w.path)
        if ws is None:
            return
        ws.discard(w)
        if not ws:
            del self._watches[w.path]
            self._stamps.pop(w.path, None)

    def poke(self, path: Path) -> None:
        """A change made by this process: wake every watcher of ``path`` now."""
        for w in self._watches.get(path, ()):
            w.event.set()

    async def _run(self) -> None:
        try:
            while self._watches:
                await asyncio.sleep(self.interval)
                for path in list(self._watches):
                    stamp = _stamp(path)
                    if stamp != self._stamps.get(path):
                        self._stamps[path] = stamp
                        self.poke(path)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - never let the poller die silently
            log.exception("imap: change poller failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._watches.clear()
