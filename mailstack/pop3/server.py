"""The thin asyncio adapter around ``mailstack.pop3.core`` (``mailstack.pop3.server:start``).

One ``asyncio.Protocol`` per connection feeds bytes to a ``POP3Core`` and carries out
its effects: authentication (``mailstack.auth.Authenticator``: the one login path), the
maildrop lock and snapshot (storage, in a thread), STLS (``loop.start_tls``), message
streaming and the UPDATE.

Invariants:
- Replies go out in command order; replies to pipelined commands are batched into one
  write (RFC 2449 §6.6).
- Plaintext USER/PASS/AUTH PLAIN only under TLS, or from loopback when
  ``[auth] allow_plaintext_on_loopback`` (RFC 2595 §2.1 / Dovecot's rule). A blocked
  client or account gets the normal ``-ERR [AUTH]``; a busy hash pool or a directory that
  is down ``-ERR [SYS/TEMP]`` (RFC 3206 §4). Lines, AUTH continuations included, are
  bounded by the core (``core.MAX_LINE``).
- Bytes received before a STLS handshake are dropped (RFC 2595 §4).
- A client silent for ``[pop3] idle_timeout`` seconds is disconnected (RFC 1939 §3:
  at least 10 minutes); input is paused while more than ``net.StreamConnection.MAX_INBOX`` bytes wait.
- Messages are streamed in chunks with flow control: a large message is never held
  whole, let alone twice.
- The maildrop lock is released whenever the session ends (QUIT, drop, timeout,
  error, server stop); a crash drops it with the process (kernel flock).
- No traceback ever reaches a client: unexpected errors are logged and the client gets
  ``-ERR [SYS/TEMP]`` before the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from mailstack import net
from mailstack.auth import Authenticator, MemoryThrottleStore, ThrottlePolicy
from mailstack.maillog import quote
from mailstack.service import ServiceContext
from mailstack.storage.errors import MessageNotFound, StorageError

from . import replies as R
from .core import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    Close,
    LoginFailed,
    LoginOK,
    MessageEncoder,
    POP3Core,
    Retrieve,
    Send,
    StartTLS,
    Update,
)
from .maildrop import MaildropInUse, MaildropSession, open_maildrop

if TYPE_CHECKING:
    from mailstack.directory import Directory

__all__ = ["POP3Service", "start"]

log = logging.getLogger(__name__)

_READ_CHUNK = 256 * 1024  # file read size while streaming a message
_FIRST_CHUNK = 128 * 1024  # read on the loop; a message this small goes out in one write
DEFAULT_IDLE_TIMEOUT = 600.0  # RFC 1939 §3: "at least 10 minutes"


class _Connection(net.StreamConnection):
    """A client connection (inbox, flow control, STARTTLS): ``net.StreamConnection``."""


class POP3Service:
    """A running POP3 service: listeners, connections, throttle. ``stop(grace)`` ends it."""

    name = "pop3"

    def __init__(
        self,
        *,
        hostname: str,
        maildir_root: Path,
        directory: Directory,
        tls_context: ssl.SSLContext | None,
        limits: net.ConnectionLimits,
        allow_plaintext_on_loopback: bool = True,
        auth: Authenticator | None = None,
        owns_auth: bool | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.hostname = hostname
        self.maildir_root = maildir_root
        self.directory = directory
        self.tls_context = tls_context
        self.limits = limits
        self.allow_plaintext_on_loopback = allow_plaintext_on_loopback
        self.owns_auth = auth is None if owns_auth is None else owns_auth  # close it at stop
        self.auth = auth or Authenticator(directory, store=MemoryThrottleStore(ThrottlePolicy()))
        self.idle_timeout = idle_timeout
        self.servers: list[asyncio.Server] = []
        self.connections: set[_Connection] = set()
        self.inflight = net.InFlight()

    def factory(self, implicit_tls: bool) -> net.ProtocolFactory:
        return lambda: _Connection(self, implicit_tls)

    async def stop(self, grace: float) -> None:
        await net.stop_sessions("pop3", self.servers, self.inflight, self.connections,
                                R.err("Server shutting down.", "SYS/TEMP").to_bytes(), grace)
        if self.owns_auth:
            await asyncio.to_thread(self.auth.close)

    # -- one connection ---------------------------------------------------------

    async def session(self, conn: _Connection) -> None:
        assert conn.transport is not None
        ip = net.peer_ip(conn.transport)
        if not self.limits.acquire(ip):
            conn.write(R.err("Too many connections, try again later.", "SYS/TEMP").to_bytes())
            conn.close()
            return
        loopback = net.is_loopback_peer(conn.transport)
        core = POP3Core(
            self.hostname,
            tls_active=conn.implicit_tls,
            tls_available=self.tls_context is not None and not conn.implicit_tls,
            plaintext_allowed=self.allow_plaintext_on_loopback and loopback,
        )
        drop: list[MaildropSession] = []
        try:
            await self._run(conn, core, ip, drop)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError) as e:
            log.debug("pop3: connection from %s ended: %s", ip, e)
        except Exception:
            log.exception("pop3: internal error in a session from %s", ip)
            conn.write(R.err("Internal server error.", "SYS/TEMP").to_bytes())
        finally:
            for d in drop:
                d.close()
            self.limits.release(ip)
            conn.close()

    async def _run(self, conn: _Connection, core: POP3Core, ip: str | None, drop: list[MaildropSession]) -> None:
        out: list[bytes] = []
        while True:
            ev = core.next_event()
            if isinstance(ev, Send):
                out.append(ev.data)
                continue
            if out:  # batch everything answered so far into one write
                conn.write(b"".join(out))
                out.clear()
            if ev is NEED_DATA:
                await conn.drain()
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await conn.read()
                except TimeoutError:
                    conn.write(R.err("Disconnected for inactivity.").to_bytes())
                    return
                core.receive_data(data)
            elif isinstance(ev, Retrieve):
                await self._retrieve(conn, drop[0], ev)
            elif isinstance(ev, Authenticate):
                core.login_done(await self._login(ev, ip, drop))
            elif isinstance(ev, StartTLS):
                assert self.tls_context is not None
                await conn.drain()
                await conn.start_tls(self.tls_context)
                core.tls_done()
            elif isinstance(ev, Update):
                async with self.inflight.hold():
                    ok = await asyncio.to_thread(drop[0].update, ev.expunge, ev.seen)
                log.info("pop3: update user=%s client=%s deleted=%d ok=%s", quote(core.username), ip or "unix",
                         len(ev.expunge), ok)
                core.update_done(ok)
            elif isinstance(ev, Close):
                await conn.drain()
                return
            elif ev is PAUSED:  # pragma: no cover - every effect is resolved above
                raise RuntimeError("POP3 core paused without an effect")

    async def _login(self, ev: Authenticate, ip: str | None, drop: list[MaildropSession]) -> LoginOK | LoginFailed:
        outcome = await self.auth.authenticate("pop3", ev.username, ev.password, ip, mechanism=ev.mechanism)
        if outcome.temporary:
            return LoginFailed(R.SYS_TEMP)  # RFC 3206 §4: try again later
        user = outcome.user
        if user is None:  # failed or throttled: the same answer
            return LoginFailed(R.AUTH_FAILED)
        fut = asyncio.ensure_future(asyncio.to_thread(open_maildrop, self.maildir_root, user.domain, user.local))
        try:
            session = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_close_if_opened)
            raise
        except MaildropInUse:
            log.info("pop3: maildrop in use user=%s client=%s", quote(user.address), ip or "unix")
            return LoginFailed(R.IN_USE)
        except (StorageError, OSError) as e:
            log.error("pop3: cannot open the maildrop of %s: %s", user.address, e)
            return LoginFailed(R.SYS_TEMP)
        drop.append(session)
        log.info("pop3: login user=%s client=%s mechanism=%s messages=%d", quote(user.address), ip or "unix",
                 ev.mechanism, len(session.maildrop.messages))
        return LoginOK(session.maildrop)

    async def _retrieve(self, conn: _Connection, session: MaildropSession, ev: Retrieve) -> None:
        path = session.path_of(ev.message)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            try:  # renamed (flags changed by IMAP) or expunged by another session
                path = await asyncio.to_thread(session.current_path, ev.message.uid)
                f = open(path, "rb")  # noqa: SIM115
            except (MessageNotFound, FileNotFoundError, StorageError):
                conn.write(R.MESSAGE_VANISHED.to_bytes())
                return
        with f:
            enc = MessageEncoder(ev.body_lines)
            # The first chunk is read on the loop (page cache: microseconds), so a usual
            # message goes out in one write; the rest of a large one is read in a thread.
            chunk = f.read(_FIRST_CHUNK)
            out = ev.ok_line + enc.feed(chunk)
            more = len(chunk) == _FIRST_CHUNK
            while more and not enc.done:
                conn.write(out)
                await conn.drain()
                chunk = await asyncio.to_thread(f.read, _READ_CHUNK)
                out = enc.feed(chunk)
                more = len(chunk) == _READ_CHUNK
            conn.write(out + enc.finish())


def _close_if_opened(fut: asyncio.Future[MaildropSession]) -> None:
    """A login cancelled (server stop) while the maildrop was opening: drop its lock."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


async def start(ctx: ServiceContext) -> POP3Service:
    """``mailstack serve pop3``: listen on ``[pop3] listen`` (STLS) and ``tls_listen`` (implicit TLS)."""
    cfg = ctx.config
    service = POP3Service(
        hostname=cfg.hostname,
        maildir_root=cfg.storage.maildir_root,
        directory=ctx.directory,
        tls_context=ctx.tls.server,
        limits=ctx.limits,
        allow_plaintext_on_loopback=cfg.auth.allow_plaintext_on_loopback,
        auth=ctx.auth or Authenticator.from_config(cfg, ctx.directory),
        owns_auth=ctx.auth is None,
        idle_timeout=cfg.pop3.idle_timeout,
    )
    service.servers = await net.open_listeners(
        "pop3", cfg.listeners("pop3"), lambda _addr, tls: service.factory(tls), ctx.tls.server
    )
    return service
