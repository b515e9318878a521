"""Change notification for IDLE (RFC 2177), across sessions and processes.

Another process (the MDA, POP3, Dovecot, another ``mailstack serve``) changes a Maildir
without telling us, so the kernel tells us instead: one inotify descriptor per process
(``inotify_simple``), read on the event loop (``loop.add_reader``), with watches on a
watched folder's ``new/`` and ``cur/`` (a message arrives, is renamed for its flags, is
removed) and on the folder directory itself for ``dovecot-uidlist`` / ``dovecot-keywords``
being replaced (``IN_MOVED_TO`` / ``IN_CLOSE_WRITE``: Dovecot and we write them under a
lock file and rename). A session of this process that changes a folder calls
``poke(path)`` so its neighbours hear at once; so may any other channel (a database
notification from another host).

Where inotify cannot be had (no inotify in the kernel, ``fs.inotify.max_user_instances``
or ``max_user_watches`` exhausted, a folder that vanished) the folder is polled instead:
its fingerprint (the stat of ``new/``, ``cur/``, ``dovecot-uidlist``,
``dovecot-keywords``) every ``interval`` seconds (``[imap] poll_interval``, 0.5 s), so an
IDLE never fails for want of a watch. inotify does not see changes made by another host
on shared storage (NFS): the folders it watches are also checked every
``check_interval`` seconds (``[imap] idle_check_interval``, 30 s by default, Dovecot's
``mailbox_idle_check_interval``; 0 turns this off).

Invariants:
- One inotify descriptor per process and event loop, and one set of watches per folder
  however many sessions watch it; the watches go when the last watcher does.
- No timer runs per tick while every watched folder has its inotify watches: the only
  timer is the ``check_interval`` one (no stat at all between two checks).
- Watchers are callbacks (or the ``asyncio.Event`` of a ``Watch`` made without one);
  ``watch`` returns a handle whose ``close()`` removes it.
- Neither the reader nor the poller ever raises: a folder that vanished just stops being
  watched by the kernel and is polled (its fingerprint is all zeros) until nobody watches.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

try:
    import inotify_simple  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - a platform without it: polling only
    inotify_simple = None

__all__ = ["Notifier", "Watch", "DEFAULT_CHECK_INTERVAL"]

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL = 30.0  # Dovecot's mailbox_idle_check_interval

# new/ and cur/: a message arrives (rename from tmp/, or made in place), is renamed for its
# flags or moved new/ -> cur/, is removed; the directory itself goes.
_IN_CREATE, _IN_DELETE, _IN_MOVED_FROM, _IN_MOVED_TO = 0x100, 0x200, 0x40, 0x80
_IN_CLOSE_WRITE, _IN_DELETE_SELF, _IN_MOVE_SELF, _IN_ONLYDIR = 0x08, 0x400, 0x800, 0x01000000
_IN_Q_OVERFLOW, _IN_IGNORED = 0x4000, 0x8000
_DIR_MASK = _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
# the folder directory: only the uidlist and keywords files matter (renamed into place, or
# written in place by another implementation); not the index databases beside them.
_TOP_MASK = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
_TOP_NAMES = frozenset({"dovecot-uidlist", "dovecot-keywords"})
_STAMPED = ("new", "cur", "dovecot-uidlist", "dovecot-keywords")


def _stamp(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    for name in _STAMPED:
        try:
            st = os.stat(path / name)
            out.extend((st.st_mtime_ns, st.st_ino, st.st_size))
        except OSError:
            out.extend((0, 0, 0))
    return tuple(out)


class Watch:
    """A session's interest in one folder: ``callback()`` is called (on the event loop) when
    it may have changed; without a callback, ``event`` is set instead."""

    __slots__ = ("notifier", "path", "callback", "_event")

    def __init__(self, notifier: Notifier, path: Path, callback: Callable[[], None] | None = None) -> None:
        self.notifier = notifier
        self.path = path
        self.callback = callback
        self._event: asyncio.Event | None = None

    @property
    def event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def fire(self) -> None:
        if self.callback is not None:
            self.callback()
        else:
            self.event.set()

    def close(self) -> None:
        self.notifier._unwatch(self)


class _Folder:
    """One watched folder: its watchers, its kernel watches (empty: polled), its stamp."""

    __slots__ = ("watchers", "wds", "stamp")

    def __init__(self, stamp: tuple[int, ...]) -> None:
        self.watchers: set[Watch] = set()
        self.wds: tuple[int, ...] = ()
        self.stamp = stamp


class Notifier:
    """The process's change notifier (see the module docstring)."""

    def __init__(self, interval: float = 0.5, check_interval: float = DEFAULT_CHECK_INTERVAL,
                 *, use_inotify: bool = True) -> None:
        self.interval = interval
        self.check_interval = check_interval
        self._use_inotify = use_inotify and inotify_simple is not None
        self._folders: dict[Path, _Folder] = {}
        self._wd_path: dict[int, tuple[Path, bool]] = {}  # wd -> (folder, is the folder dir itself)
        self._ino: object | None = None  # inotify_simple.INotify, made at the first watch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None  # the poller of folders without watches
        self._check: asyncio.TimerHandle | None = None
        self._warned = False

    # -- what callers see ----------------------------------------------------------------
    @property
    def inotify_active(self) -> bool:
        return self._ino is not None

    @property
    def polled(self) -> list[Path]:
        """Folders watched by polling (no inotify watch for them)."""
        return [p for p, f in self._folders.items() if not f.wds]

    def watch(self, path: Path, callback: Callable[[], None] | None = None) -> Watch:
        w = Watch(self, path, callback)
        f = self._folders.get(path)
        if f is None:
            f = self._folders[path] = _Folder(_stamp(path))
            f.wds = self._add_watches(path)
        f.watchers.add(w)
        self._schedule()
        return w

    def poke(self, path: Path) -> None:
        """A change made by this process (or told by another channel): wake every watcher
        of ``path`` now. On the event loop."""
        f = self._folders.get(path)
        if f is None:
            return
        for w in list(f.watchers):
            try:
                w.fire()
            except Exception:  # pragma: no cover - one watcher never stops the others
                log.exception("imap: change watcher failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self._folders.clear()
        self._wd_path.clear()
        self._close_inotify()

    # -- inotify ---------------------------------------------------------------------------
    def _inotify(self) -> object | None:
        if self._ino is None and self._use_inotify:
            try:
                ino = inotify_simple.INotify(nonblocking=True)
            except OSError as e:  # EMFILE: fs.inotify.max_user_instances
                self._use_inotify = False
                log.warning("imap: no inotify (%s): IDLE polls folders every %.1fs", e, self.interval)
                return None
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(ino.fileno(), self._readable)
            self._ino = ino
        return self._ino

    def _add_kernel_watch(self, path: Path, mask: int) -> int:
        """One ``inotify_add_watch``; raises OSError (ENOSPC: fs.inotify.max_user_watches)."""
        ino = self._ino
        assert ino is not None
        return int(ino.add_watch(path, mask))  # type: ignore[attr-defined]

    def _add_watches(self, path: Path) -> tuple[int, ...]:
        if self._inotify() is None:
            return ()
        wds: list[int] = []
        try:
            for sub, mask in (("new", _DIR_MASK), ("cur", _DIR_MASK), ("", _TOP_MASK)):
                wd = self._add_kernel_watch(path / sub if sub else path, mask)
                self._wd_path[wd] = (path, not sub)
                wds.append(wd)
        except OSError as e:
            self._rm_watches(tuple(wds))
            if e.errno == errno.ENOSPC and not self._warned:  # once: it is the same for every folder
                self._warned = True
                log.warning("imap: inotify watches exhausted (fs.inotify.max_user_watches): "
                            "polling folders every %.1fs instead", self.interval)
            else:
                log.debug("imap: no inotify watch on %s (%s): polled", path, e)
            return ()
        return tuple(wds)

    def _rm_watches(self, wds: tuple[int, ...]) -> None:
        for wd in wds:
            if self._wd_path.pop(wd, None) is None:
                continue
            try:
                self._ino.rm_watch(wd)  # type: ignore[union-attr]
            except OSError:  # already gone with its directory (IN_IGNORED on its way)
                pass

    def _readable(self) -> None:
        ino = self._ino
        if ino is None:  # pragma: no cover - closed meanwhile
            return
        try:
            events = ino.read(timeout=0)  # type: ignore[attr-defined]
        except OSError as e:  # pragma: no cover - EAGAIN races
            log.debug("imap: inotify read: %s", e)
            return
        woken: set[Path] = set()
        for ev in events:
            if ev.mask & _IN_Q_OVERFLOW:  # the kernel dropped events: anything may have changed
                woken.update(self._folders)
                continue
            where = self._wd_path.get(ev.wd)
            if where is None:
                continue
            path, top = where
            if ev.mask & _IN_IGNORED:  # the directory is gone: poll the folder from now on
                self._wd_path.pop(ev.wd, None)
                self._demote(path)
                woken.add(path)
            elif not top or ev.mask & (_IN_DELETE_SELF | _IN_MOVE_SELF) or ev.name in _TOP_NAMES:
                woken.add(path)
        for path in woken:
            f = self._folders.get(path)
            if f is not None and f.wds and self.check_interval > 0:
                f.stamp = _stamp(path)  # one stat per burst of events, so the slow check stays quiet
            self.poke(path)

    def _demote(self, path: Path) -> None:
        """A folder loses its kernel watches: polled from now on."""
        f = self._folders.get(path)
        if f is None or not f.wds:
            return
        self._rm_watches(f.wds)
        f.wds = ()
        self._schedule()

    def _close_inotify(self) -> None:
        ino, self._ino = self._ino, None
        if ino is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(ino.fileno())  # type: ignore[attr-defined]
        ino.close()  # type: ignore[attr-defined]

    # -- polling ---------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start the poller if a folder has no watches, the slow check if one has."""
        if any(not f.wds for f in self._folders.values()):
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
        if self._check is None and self.check_interval > 0 and any(f.wds for f in self._folders.values()):
            self._check = asyncio.get_running_loop().call_later(self.check_interval, self._slow_check)

    def _slow_check(self) -> None:
        """Every ``check_interval``: what inotify cannot see (another host on NFS)."""
        self._check = None
        for path, f in list(self._folders.items()):
            if f.wds:
                self._compare(path, f)
        self._schedule()

    def _compare(self, path: Path, f: _Folder) -> None:
        stamp = _stamp(path)
        if stamp != f.stamp:
            f.stamp = stamp
            self.poke(path)

    async def _run(self) -> None:
        try:
            while any(not f.wds for f in self._folders.values()):
                await asyncio.sleep(self.interval)
                for path, f in list(self._folders.items()):
                    if not f.wds:
                        self._compare(path, f)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - never let the poller die silently
            log.exception("imap: change poller failed")

    def _unwatch(self, w: Watch) -> None:
        f = self._folders.get(w.path)
        if f is None:
            return
        f.watchers.discard(w)
        if not f.watchers:
            del self._folders[w.path]
            self._rm_watches(f.wds)
            if not self._folders and self._check is not None:
                self._check.cancel()
                self._check = None
