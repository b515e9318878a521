"""The thin asyncio adapter around ``mailstack.managesieve.core``
(``mailstack.managesieve.server:start``, the ``managesieve`` service).

One ``net.StreamConnection`` per client feeds bytes to a ``ManageSieveCore`` and carries
out its effects: logins through ``mailstack.auth.Authenticator`` (the one login path and
failed-login throttle of IMAP and POP3), STARTTLS (``loop.start_tls`` with the SNI-aware
contexts of every listener), and script requests on the user's ``ScriptStore`` (in a
thread pool of its own, ``SCRIPT_WORKERS``: they compile scripts and fsync).

Invariants:
- Plaintext AUTHENTICATE PLAIN only under TLS, or from loopback when ``[auth]
  allow_plaintext_on_loopback`` (RFC 5804 §2.1, Dovecot's rule). A blocked client or
  account gets the normal ``NO``; a busy hash pool or a directory that is down ``NO (TRYLATER)``.
- Input is bounded by the core's reader (lines, literals) and by
  ``net.StreamConnection.MAX_INBOX`` (reading pauses); a client silent for
  ``IDLE_TIMEOUT`` seconds (``LOGIN_TIMEOUT`` before it has logged in) gets ``BYE`` and is
  disconnected.
- The service's connection caps (``ServiceContext.limits``) apply per client address.
- No traceback reaches a client: unexpected errors are logged and the client gets
  ``BYE (TRYLATER)`` before the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mailstack import net
from mailstack.auth import Authenticator, MemoryThrottleStore, ThrottlePolicy
from mailstack.maillog import quote
from mailstack.service import ServiceContext
from mailstack.sieve.store import ScriptStore
from mailstack.storage import Maildir, StorageError

from . import responses as R
from .core import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    CheckScript,
    CheckSpace,
    Close,
    DeleteScript,
    GetScript,
    ListScripts,
    LoginFailed,
    LoginOK,
    ManageSieveCore,
    PutScript,
    RenameScript,
    Send,
    SetActive,
    StartTLS,
    Unauthenticate,
)
from .scripts import execute

if TYPE_CHECKING:
    from mailstack.directory import Directory

__all__ = ["IDLE_TIMEOUT", "LOGIN_TIMEOUT", "ManageSieveService", "start"]

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 1800.0  # as IMAP's autologout (RFC 3501 §5.4); RFC 5804 names none
LOGIN_TIMEOUT = 60.0  # before AUTHENTICATE succeeds, as IMAP's [imap] login_timeout default
_REQUESTS = (ListScripts, GetScript, PutScript, CheckScript, CheckSpace, SetActive, DeleteScript, RenameScript)
# Script requests run in threads of their own, never in the loop's default executor that
# IMAP, LMTP and delivery share: compiling a 1 MiB script takes seconds, and a few clients
# uploading at once must not queue anyone's mail behind them.
SCRIPT_WORKERS = 2
_CHANGES = (PutScript, SetActive, DeleteScript, RenameScript)


class _Connection(net.StreamConnection):
    """A client connection (inbox, flow control, STARTTLS): ``net.StreamConnection``."""


class ManageSieveService:
    """A running ManageSieve service: listeners, connections, throttle. ``stop(grace)`` ends it."""

    name = "managesieve"

    def __init__(
        self,
        *,
        maildir_root: Path,
        directory: Directory,
        tls_context: ssl.SSLContext | None,
        limits: net.ConnectionLimits,
        allow_plaintext_on_loopback: bool = True,
        auth: Authenticator | None = None,
        owns_auth: bool | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.maildir_root = maildir_root
        self.directory = directory
        self.tls_context = tls_context
        self.limits = limits
        self.allow_plaintext_on_loopback = allow_plaintext_on_loopback
        self.owns_auth = auth is None if owns_auth is None else owns_auth
        self.auth = auth or Authenticator(directory, store=MemoryThrottleStore(ThrottlePolicy()))
        self.idle_timeout = idle_timeout
        self.servers: list[asyncio.Server] = []
        self.connections: set[_Connection] = set()
        self.inflight = net.InFlight()
        self.executor = ThreadPoolExecutor(max_workers=SCRIPT_WORKERS, thread_name_prefix="managesieve")

    def factory(self, implicit_tls: bool) -> net.ProtocolFactory:
        return lambda: _Connection(self, implicit_tls)

    async def stop(self, grace: float) -> None:
        await net.stop_sessions("managesieve", self.servers, self.inflight, self.connections,
                                R.bye("Server shutting down.", "TRYLATER").to_bytes(), grace)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.owns_auth:
            await asyncio.to_thread(self.auth.close)

    # -- one connection ---------------------------------------------------------

    async def session(self, conn: _Connection) -> None:
        assert conn.transport is not None
        ip = net.peer_ip(conn.transport)
        if not self.limits.acquire(ip):
            conn.write(R.bye("Too many connections, try again later.", "TRYLATER").to_bytes())
            conn.close()
            return
        core = ManageSieveCore(
            tls_active=conn.implicit_tls,
            tls_available=self.tls_context is not None and not conn.implicit_tls,
            plaintext_allowed=self.allow_plaintext_on_loopback and net.is_loopback_peer(conn.transport),
        )
        try:
            await self._run(conn, core, ip)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError) as e:
            log.debug("managesieve: connection from %s ended: %s", ip, e)
        except Exception:
            log.exception("managesieve: internal error in a session from %s", ip)
            conn.write(R.bye("Internal server error.", "TRYLATER").to_bytes())
        finally:
            self.limits.release(ip)
            conn.close()

    async def _run(self, conn: _Connection, core: ManageSieveCore, ip: str | None) -> None:
        out: list[bytes] = []
        store: ScriptStore | None = None
        while True:
            ev = core.next_event()
            if isinstance(ev, Send):
                out.append(ev.data)
                continue
            if out:  # everything answered so far in one write
                conn.write(b"".join(out))
                out.clear()
            if ev is NEED_DATA:
                await conn.drain()
                try:
                    wait = self.idle_timeout if core.username else LOGIN_TIMEOUT
                    async with asyncio.timeout(wait):
                        data = await conn.read()
                except TimeoutError:
                    conn.write(R.bye("Disconnected for inactivity.").to_bytes())
                    return
                core.receive_data(data)
            elif isinstance(ev, Authenticate):
                result, store = await self._login(ev, ip)
                core.login_done(result)
            elif isinstance(ev, StartTLS):
                assert self.tls_context is not None
                await conn.drain()
                await conn.start_tls(self.tls_context)
                core.tls_done()
            elif isinstance(ev, Unauthenticate):
                store = None
            elif isinstance(ev, _REQUESTS):
                assert store is not None, "a script request before login"
                async with self.inflight.hold():
                    response = await asyncio.get_running_loop().run_in_executor(self.executor, execute, store, ev)
                if isinstance(ev, _CHANGES):
                    log.info("managesieve: %s user=%s client=%s ok=%s", type(ev).__name__.lower(),
                             quote(core.username or ""), ip or "unix", response.ok)
                core.request_done(response)
            elif isinstance(ev, Close):
                await conn.drain()
                return
            elif ev is PAUSED:  # pragma: no cover - every effect is resolved above
                raise RuntimeError("ManageSieve core paused without an effect")

    async def _login(self, ev: Authenticate, ip: str | None) -> tuple[LoginOK | LoginFailed, ScriptStore | None]:
        outcome = await self.auth.authenticate("managesieve", ev.username, ev.password, ip, mechanism=ev.mechanism)
        if outcome.temporary:
            return LoginFailed(R.TRYLATER), None
        user = outcome.user
        if user is None:  # failed or throttled: the same answer
            return LoginFailed(R.AUTH_FAILED), None
        try:
            home = Maildir.for_user(self.maildir_root, user.domain, user.local).root
        except StorageError as e:
            log.error("managesieve: no Maildir for %s: %s", user.address, e)
            return LoginFailed(R.TRYLATER), None
        log.info("managesieve: login user=%s client=%s mechanism=%s", quote(user.address), ip or "unix",
                 ev.mechanism)
        return LoginOK(user.address), ScriptStore(home)


async def start(ctx: ServiceContext) -> ManageSieveService:
    """``mailstack serve managesieve``: listen on ``[sieve] managesieve_listen`` (STARTTLS)."""
    cfg = ctx.config
    service = ManageSieveService(
        maildir_root=cfg.storage.maildir_root,
        directory=ctx.directory,
        tls_context=ctx.tls.server,
        limits=ctx.limits,
        allow_plaintext_on_loopback=cfg.auth.allow_plaintext_on_loopback,
        auth=ctx.auth or Authenticator.from_config(cfg, ctx.directory),
        owns_auth=ctx.auth is None,
    )
    service.servers = await net.open_listeners(
        "managesieve", cfg.listeners("managesieve"), lambda _addr, tls: service.factory(tls), ctx.tls.server
    )
    return service
