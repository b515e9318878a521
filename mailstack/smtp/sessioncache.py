"""Idle outbound SMTP sessions kept open for the next message to the same destination.

Postfix's ``scache``: after a delivery the client does not say QUIT at once but parks the
session here under its key (``smtp.outbound`` makes it: the MX host, its address and
port, and the TLS requirement the session was opened under, so a destination whose
policy asks for MTA-STS or DANE never gets a session made under a weaker one). The next
delivery to that key takes it out and sends ``RSET`` first (RFC 5321 §4.1.1.5).

Choices (Postfix's defaults where it has one):
- a parked session is closed (QUIT) after ``idle_time`` seconds unused
  (``smtp_connection_cache_time_limit = 2s``);
- at most ``max_idle`` sessions are parked in all; parking one more closes the oldest
  (every parked session is an open socket that does not count against
  ``[queue] max_connections``, so it is bounded by the same number);
- a session is only ever handed out on the event loop that parked it, and only while
  its peer has not closed it nor sent anything unasked (a ``421`` while idle, RFC 5321
  §3.8): such a session is closed instead.

Invariants: a session is in the cache or in use, never both; ``close()`` ends every
parked session and the tasks that were closing expired ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["Session", "SessionCache"]

log = logging.getLogger(__name__)


class Session(Protocol):
    """What the cache needs of a session."""

    def idle_usable(self) -> bool:
        """Still open, nothing unread from the peer."""
        ...

    async def quit(self) -> None: ...

    def abort(self) -> None:
        """Drop the socket without a word (its loop is gone)."""
        ...


S = TypeVar("S", bound=Session)


@dataclass
class _Parked(Generic[S]):
    key: Hashable
    session: S
    loop: asyncio.AbstractEventLoop
    timer: asyncio.TimerHandle


class SessionCache(Generic[S]):
    """Parked sessions by key, most recently parked handed out first."""

    def __init__(self, idle_time: float = 2.0, max_idle: int = 50) -> None:
        self.idle_time = idle_time
        self.max_idle = max(1, max_idle)
        self._parked: OrderedDict[int, _Parked[S]] = OrderedDict()  # id(session) -> entry, oldest first
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._parked)

    def put(self, key: Hashable, session: S) -> None:
        """Park ``session`` under ``key`` (called on its event loop)."""
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.idle_time, self._expire, id(session))
        self._parked[id(session)] = _Parked(key, session, loop, timer)
        while len(self._parked) > self.max_idle:
            _, oldest = self._parked.popitem(last=False)
            self._end(oldest)

    def take(self, key: Hashable) -> S | None:
        """A parked, still usable session of ``key``, removed from the cache; None if none."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for sid in reversed(list(self._parked)):
            entry = self._parked[sid]
            if entry.key != key:
                continue
            del self._parked[sid]
            entry.timer.cancel()
            if entry.loop is not here or entry.loop.is_closed():
                if not entry.loop.is_closed():
                    self._end(entry)
                continue
            if not entry.session.idle_usable():
                self._end(entry)
                continue
            return entry.session
        return None

    def discard(self, key: Hashable) -> None:
        """Close every parked session of ``key`` (its peer dropped one: the rest are suspect)."""
        for sid in [s for s, e in self._parked.items() if e.key == key]:
            self._end(self._parked.pop(sid))

    async def close(self, timeout: float = 5.0) -> None:
        """Close every parked session (QUIT, all at once); within ``timeout`` seconds, after
        which what is left is dropped without a word."""
        for sid in list(self._parked):
            self._end(self._parked.pop(sid))
        if self._closing:
            _done, late = await asyncio.wait(set(self._closing), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    def _expire(self, sid: int) -> None:
        entry = self._parked.pop(sid, None)
        if entry is not None:
            self._end(entry)

    def _end(self, entry: _Parked[S]) -> None:
        entry.timer.cancel()
        loop = entry.loop
        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            loop.call_soon_threadsafe(entry.session.abort)
            return
        task = loop.create_task(self._quit(entry.session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _quit(session: S) -> None:
        try:
            await session.quit()
        except asyncio.CancelledError:
            session.abort()
            raise
        except Exception:  # noqa: BLE001 - a session that will not say goodbye is dropped
            session.abort()
