"""One login path for every service: ``Authenticator.authenticate(service, user, password, ip)``.

IMAP, POP3 and submission (and ManageSieve later) call this one coroutine; it returns an
``AuthOutcome`` and each protocol turns it into its own reply:

============  =====================  ======================  ===================
outcome       IMAP                   POP3                    SMTP AUTH
============  =====================  ======================  ===================
OK            OK                     +OK                     235 2.7.0
FAILED        NO [AUTHENTICATIONFAILED]  -ERR [AUTH]         535 5.7.8
THROTTLED     (the same as FAILED: a blocked client learns nothing new)
BUSY          NO [UNAVAILABLE]       -ERR [SYS/TEMP]         454 4.7.0
UNAVAILABLE   NO [UNAVAILABLE]       -ERR [SYS/TEMP]         454 4.7.0
============  =====================  ======================  ===================

(RFC 5530 §3 UNAVAILABLE, RFC 3206 §4 SYS/TEMP, RFC 4954 §6 454 4.7.0.)

What happens, in order:

1. the per-client cap: at most ``[auth] max_inflight_per_client`` attempts of one client
   host (IPv4 address, IPv6 /64) in flight in this process; more are BUSY at once;
2. the shared throttle (``throttle``; account and /24-or-/64 network keys, see ``keys``):
   a blocked key is THROTTLED at once, with no hashing;
3. the hash pool: the directory lookup and the password hash run in this object's own
   ``ThreadPoolExecutor`` of ``[auth] hash_workers`` threads, never in the default
   executor that the MX, LMTP and IMAP storage use (so a login flood cannot delay a
   ``RCPT``); the lookup holds a database connection for its query only, never during
   the hash (``Directory.authenticate``), so the MX's own lookups do not queue behind
   it either; at most ``hash_queue`` attempts wait for a thread, more are BUSY at once;
4. the result is counted in the throttle (failure: both keys; success: the account's
   key is cleared), and logged as ONE mail-log line (``mailstack.maillog``)::

       event=auth id=- service=imap client=192.0.2.7 from=- to=- size=- status=auth_failed reply=- user=alice@example.test mechanism=PLAIN reason=password

   ``status`` is ``ok``, ``auth_failed`` (``reason=password`` or ``reason=blocked``),
   ``auth_busy`` or ``auth_unavailable``; ``client=`` is always the fourth key, so a
   fail2ban filter is ``^.*event=auth id=- service=\\S+ client=<HOST> .*status=auth_failed``.
   The password never reaches any log. The start of a block is also a WARNING on
   ``mailstack.auth``.

Where the throttle lives: by default in the directory database (``auth_failures``), so
every service, process and host that shares the directory shares it; ``[auth]
state_file`` puts it in a SQLite file of its own instead (one host); a directory in
memory gets an in-memory throttle. The
per-client in-flight cap and the hash pool are per process (they bound this process's
work). Store errors never block logins: they are logged and the attempt goes on.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailstack import maillog

from .keys import account_key, client_key, network_key
from .throttle import (
    Block,
    DirectoryThrottleStore,
    MemoryThrottleStore,
    SQLiteThrottleStore,
    ThrottlePolicy,
    ThrottleStore,
)

if TYPE_CHECKING:
    from mailstack.config import Config
    from mailstack.directory import Directory, User

__all__ = ["AuthLimits", "AuthOutcome", "AuthStatus", "Authenticator", "MAX_SASL_LINE", "state_path"]

log = logging.getLogger("mailstack.auth")

# RFC 4954 §4: a server must accept SASL response lines of at least 12288 octets. Every
# AUTH/AUTHENTICATE continuation line of SMTP and IMAP is bounded by this (PLAIN with a
# 4096-byte password, the longest the directory takes, is under 6 KB of base64).
MAX_SASL_LINE = 12288
DEFAULT_MAX_HASH_WORKERS = 8
_LOG_USER_MAX = 256


class AuthStatus(enum.Enum):
    OK = "ok"
    FAILED = "auth_failed"
    THROTTLED = "throttled"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The result of one login attempt; ``user`` is set exactly when ``status`` is OK."""

    status: AuthStatus
    user: User | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK

    @property
    def temporary(self) -> bool:
        """BUSY or UNAVAILABLE: the client should try again later (not a wrong password)."""
        return self.status in (AuthStatus.BUSY, AuthStatus.UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class AuthLimits:
    """Per-process bounds (see the module docstring)."""

    hash_workers: int = 2
    hash_queue: int = 64
    max_inflight_per_client: int = 10


def state_path(config: Config) -> Path | None:
    """The SQLite file of ``[auth] state_file``, when set; None: the throttle lives in the
    directory database (or in memory, for a directory in memory)."""
    raw = config.auth.state_file
    if not raw:
        return None
    p = Path(os.path.expanduser(raw))
    return p if p.is_absolute() else (config.base_dir / p).resolve()


def _in_memory(url: str) -> bool:
    m = re.match(r"^sqlite(?:\+\w+)?://(/?)([^?]*)", url)
    return m is not None and (not m.group(1) or m.group(2) in ("", ":memory:") or m.group(2).startswith("file:"))


class Authenticator:
    """The shared login path of one process; ``close()`` when the services have stopped."""

    def __init__(
        self,
        directory: Directory,
        *,
        store: ThrottleStore,
        limits: AuthLimits = AuthLimits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.store = store
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()  # counters: touched from loops and from pool threads
        self._pending = 0  # attempts submitted to the hash pool and not finished
        self._inflight: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, limits.hash_workers), thread_name_prefix="auth-hash")
        # One thread for the store: it serialises its use and keeps SQLite waits off the loop.
        self._store_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auth-throttle")
        self.hash_calls = 0  # password checks started (for tests and metrics)
        self._closed = False

    @classmethod
    def from_config(cls, config: Config, directory: Directory) -> Authenticator:
        a = config.auth
        policy = ThrottlePolicy(a.max_failures, a.failure_window, a.block_time, a.max_block_time)
        path = state_path(config)
        store: ThrottleStore
        if path is not None:
            store = SQLiteThrottleStore(path, policy)
        elif _in_memory(config.database.url):
            store = MemoryThrottleStore(policy)
        else:
            store = DirectoryThrottleStore(directory, policy)
        # 0: one per core, at most DEFAULT_MAX_HASH_WORKERS (each argon2id check holds 64 MiB),
        # for the whole serve: shared out among its [server] workers processes (at least one
        # each), so N workers on N cores do not run N x N checks of 64 MiB at once
        cores = os.cpu_count() or 1
        processes = config.server.workers or cores
        workers = a.hash_workers or max(1, min(cores, DEFAULT_MAX_HASH_WORKERS) // processes)
        return cls(directory, store=store,
                   limits=AuthLimits(workers, a.hash_queue, a.max_inflight_per_client))

    def close(self) -> None:
        """Stop the pools (waiting for checks already running) and close the store; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._store_pool.submit(self.store.close)
        self._store_pool.shutdown(wait=True)

    # -- the login path -------------------------------------------------------------------

    async def authenticate(self, service: str, username: str, password: str, client_ip: str | None, *,
                           mechanism: str = "PLAIN") -> AuthOutcome:
        """Check one login (see the module docstring); never raises for bad input or a broken store."""
        client = client_key(client_ip)
        if client is not None and not self._enter(client):
            return self._done(service, username, client_ip, mechanism,
                              AuthOutcome(AuthStatus.BUSY, reason="client_busy"))
        try:
            return await self._attempt(service, username, password, client_ip, mechanism)
        finally:
            if client is not None:
                self._leave(client)

    async def _attempt(self, service: str, username: str, password: str, client_ip: str | None,
                       mechanism: str) -> AuthOutcome:
        keys = [account_key(username)]
        net = network_key(client_ip)
        if net is not None:
            keys.append(net)
        now = self._clock()
        block = await self._store_call(self.store.blocked, keys, now)
        if isinstance(block, Block):
            return self._done(service, username, client_ip, mechanism,
                              AuthOutcome(AuthStatus.THROTTLED, reason="blocked"))
        outcome = await self._check(username, password)
        if outcome.status is AuthStatus.FAILED:
            started = await self._store_call(self.store.failure, keys, self._clock())
            for b in started or ():
                log.warning("auth: %s blocked for %.0fs after %d failed logins (last: %s from %s via %s)",
                            b.key, b.until - self._clock(), b.failures, maillog.quote(username[:_LOG_USER_MAX]),
                            client_ip or "unix", service)
        elif outcome.ok:
            await self._store_call(self.store.success, keys[0])
        return self._done(service, username, client_ip, mechanism, outcome)

    async def _check(self, username: str, password: str) -> AuthOutcome:
        with self._lock:
            if self._pending >= self.limits.hash_workers + self.limits.hash_queue:
                return AuthOutcome(AuthStatus.BUSY, reason="queue_full")
            self._pending += 1
        try:
            fut: Future[AuthOutcome] = self._pool.submit(self._verify, username, password)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._release()
            return AuthOutcome(AuthStatus.UNAVAILABLE, reason="stopping")
        fut.add_done_callback(self._release)
        return await asyncio.wrap_future(fut)

    def _verify(self, username: str, password: str) -> AuthOutcome:
        """In a hash-pool thread: the directory lookup and the password hash."""
        from mailstack.directory import DirectoryError, DirectoryUnavailable

        with self._lock:
            self.hash_calls += 1
        try:
            user = self.directory.authenticate(username, password)
        except DirectoryUnavailable as e:
            log.warning("auth: directory unavailable: %s", e)
            return AuthOutcome(AuthStatus.UNAVAILABLE, reason="directory")
        except (DirectoryError, ValueError, TypeError):
            user = None
        except Exception:
            log.exception("auth: unexpected error while checking a password")
            return AuthOutcome(AuthStatus.UNAVAILABLE, reason="error")
        if user is None:
            return AuthOutcome(AuthStatus.FAILED, reason="password")
        return AuthOutcome(AuthStatus.OK, user=user)

    # -- bookkeeping ----------------------------------------------------------------------

    def _release(self, _fut: object = None) -> None:
        with self._lock:
            self._pending -= 1

    def _enter(self, client: str) -> bool:
        with self._lock:
            n = self._inflight.get(client, 0)
            if n >= self.limits.max_inflight_per_client:
                return False
            self._inflight[client] = n + 1
            return True

    def _leave(self, client: str) -> None:
        with self._lock:
            n = self._inflight.get(client, 0) - 1
            if n > 0:
                self._inflight[client] = n
            else:
                self._inflight.pop(client, None)

    async def _store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store operation in the store's thread; a broken store is logged, never fatal."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._store_pool, fn, *args)
        except (OSError, RuntimeError) as e:
            log.warning("auth: throttle store: %s", e)
        except Exception as e:  # sqlite3.Error and friends
            log.warning("auth: throttle store %s: %s", type(e).__name__, e)
        return None

    @staticmethod
    def _done(service: str, username: str, client_ip: str | None, mechanism: str,
              outcome: AuthOutcome) -> AuthOutcome:
        status = {
            AuthStatus.OK: "ok",
            AuthStatus.FAILED: "auth_failed",
            AuthStatus.THROTTLED: "auth_failed",
            AuthStatus.BUSY: "auth_busy",
            AuthStatus.UNAVAILABLE: "auth_unavailable",
        }[outcome.status]
        user = outcome.user.address if outcome.user is not None else username[:_LOG_USER_MAX]
        extra: dict[str, object] = {"user": user, "mechanism": mechanism}
        if outcome.reason:
            extra["reason"] = outcome.reason
        maillog.log_event("auth", queue_id=None, service=service, client=client_ip or "unix", sender=None,
                          recipients=None, size=None, status=status, reply=None, **extra)
        return outcome
