"""The thin asyncio adapter around the IMAP core (``mailstack.imap.server:start``).

One ``asyncio.Protocol`` per connection feeds bytes to a ``parser.CommandReader`` and
runs each parsed command through ``session.Session``, carrying out its effects: password
checks (``mailstack.auth.Authenticator``: shared throttle, own hash pool), STARTTLS (``loop.start_tls``),
IDLE (``notify.Notifier``), LOGOUT. Commands that touch storage are stepped in a worker
thread so one slow disk never stalls other clients, in the IMAP service's OWN thread pool
(``IMAPService.pool``): never in the event loop's default executor, which the MX, LMTP and
submission use for recipient lookups, so a user running heavy SEARCHes (or a hundred of
them) can delay other IMAP commands at worst, never a message arriving by SMTP.

Invariants:
- Commands of one connection run one at a time, in order; reading pauses while more
  than ``net.StreamConnection.MAX_INBOX`` unprocessed bytes wait, which bounds the commands in flight per
  connection. Line and literal limits are the reader's: a ``{999999999}`` literal is
  refused from its header (RFC 7889 NO [TOOBIG] for APPEND) before any octet is kept.
- Plaintext LOGIN / AUTHENTICATE PLAIN only under TLS, or from loopback with
  ``[auth] allow_plaintext_on_loopback`` (RFC 3501 §6.2.3, §11.1); every login goes
  through the one login path (``mailstack.auth``): blocked clients and accounts get the
  normal ``NO [AUTHENTICATIONFAILED]``, a busy hash pool ``NO [UNAVAILABLE]`` (RFC 5530).
- An AUTHENTICATE response line is at most ``mailstack.auth.MAX_SASL_LINE`` octets
  (RFC 4954 §4's 12288); a longer one gets ``BAD`` and is discarded, never parsed.
- Bytes received before a STARTTLS handshake are dropped (RFC 3501 §6.2.1).
- A silent client is logged out after ``[imap] idle_timeout`` (RFC 3501 §5.4: at least
  30 minutes) once logged in, ``login_timeout`` before.
- No traceback ever reaches a client: an unexpected error gives ``NO [SERVERBUG]`` for
  that command and the session goes on.
- IDLE hibernation (Dovecot's ``imap_hibernate_timeout``): a session that has waited in
  IDLE for ``[imap] hibernate_timeout`` seconds with nothing to say is frozen
  (``Session.hibernate``: the selected mailbox's message list and caches become a few
  bytes per message), its task ends and its command reader goes; what is left is the
  connection, the session's small state, a ``_Sleeper`` record (tag, notifier callback,
  autologout timer). Client data, EOF or a change notification start a new task that wakes
  the session (``Session.wake``: the folder is read again) and carries on the IDLE exactly
  where it was; the autologout timer alone says BYE and closes without waking anything.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import ssl
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mailstack import net
from mailstack.auth import MAX_SASL_LINE, Authenticator, MemoryThrottleStore, ThrottlePolicy
from mailstack.maillog import quote
from mailstack.service import ServiceContext
from mailstack.spam.learn import Learning

from .compress import CompressionError, Deflater, Inflater
from .grammar import GrammarError
from .index import IndexCache
from .notify import DEFAULT_CHECK_INTERVAL, Notifier, Watch
from .userip import UserIPLimits
from .parser import (
    Command,
    CommandReader,
    ContinuationLine,
    NeedContinuation,
    NeedData,
    ParseError,
    decode_sasl_response,
    is_idle_done,
)
from .responses import bad, no
from .session import Compress, Idle, Login, Logout, Output, SaslNeedResponse, Session, SessionConfig, StartTLS, UserInfo
from .states import State

if TYPE_CHECKING:
    from mailstack.directory import Directory

__all__ = ["IMAPService", "start"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_PULL_BYTES = 256 * 1024
DEFAULT_IDLE_TIMEOUT = 1800.0  # RFC 3501 §5.4: at least 30 minutes
DEFAULT_LOGIN_TIMEOUT = 60.0
DEFAULT_HIBERNATE_TIMEOUT = 2.0  # seconds in IDLE before hibernating (0: never)
# Commands that never touch storage run on the loop; the rest in a worker thread.
_INLINE = frozenset({"CAPABILITY", "LOGOUT", "ID", "STARTTLS", "LOGIN", "AUTHENTICATE", "NAMESPACE", "ENABLE", "COMPRESS",
                     "UNSELECT"})
_END = object()
# Threads of the IMAP pool: as many as asyncio's default executor would have (I/O-bound
# steps overlap; CPU-bound ones share the GIL anyway), so one session per thread runs at once.
POOL_THREADS = min(32, (os.cpu_count() or 1) + 4)


class _Stop(Exception):
    """The connection is over (LOGOUT, fatal error, timeout, EOF)."""


class _Hibernated(Exception):
    """The session is hibernated: its task ends, the connection lives on (``_Sleeper``)."""


class _Sleeper:
    """What a hibernated IDLE keeps besides the connection and the session."""

    __slots__ = ("sess", "tag", "watch", "timer")

    def __init__(self, sess: Session, tag: str, watch: Watch | None, timer: asyncio.TimerHandle) -> None:
        self.sess = sess
        self.tag = tag
        self.watch = watch
        self.timer = timer


class _Connection(net.StreamConnection):
    """A client connection (inbox, flow control, STARTTLS): ``net.StreamConnection``,
    plus COMPRESS=DEFLATE (RFC 4978) once ``start_compress`` ran: what arrives is
    inflated into the inbox at most ``MAX_INBOX`` octets at a time (the rest waits
    compressed, and reading pauses while more than ``MAX_INBOX`` compressed octets wait),
    so a deflate bomb meets the reader's line and literal limits like plain input; what
    is written is deflated and flushed (``Z_SYNC_FLUSH``) once per burst: before the
    loop runs again, before ``drain`` and before ``close``."""

    def __init__(self, host: net.SessionHost, implicit_tls: bool) -> None:
        super().__init__(host, implicit_tls)
        self._inflater: Inflater | None = None
        self._deflater: Deflater | None = None
        self._flush_handle: asyncio.Handle | None = None
        self.user_key: tuple[str, str | None] | None = None  # set at login (userip.UserIPLimits)
        self.sleeper: _Sleeper | None = None  # set while the session is hibernated (no task runs)
        self.imap: IMAPService = host  # type: ignore[assignment]

    # -- the session task, which hibernation ends and a wake starts again
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.imap.connections.add(self)
        self.start_task(self.imap.session(self))

    def start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task is self.task and self.sleeper is None:  # hibernated, or woken by a newer task: still live
            self.imap.connections.discard(self)

    def _wake(self) -> None:
        if self.sleeper is not None:
            self.imap.wake(self)

    def eof_received(self) -> bool:
        super().eof_received()
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()

    @property
    def compressed(self) -> bool:
        return self._deflater is not None

    def start_compress(self, pending: bytes) -> None:
        """RFC 4978 §3: from now on both directions are deflated. ``pending``: what the
        reader held after the COMPRESS command (the client compresses from there on)."""
        self._inflater, self._deflater = Inflater(), Deflater()
        raw = pending + bytes(self.inbox)
        self.inbox.clear()
        self._inflater.feed(raw)
        self._fill()

    def _fill(self) -> None:
        """Inflate into the inbox up to ``MAX_INBOX``; a broken stream ends the connection."""
        inf = self._inflater
        assert inf is not None
        room = self.MAX_INBOX - len(self.inbox)
        if room <= 0 or not inf.pending:
            return
        try:
            self.inbox += inf.take(room)
        except CompressionError as e:
            log.info("imap: broken COMPRESS stream from the client: %s", e)
            self._inflater = Inflater()  # nothing more is read from it
            self.eof = True
            if self.transport is not None:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inflater is None:
            super().data_received(data)
            self._wake()
            return
        self._inflater.feed(data)
        self._fill()
        if self._inflater.pending > self.MAX_INBOX and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake_reader()
        self._wake()

    async def read(self) -> bytes:
        if self._inflater is None:
            return await super().read()
        await self.wait_readable()
        data = bytes(self.inbox)
        self.inbox.clear()
        self._fill()
        if self._read_paused and self._inflater.pending <= self.MAX_INBOX and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        z = self._deflater
        if z is None:
            super().write(data)
            return
        if not data or self.transport is None or self.transport.is_closing():
            return
        super().write(z.compress(data))
        if self._flush_handle is None:  # one Z_SYNC_FLUSH per burst of writes
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()  # called directly (drain, close): the scheduled one has nothing left
        if self._deflater is not None:
            super().write(self._deflater.flush())

    async def drain(self) -> None:
        self._flush()
        await super().drain()

    def close(self) -> None:
        self._flush()
        super().close()


def _pull(gen: Iterator[Output]) -> list[object]:
    """Step a session generator (in a worker thread) up to an effect or ~256 KB."""
    out: list[object] = []
    size = 0
    for item in gen:
        out.append(item)
        if not isinstance(item, bytes):
            return out
        size += len(item)
        if size >= _PULL_BYTES:
            return out
    out.append(_END)
    return out


class IMAPService:
    """A running IMAP service: listeners, connections, throttle, notifier."""

    name = "imap"

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
        login_timeout: float = DEFAULT_LOGIN_TIMEOUT,
        append_limit: int = 50 * 1024 * 1024,
        max_line: int = 64 * 1024,
        poll_interval: float = 0.5,
        idle_check_interval: float = DEFAULT_CHECK_INTERVAL,
        hibernate_timeout: float = DEFAULT_HIBERNATE_TIMEOUT,
        full_text_index: bool = True,
        learning: Learning | None = None,
        userip: UserIPLimits | None = None,
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
        self.login_timeout = login_timeout
        self.append_limit = append_limit
        self.max_line = max_line
        self.notifier = Notifier(poll_interval, idle_check_interval)
        self.hibernate_timeout = hibernate_timeout
        self.userip = userip if userip is not None else UserIPLimits(50, 10)
        self.learning = learning  # the spam learning queue ([spam] rspamd_controller_url), started by start()
        self.index = IndexCache(full_text=full_text_index)
        self.servers: list[asyncio.Server] = []
        self.connections: set[_Connection] = set()
        self.inflight = net.InFlight()
        self.pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="imap")
        self._loop: asyncio.AbstractEventLoop | None = None

    def factory(self, implicit_tls: bool) -> net.ProtocolFactory:
        return lambda: _Connection(self, implicit_tls)

    async def stop(self, grace: float) -> None:
        for conn in list(self.connections):  # hibernated: a task that ends as an awake session's does
            if conn.sleeper is not None:
                self._unsleep(conn)
                self._release(conn)
                conn.start_task(self._parked(conn))
        await net.stop_sessions("imap", self.servers, self.inflight, self.connections,
                                b"* BYE [UNAVAILABLE] Server shutting down\r\n", grace)
        await self.notifier.close()
        if self.learning is not None:
            await self.learning.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.index.close()
        if self.owns_auth:
            await asyncio.to_thread(self.auth.close)

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the IMAP pool (see the module docstring), with contextvars."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.pool, ctx.run, fn, *args)

    def _poke(self, path: Path) -> None:
        """From a worker thread: a session changed a folder; wake the idlers of it."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.notifier.poke, path)

    # -- one connection -----------------------------------------------------------------
    async def session(self, conn: _Connection) -> None:
        assert conn.transport is not None
        self._loop = asyncio.get_running_loop()
        ip = net.peer_ip(conn.transport)
        if not self.limits.acquire(ip):
            conn.write(b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n")
            conn.close()
            return
        if not self.userip.connected(ip):
            self.limits.release(ip)
            conn.write(b"* BYE [UNAVAILABLE] Too many connections from your address, try again later\r\n")
            conn.close()
            return
        sess = Session(
            SessionConfig(self.hostname, self.maildir_root, tls_available=self.tls_context is not None,
                          append_limit=self.append_limit, learning=self.learning),
            tls_active=conn.implicit_tls,
            plaintext_allowed=self.allow_plaintext_on_loopback and net.is_loopback_peer(conn.transport),
            index=self.index, on_change=self._poke,
        )
        await self._guarded(conn, ip, self._run(conn, sess, ip))

    async def _guarded(self, conn: _Connection, ip: str | None, body: Coroutine[Any, Any, None]) -> None:
        """Run a session task's ``body``; at its end the connection is closed and its
        counts given back, unless the session hibernated (``_Hibernated``)."""
        live = False
        try:
            await body
        except asyncio.CancelledError:
            raise
        except _Hibernated:
            live = True
        except _Stop:
            pass
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError) as e:
            log.debug("imap: connection from %s ended: %s", ip, e)
        except Exception:
            log.exception("imap: internal error in a session from %s", ip)
            conn.write(b"* BYE [SERVERBUG] Internal server error\r\n")
        finally:
            if not live:
                self._finish(conn, ip)

    def _finish(self, conn: _Connection, ip: str | None = None) -> None:
        """The connection's counts given back (once), and the connection closed."""
        self._release(conn, ip)
        conn.close()

    def _release(self, conn: _Connection, ip: str | None = None) -> None:
        if conn.transport is not None and ip is None:
            ip = net.peer_ip(conn.transport)
        self.userip.ended(ip, conn.user_key)
        self.limits.release(ip)

    def _reader(self) -> CommandReader:
        return CommandReader(max_line=self.max_line, max_append=self.append_limit)

    async def _next(self, conn: _Connection, sess: Session, reader: CommandReader) -> object:
        """The next reader event other than NeedData, reading (with the timeout) as needed."""
        while True:
            ev = reader.next_event()
            if not isinstance(ev, NeedData):
                return ev
            if reader.closed:
                raise _Stop()
            await conn.drain()
            timeout = self.login_timeout if sess.state is State.NOT_AUTHENTICATED else self.idle_timeout
            try:
                async with asyncio.timeout(timeout):
                    data = await conn.read()
            except TimeoutError:
                conn.write(b"* BYE Autologout; idle for too long\r\n")  # RFC 3501 §5.4
                raise _Stop() from None
            if not data:
                raise _Stop()
            reader.feed(data)

    async def _run(self, conn: _Connection, sess: Session, ip: str | None) -> None:
        conn.write(sess.greeting())
        await self._loop_commands(conn, sess, ip, self._reader())

    async def _loop_commands(self, conn: _Connection, sess: Session, ip: str | None, reader: CommandReader) -> None:
        while True:
            ev = await self._next(conn, sess, reader)
            if isinstance(ev, NeedContinuation):
                conn.write(b"+ Ready for literal data\r\n")  # RFC 3501 §7.5
            elif isinstance(ev, ParseError):
                conn.write(ev.response().to_bytes())
                if ev.fatal:
                    raise _Stop()
            elif isinstance(ev, ContinuationLine):  # pragma: no cover - only in expect_line mode
                conn.write(b"* BAD Unexpected line\r\n")
            elif isinstance(ev, Command):
                log.debug("imap: %s C: %s %s%s", ip, ev.tag, "UID " if ev.uid else "", ev.name)
                reader = await self._execute(conn, sess, reader, ev, ip)
                reader.utf8 = sess.rev2  # RFC 9051 §5.1: after ENABLE IMAP4rev2, names are UTF-8

    async def _execute(self, conn: _Connection, sess: Session, reader: CommandReader, cmd: Command,
                       ip: str | None) -> CommandReader:
        inline = cmd.name in _INLINE or sess.state is State.NOT_AUTHENTICATED
        return await self._drive(conn, sess, reader, sess.run(cmd), cmd.tag, inline, ip)

    async def _drive(self, conn: _Connection, sess: Session, reader: CommandReader, gen: Iterator[Output],
                     tag: str, inline: bool, ip: str | None) -> CommandReader:
        while True:
            try:
                if inline:
                    items = _pull(gen)
                else:
                    async with self.inflight.hold():
                        items = await self._in_pool(_pull, gen)
            except Exception:
                log.exception("imap: internal error in command %s from %s", tag, ip)
                conn.write(no(tag, "Internal server error", "SERVERBUG").to_bytes())
                return reader
            for item in items:
                if item is _END:
                    return reader
                if isinstance(item, bytes):
                    conn.write(item)
                    continue
                await conn.drain()
                if isinstance(item, Login):
                    conn.write(await self._login(conn, sess, item, ip))
                elif isinstance(item, SaslNeedResponse):
                    conn.write(b"+ \r\n")  # RFC 4616: the empty challenge
                    reader.expect_line()
                    line = await self._next(conn, sess, reader)
                    if isinstance(line, ParseError) or (isinstance(line, ContinuationLine)
                                                        and len(line.line) > MAX_SASL_LINE):
                        # RFC 4954 §4 bound; the reader drops the rest of an overlong line
                        conn.write(bad(tag, "Authentication response line too long").to_bytes())
                        if isinstance(line, ParseError) and line.fatal:
                            raise _Stop()
                        continue
                    if not isinstance(line, ContinuationLine):  # pragma: no cover
                        raise _Stop()
                    try:
                        data = decode_sasl_response(line)
                    except GrammarError:
                        conn.write(no(tag, "Invalid base64").to_bytes().replace(b" NO ", b" BAD ", 1))
                        continue
                    reader = await self._drive(conn, sess, reader, sess.sasl_response(tag, data), tag, True, ip)
                elif isinstance(item, StartTLS):
                    assert self.tls_context is not None
                    await conn.start_tls(self.tls_context)
                    sess.tls_started()
                    reader = self._reader()  # RFC 3501 §6.2.1: forget anything buffered
                elif isinstance(item, Compress):  # RFC 4978 §3: the tagged OK went out uncompressed
                    conn.start_compress(reader.take_buffered())
                elif isinstance(item, Idle):
                    await self._idle(conn, sess, reader, item.tag)
                elif isinstance(item, Logout):
                    await conn.drain()
                    raise _Stop()

    async def _login(self, conn: _Connection, sess: Session, ev: Login, ip: str | None) -> bytes:
        outcome = await self.auth.authenticate("imap", ev.username, ev.password, ip, mechanism=ev.mechanism)
        if outcome.temporary:  # RFC 5530 §3: UNAVAILABLE
            return no(ev.tag, "Temporary authentication failure, try again later", "UNAVAILABLE").to_bytes()
        user = outcome.user
        if user is None:  # failed or throttled: the same answer (RFC 5530 AUTHENTICATIONFAILED)
            return sess.login_failed(ev.tag)
        if not self.userip.may_login(user.address, ip):  # Dovecot's mail_max_userip_connections
            log.info("imap: %s from %s: over %d sessions of one user and address", quote(user.address), ip,
                     self.userip.max_userip)
            return no(ev.tag, "Maximum number of connections from user+IP exceeded", "LIMIT").to_bytes()
        info = UserInfo(user.address, user.domain, user.local, user.quota_bytes)
        try:
            reply = await self._in_pool(sess.login_ok, ev.tag, info)
        except Exception as e:
            log.error("imap: cannot open the Maildir of %s: %s", quote(user.address), e)
            return sess.login_failed(ev.tag, temporary=True)
        if conn.user_key is None:
            conn.user_key = self.userip.logged_in(user.address, ip)
        return reply

    async def _idle(self, conn: _Connection, sess: Session, reader: CommandReader, tag: str) -> None:
        """RFC 2177: push changes until DONE; hibernate after ``hibernate_timeout`` quiet
        seconds (raises ``_Hibernated``: the task ends, ``wake`` carries on)."""
        watch = self.notifier.watch(sess.view.folder.path) if sess.view is not None else None
        reader.expect_line()
        try:
            if watch is not None:  # a change between the last updates and the watch: not lost
                conn.write(await self._in_pool(sess.idle_updates))
            await self._idle_wait(conn, sess, reader, tag, watch)
        finally:
            if watch is not None:
                watch.close()

    async def _idle_wait(self, conn: _Connection, sess: Session, reader: CommandReader, tag: str,
                         watch: Watch | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout  # RFC 3501 §5.4, from the last thing that happened
        may_sleep = self.hibernate_timeout > 0 and watch is not None
        while True:
            ev = reader.next_event()
            if isinstance(ev, ContinuationLine):
                if is_idle_done(ev):
                    conn.write(await self._in_pool(sess.idle_done, tag))
                else:
                    conn.write(b"%s BAD Expected DONE\r\n" % tag.encode("ascii"))
                return
            await conn.drain()
            left = max(0.0, deadline - loop.time())
            sleepy = may_sleep and not reader.buffered and self.hibernate_timeout < left
            read = asyncio.ensure_future(conn.wait_readable())
            waits: set[asyncio.Future[object]] = {read}  # type: ignore[arg-type]
            if watch is not None:
                waits.add(asyncio.ensure_future(watch.event.wait()))
            try:
                done, _ = await asyncio.wait(waits, timeout=self.hibernate_timeout if sleepy else left,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if done:
                deadline = loop.time() + self.idle_timeout
            elif sleepy:
                if await self._hibernate(conn, sess, tag, deadline):
                    raise _Hibernated()
                may_sleep = False  # cannot be frozen now (open UPDATE contexts...): wait awake
            else:
                conn.write(b"* BYE Autologout; idle for too long\r\n")
                raise _Stop()
            if watch is not None and watch.event.is_set():
                watch.event.clear()
                conn.write(await self._in_pool(sess.idle_updates))
            if conn.inbox or conn.eof:
                data = await conn.read()
                if not data:
                    raise _Stop()
                reader.feed(data)

    # -- hibernation ------------------------------------------------------------------------
    async def _hibernate(self, conn: _Connection, sess: Session, tag: str, deadline: float) -> bool:
        """Freeze an idling session (see the module docstring); False: it stays awake."""
        if conn.inbox or conn.eof or conn.compressed or sess.view is None:
            return False
        path = sess.view.folder.path
        if not await self._in_pool(sess.hibernate):
            return False
        if conn.inbox or conn.eof:  # arrived while freezing: stay awake (the view comes back at once)
            await self._in_pool(sess.wake)
            return False
        loop = asyncio.get_running_loop()
        watch = self.notifier.watch(path, conn._wake)
        conn.sleeper = _Sleeper(sess, tag, watch, loop.call_at(deadline, self._autologout, conn))
        return True

    def _unsleep(self, conn: _Connection) -> _Sleeper | None:
        sl, conn.sleeper = conn.sleeper, None
        if sl is not None:
            sl.timer.cancel()
            if sl.watch is not None:
                sl.watch.close()
        return sl

    async def _parked(self, conn: _Connection) -> None:
        """A hibernated session at stop (its counts given back): nothing more is read from
        it; the stop says BYE, closes it and cancels this task as it does an awake session's."""
        while await conn.read():
            pass

    def _autologout(self, conn: _Connection) -> None:
        """A hibernated session idle for ``idle_timeout``: BYE, without waking it."""
        if self._unsleep(conn) is None:
            return
        conn.write(b"* BYE Autologout; idle for too long\r\n")  # RFC 3501 §5.4
        self._finish(conn)
        self.connections.discard(conn)

    def wake(self, conn: _Connection) -> None:
        """Client data, EOF or a change: a new task wakes the session and goes on with the IDLE."""
        sl = self._unsleep(conn)
        if sl is None:
            return
        ip = net.peer_ip(conn.transport) if conn.transport is not None else None
        conn.start_task(self._guarded(conn, ip, self._resume(conn, sl.sess, sl.tag, ip)))

    async def _resume(self, conn: _Connection, sess: Session, tag: str, ip: str | None) -> None:
        await self._in_pool(sess.wake)
        reader = self._reader()
        if sess.view is not None:
            conn.write(await self._in_pool(sess.idle_updates))
            await self._idle(conn, sess, reader, tag)
        else:  # the folder went while hibernated (Session.wake said BYE)
            conn.write(await self._in_pool(sess.idle_updates))
            await conn.drain()
            raise _Stop()
        await self._loop_commands(conn, sess, ip, reader)


async def start(ctx: ServiceContext) -> IMAPService:
    """``mailstack serve imap``: ``[imap] listen`` (STARTTLS) and ``tls_listen`` (implicit TLS)."""
    cfg = ctx.config
    icfg = cfg.imap
    service = IMAPService(
        hostname=cfg.hostname,
        maildir_root=cfg.storage.maildir_root,
        directory=ctx.directory,
        tls_context=ctx.tls.server,
        limits=ctx.limits,
        allow_plaintext_on_loopback=cfg.auth.allow_plaintext_on_loopback,
        auth=ctx.auth or Authenticator.from_config(cfg, ctx.directory),
        owns_auth=ctx.auth is None,
        idle_timeout=icfg.idle_timeout,
        login_timeout=icfg.login_timeout,
        append_limit=icfg.append_limit,
        max_line=icfg.max_line,
        poll_interval=icfg.poll_interval,
        idle_check_interval=icfg.idle_check_interval,
        hibernate_timeout=icfg.hibernate_timeout,
        full_text_index=icfg.full_text_index,
        learning=Learning.from_config(cfg),
        userip=UserIPLimits(icfg.max_unauthenticated_per_ip, icfg.max_userip_connections),
    )
    service.servers = await net.open_listeners(
        "imap", cfg.listeners("imap"), lambda _addr, tls: service.factory(tls), ctx.tls.server
    )
    if service.learning is not None:  # after the listeners: a failed start leaves no task behind
        await service.learning.start()
    return service
