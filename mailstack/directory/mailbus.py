"""New-mail notification between hosts over PostgreSQL ``LISTEN``/``NOTIFY``.

Several hosts serving one mail root on shared storage (NFS, CephFS) cannot see each
other's changes through inotify, and polling every folder an IDLE session watches costs a
``stat`` round trip to the file server per folder per tick. When the directory is
PostgreSQL, every host already talks to one server that can fan a message out: after a
message is durably stored (``storage.hooks``), the storing host sends
``NOTIFY mailstack_mail, '<folder directory relative to the mail root>'`` (and so after
a flag change, an expunge or a copy into a folder: ``hooks.add_change``); every host
``LISTEN``s on that channel and pokes its IDLE notifier (``imap.notify.Notifier.poke``)
for ``<maildir_root>/<path>``, so an idler on host B hears of mail delivered on host A
within milliseconds (the issue asks for 2 s). Polling stays as the fallback.

Invariants:
- Never in the way of mail: the storage hook only puts the path in a bounded set
  (``MAX_PENDING`` folders; beyond it a path is dropped and the pollers find the change);
  one daemon thread sends the notifications on its own connection. A database that is
  down, slow or refusing costs notifications, never a delivery or a blocked thread of
  a server.
- The listener is one asyncio task per process with its own connection; a lost
  connection is reopened with backoff (``RETRY_INITIAL`` doubling up to ``RETRY_MAX``
  seconds); what was notified meanwhile is found by polling.
- A payload is trusted only as a path below the mail root: absolute paths, ``..``,
  empty or control characters, and anything over PostgreSQL's 8000-byte payload limit
  are ignored (a notification is a hint to look, never an instruction).
- The SQLite-only single-host setup is untouched: there is no bridge without
  PostgreSQL (``Bridge.for_directory`` returns None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Engine

from mailstack.storage import hooks

__all__ = ["CHANNEL", "Bridge", "MAX_PENDING", "RETRY_INITIAL", "RETRY_MAX", "folder_payload", "folder_from_payload"]

log = logging.getLogger(__name__)

CHANNEL = "mailstack_mail"
MAX_PAYLOAD = 7999  # PostgreSQL: a NOTIFY payload must be shorter than 8000 bytes
MAX_PENDING = 10000  # folders waiting to be announced; more are dropped (polling finds them)
RETRY_INITIAL = 0.5  # seconds before the first reconnect ...
RETRY_MAX = 30.0  # ... doubling up to this
CONNECT_TIMEOUT = 10  # seconds (libpq connect_timeout)
APPLICATION_NAME = "mailstack-mailbus"

Poke = Callable[[Path], None]


def folder_payload(root: Path, folder_dir: Path) -> str | None:
    """The payload that names ``folder_dir`` (relative to ``root``), or None outside it."""
    try:
        rel = folder_dir.relative_to(root)
    except ValueError:
        return None
    text = rel.as_posix()
    if text in ("", ".") or len(text.encode("utf-8", "surrogateescape")) > MAX_PAYLOAD:
        return None
    return text


def folder_from_payload(root: Path, payload: str) -> Path | None:
    """``root / payload`` for a payload that stays below ``root``; None for anything else."""
    if not payload or len(payload.encode("utf-8", "surrogateescape")) > MAX_PAYLOAD:
        return None
    if any(ord(c) < 0x20 or c in "\x7f\\" for c in payload):
        return None
    rel = PurePosixPath(payload)
    if rel.is_absolute() or any(part in ("", ".", "..") for part in payload.split("/")):
        return None
    return root.joinpath(*rel.parts)


def connect_params(engine: Engine) -> dict[str, Any]:
    """psycopg ``connect()`` keywords for the directory's engine (same server, database, user)."""
    _args, params = engine.dialect.create_connect_args(engine.url)
    out = {k: v for k, v in params.items() if k != "context"}
    out.setdefault("connect_timeout", CONNECT_TIMEOUT)
    # the listener's connection is idle for hours: TCP keepalives find a peer (or a NAT
    # entry) that vanished without a word, so the listener reconnects instead of hearing
    # nothing for ever (libpq ignores them on a unix socket)
    for key, value in (("keepalives", 1), ("keepalives_idle", 60), ("keepalives_interval", 10),
                       ("keepalives_count", 3)):
        out.setdefault(key, value)
    out["application_name"] = APPLICATION_NAME
    return out


class _Publisher:
    """The storage hook and the thread that turns stored messages into NOTIFYs."""

    def __init__(self, params: dict[str, Any], root: Path) -> None:
        self.params = params
        self.root = root
        self._pending: dict[str, None] = {}  # insertion-ordered set of payloads
        self._cond = threading.Condition()
        self._closed = False
        self._dropped = False
        self._thread = threading.Thread(target=self._run, name="mailbus-publish", daemon=True)
        self._thread.start()

    def __call__(self, folder_dir: Path, base: str, data: bytes) -> None:
        self.changed(folder_dir)

    def changed(self, folder_dir: Path) -> None:
        payload = folder_payload(self.root, folder_dir)
        if payload is None:
            return
        with self._cond:
            if payload not in self._pending:
                if len(self._pending) >= MAX_PENDING:
                    if not self._dropped:
                        log.warning("mailbus: %d folders waiting to be announced; dropping (IDLE falls back to polling)",
                                    MAX_PENDING)
                    self._dropped = True
                    return
                self._pending[payload] = None
            self._cond.notify()

    def _take(self) -> list[str] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            batch = list(self._pending)
            self._pending.clear()
            self._dropped = False
            return batch

    def _run(self) -> None:
        import psycopg

        conn: psycopg.Connection[Any] | None = None
        wait = RETRY_INITIAL
        try:
            while (batch := self._take()) is not None:
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(**self.params, autocommit=True)
                    for payload in batch:
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    wait = RETRY_INITIAL
                except psycopg.Error as e:
                    log.warning("mailbus: cannot notify (%s); retrying in %.1f s", str(e).strip() or type(e).__name__,
                                wait)
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                        conn = None
                    with self._cond:  # these are still worth telling, unless newer ones took the room
                        for payload in batch:
                            if len(self._pending) < MAX_PENDING:
                                self._pending.setdefault(payload, None)
                        self._cond.wait_for(lambda: self._closed, timeout=wait)
                    wait = min(wait * 2, RETRY_MAX)
        except Exception:  # the thread must never die silently; mail goes on without it
            log.exception("mailbus: publisher stopped")
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(CONNECT_TIMEOUT + 5)


class Bridge:
    """Publishes this process's deliveries and pokes its IDLE notifiers on everyone's.

    ``Bridge.for_directory(engine, root)`` (None unless PostgreSQL) registers the storage
    hook at once; ``listen(pokes)`` starts the listener on the running loop; ``close()``
    ends both.
    """

    def __init__(self, params: dict[str, Any], root: Path) -> None:
        self.params = params
        self.root = root
        self.pokes: list[Poke] = []
        self._publisher = _Publisher(params, root)
        hooks.add(self._publisher)
        hooks.add_change(self._publisher.changed)
        self._task: asyncio.Task[None] | None = None
        self._listening: asyncio.Event | None = None

    @classmethod
    def for_directory(cls, engine: Engine, root: Path) -> Bridge | None:
        if engine.dialect.name != "postgresql":
            return None
        return cls(connect_params(engine), Path(root))

    def listen(self, pokes: list[Poke]) -> None:
        """Start the listener task (on the running loop) that calls every poke; with no
        poke (no IMAP service in this process) nothing listens: no connection is spent."""
        self.pokes = list(pokes)
        self._listening = asyncio.Event()
        if self._task is None and self.pokes:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="mailbus-listen")

    async def wait_listening(self, timeout: float) -> bool:
        """True once the listener has run ``LISTEN`` (for tests and readiness)."""
        if self._listening is None:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout)
        return self._listening.is_set()

    def _deliver(self, payload: str) -> None:
        path = folder_from_payload(self.root, payload)
        if path is None:
            log.debug("mailbus: ignored payload %r", payload[:100])
            return
        for poke in self.pokes:
            try:
                poke(path)
            except Exception:
                log.exception("mailbus: a poke failed")

    async def _listen(self) -> None:
        import psycopg

        wait = RETRY_INITIAL
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(**self.params, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if self._listening is not None:
                        self._listening.set()
                    log.info("mailbus: listening for new mail of other hosts")
                    wait = RETRY_INITIAL
                    async for n in conn.notifies():
                        self._deliver(n.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as e:
                if self._listening is not None:
                    self._listening.clear()
                log.warning("mailbus: listener connection lost (%s); retrying in %.1f s",
                            str(e).strip() or type(e).__name__, wait)
            except Exception:
                log.exception("mailbus: listener failed; retrying in %.1f s", wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)

    async def close(self) -> None:
        hooks.remove(self._publisher)
        hooks.remove_change(self._publisher.changed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._publisher.close)
