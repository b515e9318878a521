"""The aiosmtpd subclass every mailstack SMTP-family server (MX, submission, LMTP) runs on.

aiosmtpd parses commands; this class fills what it lacks and fixes what it gets wrong
for an Internet-facing MTA; the policy lives in a ``Handler`` whose hooks return
``Reply`` values (docs/architecture.md, convention 3):

- EHLO advertises PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
  SMTPUTF8 (RFC 6531), ENHANCEDSTATUSCODES (RFC 2034), CHUNKING (RFC 3030: ``BDAT``,
  read by ``smtp_BDAT`` under the same size, time, NUL/bare-CR and "250 only once on
  disk" rules as DATA; the rules are in ``chunking``), DSN (RFC 3461: RET/ENVID on MAIL,
  NOTIFY/ORCPT on RCPT, parsed by ``params``, kept as ``Transaction.dsn`` for the
  handlers, which carry it into the queue and the DSNs), STARTTLS (RFC 3207) until TLS
  is on; every reply after the greeting carries an enhanced status code, aiosmtpd's
  built-in ones included (``replies.add_enhanced``);
- MAIL/RCPT are ours: SIZE= over the limit is ``552 5.3.4`` at MAIL, more than
  ``max_recipients`` RCPTs ``452 4.5.3`` (RFC 5321 §4.5.3.1.10), unknown parameters
  ``555 5.5.4``;
- DATA is read by ``data.DataReceiver``: only ``<CRLF>.<CRLF>`` ends it (no SMTP
  smuggling), the size is counted while reading and an oversize body is dropped as it
  arrives, the idle timer is reset per line;
- STARTTLS uses ``StreamWriter.start_tls`` (``loop.start_tls``), not aiosmtpd's use of
  private ``asyncio.sslproto``; plaintext pipelined after STARTTLS is discarded and the
  session is reset (RFC 3207 §4.2);
- connection caps (``net.ConnectionLimits``: total and per IP) answer ``421 4.7.0`` and
  close; the command/idle timeout answers ``421 4.4.2`` and closes (RFC 5321 §4.5.3.2);
- room for newcomers: when the total cap is reached, a new client (within its per-IP
  cap) does not get 421 while some session is only holding a slot: the session that
  has made no progress for longest is told ``421 4.7.0`` and closed to make room,
  sessions without a mail transaction first, never one inside DATA or a delivery
  (``ConnectionSet.evict_idle``; Postfix reaches the same end by cutting its timeouts
  to 10 s under stress). So neither slow senders nor a connection flood from many
  addresses can hold the service; the per-IP cap bounds what one address takes;
- misbehaviour (``limits.ErrorCounter``, Postfix's junk command / soft / hard error
  limits): junk commands beyond the limit and error replies are counted, from the
  soft limit on every reply waits (``asyncio.sleep``: only this session waits), at the
  hard limit ``421 4.7.0`` and close; an accepted message resets the counts;
- time limits: a command line must be complete within ``timeout`` of the previous
  command (bytes trickling in do not reset the timer; aiosmtpd resets it only when a
  whole, known command arrives); in DATA the timer is re-armed per line, but never
  past ``timeout`` plus the bytes received divided by ``min_data_rate`` from the start
  of DATA (Postfix's ``smtpd_min_data_rate``), so a body dribbled one line at a time
  ends in ``421 4.4.2`` too;
- an exception in our code is logged and answered ``451 4.3.0``; no traceback, nor an
  exception text, ever reaches the client; an error while reading DATA closes the
  connection (the rest of the body must never be read as commands);
- a message is answered 250 only when the handler's ``data`` hook says so, and the
  hook answers 250 only when the message is on disk (``delivery.LocalDelivery``);
- the MX and LMTP offer no AUTH: ``503 5.5.1`` (submission has its own ``smtp_AUTH``).

How we use aiosmtpd (pinned ``>=1.4.6,<1.5`` in pyproject.toml): through its public
extension points, subclassing ``SMTP`` and calling its constructor, ``smtp_<VERB>``
methods (it finds them by name; ``_count_commands`` puts each behind the per-session
accounting once, when the class is made), ``push``, ``check_helo_needed``, ``Session`` and
``Envelope``, ``@syntax``. The parsing rules we add live in pure modules (``params``:
MAIL/RCPT arguments and paths, ``data``: the DATA phase). Private names that remain,
each checked against the installed versions by tests/smtp/test_server_unit.py (which
also fails when a new one is used, or one of ours collides with aiosmtpd's):
``_reader``/``_writer`` (the connection's streams: DATA and SASL lines are read from the
reader, STARTTLS goes through the writer), ``_reset_timeout``/``_timeout_cb`` (its idle
timer: re-armed per DATA line, 421 before the close), and asyncio's
``StreamReader._buffer`` (pipelined bytes to drop) and ``._transport`` (re-pointed after
STARTTLS). Per connection, aiosmtpd's constructor costs ~0.25 ms of CPU (it scans the
instance with ``inspect.getmembers``): the price of not copying it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from mailstack import maillog, net
from mailstack.mail.dsnrequest import DSNRequest, RecipientRequest
from mailstack.smtp import replies as R
from mailstack.smtp.chunking import BDAT_SYNTAX, ChunkReceiver, parse_bdat
from mailstack.smtp.data import DataReceiver
from mailstack.smtp.limits import JUNK_COMMANDS, ErrorCounter, SessionLimits
from mailstack.queue import new_queue_id
from mailstack.smtp.params import parse_mail, parse_rcpt
from mailstack.smtp.replies import Reply, SMTPReplyError

__all__ = ["BaseSMTP", "ServerSettings", "Handler", "Transaction", "ConnectionSet", "SMTPService"]

log = logging.getLogger(__name__)

# aiosmtpd logs every command line (AUTH data included) and per-connection chatter at
# INFO on "mail.log"; our transcripts belong at DEBUG (docs/architecture.md, convention 9) and the mail log
# is mailstack.maillog. An admin can lower this again in their logging config.
logging.getLogger("mail.log").setLevel(logging.WARNING)

TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
EVICTED = Reply(421, "4.7.0", "Server busy, closing idle connection; try again later")
NO_AUTH = Reply(503, "5.5.1", "Authentication not enabled")  # what Postfix says without SASL
DATA_AFTER_BDAT = R.BAD_SEQUENCE.with_text("DATA not allowed in a BDAT transaction")  # RFC 3030 §3
CHUNK_PIECE = 65536  # a BDAT chunk is read in pieces of at most this many octets


class _NoHooks:
    """aiosmtpd's event handler: none of its ``handle_*`` hooks (our policy is a ``Handler``)."""


_NO_HOOKS = _NoHooks()


@dataclass(frozen=True)
class ServerSettings:
    """What one listener's protocol instances share."""

    service: str  # "smtp", "submission", "lmtp": used in logs and the mail log
    hostname: str
    max_message_size: int
    max_recipients: int = 100
    timeout: float = 300.0
    tls_context: ssl.SSLContext | None = None
    implicit_tls: bool = False
    ident: str = "ESMTP mailstack"
    protocol: str = "ESMTP"  # for Received: "with ..."
    limits: SessionLimits = SessionLimits()  # junk command and error limits (limits.py)
    min_data_rate: int = 0  # bytes/s a DATA body must keep up on average; 0 = no floor


class Transaction(Envelope):
    """aiosmtpd's Envelope plus what we need per mail transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.sender: str | None = None  # "" is the null reverse-path; None = no MAIL yet
        self.queue_id = ""
        self.size_hint = 0
        self.body_type = "7BIT"
        self.requiretls = False  # RFC 8689: MAIL FROM ... REQUIRETLS
        self.recipients: list[str] = []
        self.resolutions: list[Any] = []
        self.chunks: ChunkReceiver | None = None  # set by the first BDAT (RFC 3030)
        self.dsn_ret: str | None = None  # RFC 3461 MAIL RET=
        self.dsn_envid: str | None = None  # RFC 3461 MAIL ENVID=
        self.dsn_rcpts: dict[str, RecipientRequest] = {}  # RFC 3461 RCPT NOTIFY=/ORCPT=

    @property
    def dsn(self) -> DSNRequest:
        """The DSN parameters of this transaction (``mail.dsnrequest``)."""
        return DSNRequest(self.dsn_ret, self.dsn_envid, dict(self.dsn_rcpts))


class Handler(Protocol):
    """Policy hooks of a server: each returns the reply to send."""

    async def mail(self, server: BaseSMTP, txn: Transaction, sender: str) -> Reply: ...

    async def rcpt(self, server: BaseSMTP, txn: Transaction, recipient: str) -> Reply: ...

    async def data(self, server: BaseSMTP, txn: Transaction, content: bytes) -> Sequence[Reply]:
        """One reply (SMTP) or one per accepted recipient, in RCPT order (LMTP)."""
        ...


# A session is not closed to make room until it has made no progress for this long.
EVICT_AFTER = 1.0
# A client address that lost a session to eviction may not evict others for this long, and
# at most this many such addresses are remembered (oldest forgotten first).
EVICTED_MEMORY = 60.0
EVICTED_MAX = 10_000


class ConnectionSet:
    """The live protocol instances of one service, to close them on stop."""

    def __init__(self) -> None:
        self.live: set[BaseSMTP] = set()
        self.closing = False
        self._evicted: collections.OrderedDict[str, float] = collections.OrderedDict()  # ip -> when

    def may_evict(self, ip: str | None) -> bool:
        """False for an address that lost a session to eviction in the last ``EVICTED_MEMORY`` s."""
        if ip is None:
            return True
        when = self._evicted.get(ip)
        return when is None or asyncio.get_running_loop().time() - when >= EVICTED_MEMORY

    def evict_idle(self) -> bool:
        """Close the session that holds a slot with the least to show for it; False if none may go.

        Never one inside DATA or a delivery (``busy``), nor one that made progress in the
        last ``EVICT_AFTER`` seconds (a newcomer at work is not closed for the next one).
        Sessions without a mail transaction go first, then the one whose last progress
        (connect, or a command other than the junk ones) is oldest. The victim's address
        may not evict anyone itself for a while (``may_evict``): clients that reconnect at
        once when closed cannot set off a chain of evictions that ends on a real sender.
        """
        now = asyncio.get_running_loop().time()
        candidates = [p for p in self.live if p.evictable and now - p.progress_at >= EVICT_AFTER]
        if not candidates:
            return False
        victim = min(candidates, key=lambda p: (p.txn.sender is not None, p.progress_at))
        if victim.peer_ip is not None:
            self._evicted[victim.peer_ip] = now
            self._evicted.move_to_end(victim.peer_ip)
            while len(self._evicted) > EVICTED_MAX:
                self._evicted.popitem(last=False)
        victim.evict()
        return True

    def close_idle(self) -> None:
        """421 and close every session that is not inside DATA or a delivery."""
        self.closing = True
        for proto in list(self.live):
            if not proto.busy:
                proto.shutdown()

    async def close_all(self) -> None:
        self.closing = True
        for proto in list(self.live):
            proto.shutdown()
        for _ in range(50):
            if not self.live:
                break
            await asyncio.sleep(0.02)


class SMTPService:
    """The RunningService of an SMTP-family service (service.RunningService protocol).

    ``stop(grace)``: stop accepting, say 421 to idle sessions, let messages in DATA or
    in delivery finish (up to ``grace``), then close what is left.
    """

    def __init__(self, name: str, servers: Sequence[asyncio.Server], inflight: net.InFlight,
                 connections: ConnectionSet, closers: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
        self.name = name
        self.servers = list(servers)
        self.inflight = inflight
        self.connections = connections
        self.closers = list(closers)  # run last at stop (e.g. the rspamd client's HTTP session)

    async def stop(self, grace: float) -> None:
        for s in self.servers:
            s.close()
        self.connections.close_idle()
        # Let every session inside DATA or a delivery get to its reply, then close it;
        # a delivered message whose 250 was lost would be sent again (a duplicate).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            self.connections.close_idle()
            if self.inflight.count == 0 and not any(p.busy for p in self.connections.live):
                break
            await asyncio.sleep(0.02)
        else:
            log.warning("%s: %d transaction(s) still in flight after %gs; closing", self.name,
                        self.inflight.count, grace)
        await self.connections.close_all()
        for s in self.servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 1.0)
            except (TimeoutError, asyncio.TimeoutError):
                pass
        for close in self.closers:
            try:
                await close()
            except Exception:  # a closer's failure must not keep the service from stopping
                log.exception("%s: error at stop", self.name)


Command = Callable[[Any, Any], Awaitable[None]]


def _counted(verb: str, method: Command) -> Command:
    """``method`` (an ``smtp_<VERB>``) behind the per-session accounting: junk commands are
    counted, others are progress (when they start and when they end); nothing runs once
    we have closed the session. A
    ``super().smtp_<VERB>()`` call inside another one is not counted again."""
    junk = verb in JUNK_COMMANDS

    @functools.wraps(method)  # keeps @syntax's attributes, which HELP reads
    async def run(self: BaseSMTP, arg: Any) -> None:
        if self._in_command:
            await method(self, arg)
            return
        if self._dropped:
            return
        self.errors.command(verb)
        if not junk:
            self.progress_at = self.loop.time()
        self._in_command = True
        try:
            await method(self, arg)
        finally:
            self._in_command = False
        if not junk:  # and when it ends: a slow DATA that ended in 250 is the latest progress
            self.progress_at = self.loop.time()

    run.__mailstack_counted__ = True  # type: ignore[attr-defined]
    return run


def _count_commands(cls: type[SMTP]) -> None:
    """Put every ``smtp_<VERB>`` method of ``cls`` (its own and aiosmtpd's: NOOP, QUIT,
    HELP) behind ``_counted``, once per class, when the class is made: aiosmtpd finds the
    commands by name (``smtp_`` prefix, its public extension point), so it finds these."""
    for name in dir(cls):
        if not name.startswith("smtp_"):
            continue
        method = getattr(cls, name)
        if getattr(method, "__mailstack_counted__", False):
            continue
        setattr(cls, name, _counted(name[5:], method))


class BaseSMTP(SMTP):
    """aiosmtpd.SMTP with mailstack's protocol rules (see module docstring)."""

    # The StreamReader limit: DATA lines up to this are read whole; longer ones come in
    # fragments. Command lines are still limited by command_size_limit (512, RFC 5321
    # §4.5.3.1.4) plus the extension allowances.
    line_length_limit = 65536
    is_lmtp = False
    offers_dsn = True  # RFC 3461: EHLO says DSN; MAIL/RCPT take its parameters

    def __init__(
        self,
        handler: Handler,
        settings: ServerSettings,
        *,
        limits: net.ConnectionLimits | None = None,
        inflight: net.InFlight | None = None,
        connections: ConnectionSet | None = None,
    ) -> None:
        # aiosmtpd's own hooks (handle_*) stay empty: our policy is ``handler``, whose hooks
        # return Reply values; aiosmtpd's AUTH is not used (submission has its own).
        super().__init__(
            _NO_HOOKS,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            ident=settings.ident,
            tls_context=None if settings.implicit_tls else settings.tls_context,
            timeout=settings.timeout,
            loop=asyncio.get_running_loop(),
        )
        # aiosmtpd keeps these in one dict on the class, shared by every connection (and
        # cleared by every __init__); ours is per connection (EHLO raises MAIL/RCPT's).
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.handler = handler
        self.settings = settings
        self.limits = limits
        self.inflight = inflight or net.InFlight()
        self.connections = connections
        self.peer_ip: str | None = None
        self.tls_active = settings.implicit_tls
        self.tls_info: str | None = None
        self._acquired = False
        self._refused = False
        self._greeted = False
        self._in_data = False
        self._in_command = False
        self.busy = False  # inside DATA or a delivery: a stop lets it finish
        self.errors = ErrorCounter(settings.limits)
        self.progress_at = 0.0  # loop time of the last progress (connect, a non-junk command's start or end)
        self._dropped = False  # closed by us (error limit, eviction): ignore what is still buffered

    # ------------------------------------------------------------------ plumbing

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _count_commands(cls)

    @property
    def txn(self) -> Transaction:
        # (no assert: aiosmtpd's __init__ inspects every attribute before there is one)
        return self.envelope  # type: ignore[return-value]

    def reset_transaction(self) -> None:
        """A new, empty mail transaction (after EHLO/HELO, RSET, DATA, STARTTLS)."""
        self.envelope = Transaction()

    def _write_now(self, reply: Reply) -> None:
        """Write one reply line without waiting (the connection is about to close)."""
        if self.transport is not None:
            try:
                cast(asyncio.WriteTransport, self.transport).write(f"{reply}\r\n".encode("ascii"))
            except Exception:  # pragma: no cover - transport already gone
                pass

    def _discard_buffered(self) -> None:
        """Forget what the client sent and we have not read (asyncio.StreamReader keeps it
        in ``_buffer``: there is no public way to drop it; guarded by test_server_unit)."""
        buf = getattr(self._reader, "_buffer", None)
        if buf:
            buf.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer_ip = net.peer_ip(transport)
        if self.connections is not None and self.connections.closing:
            self._refuse(transport, R.SHUTTING_DOWN)
            return
        if self.limits is not None:
            if not self.limits.acquire(self.peer_ip, count_refusal=False):
                total_full = self.limits.active >= self.limits.max_total
                ip_full = self.peer_ip is not None and self.limits.count(self.peer_ip) >= self.limits.max_per_ip
                # room for newcomers: a client within its per-IP cap displaces a session
                # that only holds a slot (see module docstring)
                if not (total_full and not ip_full and self.connections is not None
                        and self.connections.may_evict(self.peer_ip)
                        and self.connections.evict_idle() and self.limits.acquire(self.peer_ip)):
                    self.limits.note_refused()
                    self._refuse(transport, R.TOO_MANY_FROM_IP if ip_full else R.TOO_MANY_CONNECTIONS)
                    return
            self._acquired = True
        self.progress_at = self.loop.time()
        if self.connections is not None:
            self.connections.live.add(self)
        if self.settings.implicit_tls:
            sslobj = transport.get_extra_info("ssl_object")
            self.tls_info = _tls_description(sslobj)
        super().connection_made(transport)
        self.reset_transaction()
        if self.settings.implicit_tls and self.session is not None:
            self.session.ssl = transport.get_extra_info("ssl_object") or True  # type: ignore[assignment]

    def _refuse(self, transport: asyncio.BaseTransport, reply: Reply) -> None:
        self._refused = True
        log.info("%s: refused %s: %s", self.settings.service, self.peer_ip or "local", reply)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(f"{reply}\r\n".encode("ascii"))
        transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._acquired and self.limits is not None:
            self._acquired = False
            self.limits.release(self.peer_ip)
        if self.connections is not None:
            self.connections.live.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        super().eof_received()  # cancels the session task
        # False: the transport closes itself. aiosmtpd keeps it half-open, and when the
        # session task had not started yet nobody ever closed it (a leaked socket).
        return False

    @property
    def evictable(self) -> bool:
        return (self._acquired and not self.busy and not self._dropped and self.transport is not None
                and self.envelope is not None)

    def evict(self) -> None:
        """Close this session to make room for a new client (its slot is free at once)."""
        if self._acquired and self.limits is not None:
            self._acquired = False
            self.limits.release(self.peer_ip)
        if self.connections is not None:
            self.connections.live.discard(self)
        self._drop(EVICTED, "evicted")

    def _drop(self, reply: Reply, status: str) -> None:
        """Say ``reply`` (a 421) and close; whatever the client pipelined is ignored."""
        if self.transport is None or self._dropped:
            return
        self._dropped = True
        log.info("%s: closing session with %s: %s", self.settings.service, self.peer_ip or "local", reply)
        maillog.log_event("rejected", queue_id=None, service=self.settings.service, client=self.peer_ip,
                          sender=None, recipients=None, size=None, status=status, reply=reply)
        self._discard_buffered()
        self._write_now(reply)
        self.transport.close()

    def shutdown(self) -> None:
        """Close this connection now (server stop), with a 421 when idle between commands."""
        if self.transport is None:
            return
        if not self._in_data:
            self._write_now(R.SHUTTING_DOWN)
        self.transport.close()

    def _timeout_cb(self) -> None:
        # aiosmtpd's timer callback (private; guarded by test_server_unit), which only closes.
        # RFC 5321 §4.5.3.2: on a timeout, say why (421) before closing.
        log.info("%s: %s timed out", self.settings.service, self.peer_ip or "local")
        if self.transport is not None:
            self._write_now(R.TIMEOUT)
            self.transport.close()

    async def push(self, status: Any) -> None:
        """Send one reply line; adds an enhanced code to aiosmtpd's built-in replies.

        Counts error replies; waits first from the soft error limit on; closes with
        ``421 4.7.0`` after the reply that reaches the hard limit (unless inside DATA's
        replies: ``smtp_DATA`` checks once all are out).
        """
        if self._dropped:
            return
        if isinstance(status, Reply):
            status = str(status)
        elif isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        if self._greeted:
            status = R.add_enhanced(status)
            code = status[:3]
            if code.isdigit():
                self.errors.reply(int(code))
            await self._tarpit()
        else:
            self._greeted = True  # the 220 greeting: RFC 5321 §4.2 form, no enhanced code
        await super().push(status)
        if not self.busy:
            self._check_errors()

    async def _tarpit(self) -> None:
        delay = self.errors.delay
        if delay:
            await asyncio.sleep(delay)  # only this session waits

    def _check_errors(self) -> None:
        if self.errors.exhausted:
            self._drop(TOO_MANY_ERRORS, "too_many_errors")

    async def push_lines(self, code: int, lines: Sequence[str]) -> None:
        """A multi-line reply (EHLO/LHLO), written in one go."""
        if self._dropped:
            return
        await self._tarpit()
        out = [f"{code}-{line}" for line in lines[:-1]] + [f"{code} {lines[-1]}"]
        await super().push("\r\n".join(out))  # aiosmtpd's push: written in one go, drained
        self._check_errors()  # junk EHLOs over the limit count as errors too

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, SMTPReplyError):
            return str(error.reply)
        log.exception("%s: error in session with %s", self.settings.service, self.peer_ip or "local")
        if self._in_data and self.transport is not None:
            # The body is half read: what follows must never be parsed as commands.
            self.transport.close()
        return str(R.LOCAL_ERROR)

    # ------------------------------------------------------------------ greeting

    @property
    def requiretls_ok(self) -> bool:
        """May a MAIL carry REQUIRETLS here (RFC 8689 §4.1: only over TLS)?"""
        return self.tls_active

    def ehlo_keywords(self) -> list[str]:
        """Extension keywords after the host line; subclasses may add (AUTH ...)."""
        kw = ["PIPELINING", f"SIZE {self.settings.max_message_size}", "8BITMIME", "SMTPUTF8",
              "ENHANCEDSTATUSCODES", "CHUNKING"]
        if self.offers_dsn:
            kw.append("DSN")
        if self.tls_context is not None and not self.tls_active:
            kw.append("STARTTLS")
        if self.requiretls_ok:  # RFC 8689 §4.1: offered only over TLS
            kw.append("REQUIRETLS")
        return kw

    async def _ehlo(self, hostname: str, verb: str) -> None:
        if not hostname:
            await self.push(f"501 5.5.4 Syntax: {verb} hostname")
            return
        self.reset_transaction()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        self.command_size_limits["MAIL"] = self.command_size_limit + 26 + 10 + 20
        self.command_size_limits["RCPT"] = self.command_size_limit + 10
        await self.push_lines(250, [self.hostname, *self.ehlo_keywords()])

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        await self._ehlo(hostname, "EHLO")

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self.reset_transaction()
        assert self.session is not None
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self.push(f"250 {self.hostname}")

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if self.tls_context is None or self.tls_active:
            await self.push(str(R.BAD_SEQUENCE.with_text("TLS already active")) if self.tls_active
                            else str(R.TLS_UNAVAILABLE))
            return
        await self.push(str(R.READY_TLS))
        # RFC 3207 §4.2: anything the client pipelined before the handshake is discarded.
        self._discard_buffered()
        # StreamWriter.start_tls (public asyncio) rather than aiosmtpd's STARTTLS, which
        # reaches into asyncio.sslproto; ``_writer``/``_reader`` are aiosmtpd's streams
        # (guarded by test_server_unit).
        try:
            await self._writer.start_tls(self.tls_context, ssl_handshake_timeout=30.0)
        except (ssl.SSLError, OSError, ConnectionError, asyncio.TimeoutError, TimeoutError) as e:
            log.info("%s: TLS handshake with %s failed: %s", self.settings.service, self.peer_ip, e)
            if self.transport is not None:
                cast(asyncio.Transport, self.transport).abort()
            return
        new_transport = self._writer.transport
        self.transport = new_transport
        # asyncio updates the writer and the protocol, not the reader, whose flow control
        # (pause/resume reading) must act on the TLS transport now (guarded by test_server_unit)
        self._reader._transport = new_transport  # type: ignore[attr-defined]
        self.tls_active = True
        sslobj = new_transport.get_extra_info("ssl_object")
        self.tls_info = _tls_description(sslobj)
        # RFC 3207 §4.2: forget everything learned before TLS; the client must EHLO again.
        assert self.session is not None
        old_peer = self.session.peer
        self.session = Session(self.loop)
        self.session.peer = old_peer
        self.session.ssl = sslobj or True  # type: ignore[assignment]  # aiosmtpd: "not None" = TLS
        self.reset_transaction()

    # ------------------------------------------------------------------ transaction

    @syntax("MAIL FROM:<address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("MAIL"):
            return
        txn = self.txn
        if txn.sender is not None:
            await self.push(R.BAD_SEQUENCE.with_text("Nested MAIL command"))
            return
        assert self.session is not None
        args = parse_mail(arg, extended=self.session.extended_smtp, max_size=self.settings.max_message_size,
                          dsn=self.offers_dsn and self.session.extended_smtp)
        if isinstance(args, Reply):
            await self.push(args)
            return
        if args.requiretls and not self.requiretls_ok:  # RFC 8689 §4.1 (never advertised without TLS)
            await self.push(Reply(530, "5.7.10", "REQUIRETLS needs a TLS connection"))
            return
        sender = args.sender
        txn.requiretls = args.requiretls
        txn.size_hint = args.size or 0
        txn.body_type = args.body
        txn.smtp_utf8 = args.smtputf8
        txn.dsn_ret, txn.dsn_envid = args.ret, args.envid
        reply = await self.handler.mail(self, txn, sender)
        if reply.is_ok:
            txn.sender = sender
            txn.mail_from = sender or "<>"
            txn.queue_id = new_queue_id()
        await self.push(reply)

    @syntax("RCPT TO:<address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("RCPT"):
            return
        txn = self.txn
        if txn.sender is None:
            await self.push(R.BAD_SEQUENCE.with_text("Need MAIL command"))
            return
        args = parse_rcpt(arg, smtputf8=bool(txn.smtp_utf8), dsn=self.offers_dsn)
        if isinstance(args, Reply):
            await self.push(args)
            return
        address = args.recipient
        if len(txn.recipients) >= self.settings.max_recipients:  # RFC 5321 §4.5.3.1.10
            await self.push(R.TOO_MANY_RECIPIENTS)
            return
        reply = await self.handler.rcpt(self, txn, address)
        if reply.is_ok:
            txn.recipients.append(address)
            txn.rcpt_tos.append(address)
            if args.notify is not None or args.orcpt:
                txn.dsn_rcpts[address] = RecipientRequest(args.notify, args.orcpt)
        await self.push(reply)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        self.reset_transaction()
        await self.push(R.OK)

    async def smtp_AUTH(self, arg: str) -> None:
        # The MX and LMTP offer no AUTH (submission overrides this); aiosmtpd's own AUTH
        # would answer 538 as if it could be done under TLS.
        await self.push(NO_AUTH)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        # RFC 5321 §3.5.3: 252 when we will not verify; no address harvesting.
        await self.push(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"))

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(Reply(502, "5.5.1", "EXPN not available"))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        txn = self.txn
        if txn.sender is None:
            await self.push(R.BAD_SEQUENCE.with_text("Need MAIL command"))
            return
        if not txn.recipients:
            await self.push(Reply(554, "5.5.1", "No valid recipients"))
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if txn.chunks is not None:  # RFC 3030 §3: no DATA in a transaction that used BDAT
            await self.push(DATA_AFTER_BDAT)
            return
        await self.push(R.START_DATA)
        receiver = DataReceiver(self.settings.max_message_size)
        reader = self._reader
        feed = receiver.feed
        clock = self.loop.time
        last_reset = clock()
        timeout = self.settings.timeout
        rate = self.settings.min_data_rate
        # the latest the body may end, before the bytes received buy more time
        data_deadline = last_reset + timeout
        rearm_every = min(1.0, timeout / 4)
        self._in_data = True
        self.busy = True
        try:
            while True:
                try:
                    piece = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as e:
                    piece = await reader.readexactly(e.consumed)
                except asyncio.IncompleteReadError:
                    # connection closed mid-body: nothing is accepted
                    if self.transport is not None:
                        self.transport.close()
                    return
                if feed(piece):
                    break
                # RFC 5321 §4.5.3.2.5: the timeout runs per data block, not per message;
                # re-arming a timer per line costs more than the line, so once a second
                # (or a quarter of a short timeout);
                # never past the deadline that min_data_rate gives (a dribbled body ends).
                now = clock()
                if now - last_reset > rearm_every:
                    if rate:
                        left = data_deadline + receiver.size / rate - now
                        self._reset_timeout(max(min(timeout, left), 0.001))
                    else:
                        self._reset_timeout()
                    last_reset = now
        finally:
            self._in_data = False
        self._reset_timeout()
        if receiver.bare_lf:
            log.info("%s: %s sent %d bare LF line end(s) in DATA; normalised", self.settings.service,
                     self.peer_ip or "local", receiver.bare_lf)
        if receiver.error is not None:
            self.busy = False
            await self.handler_rejected_data(txn, receiver.error, receiver.size)
            self.reset_transaction()
            await self.push(receiver.error)
            return
        await self._deliver(txn, receiver.content())

    async def _deliver(self, txn: Transaction, content: bytes) -> None:
        """The end of DATA or ``BDAT ... LAST``: the handler's replies (250 only once on disk)."""
        self.busy = True
        try:
            async with self.inflight.hold():
                replies = list(await self.handler.data(self, txn, content))
        except SMTPReplyError as e:
            replies = [e.reply] * (len(txn.recipients) if self.is_lmtp else 1)
        except Exception:
            log.exception("%s: delivery failed", self.settings.service)
            replies = [R.LOCAL_ERROR] * (len(txn.recipients) if self.is_lmtp else 1)
        self.reset_transaction()
        if any(r.is_ok for r in replies):
            self.errors.delivered()  # Postfix: the error counts are about not delivering mail
        try:
            for reply in replies:
                await self.push(reply)
        finally:
            # only now may a stop close us: the client has its answer (no duplicate on retry)
            self.busy = False
        self._check_errors()

    @syntax("BDAT chunk-size [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030 CHUNKING; the rules are in ``chunking``'s docstring."""
        args = parse_bdat(arg)
        if args is None:
            # the chunk's length is unknown: its octets must never be read as commands
            await self.push(BDAT_SYNTAX)
            if self.transport is not None:
                self.transport.close()
            return
        txn = self.txn
        refusal: Reply | None = None
        # these two answer at once (the chunk is still read and dropped after the reply)
        if await self.check_helo_needed() or await self.check_auth_needed("BDAT"):
            await self._read_chunk(args.size, None)
            return
        if txn.sender is None:
            refusal = R.BAD_SEQUENCE.with_text("Need MAIL command")
        elif not txn.recipients:
            refusal = Reply(554, "5.5.1", "No valid recipients")
        receiver = txn.chunks
        if refusal is None and receiver is None:
            receiver = txn.chunks = ChunkReceiver(self.settings.max_message_size)
        # RFC 3030 §2: the chunk is read even when the command is refused
        if not await self._read_chunk(args.size, receiver if refusal is None else None):
            return  # the connection closed mid-chunk: nothing is accepted
        if refusal is not None:
            await self.push(refusal)
            return
        assert receiver is not None
        receiver.end_chunk()
        if receiver.error is not None:
            # RFC 3030 §4.2: the transaction has failed; later chunks meet "Need MAIL"
            await self.handler_rejected_data(txn, receiver.error, receiver.size)
            self.reset_transaction()
            await self.push(receiver.error)
            return
        if not args.last:
            await self.push(Reply(250, "2.0.0", f"{args.size} octets received"))
            return
        result = receiver.finish()
        if isinstance(result, Reply):
            await self.handler_rejected_data(txn, result, receiver.size)
            self.reset_transaction()
            await self.push(result)
            return
        content, bare_lf = result
        if bare_lf:
            log.info("%s: %s sent %d bare LF line end(s) in BDAT; normalised", self.settings.service,
                     self.peer_ip or "local", bare_lf)
        await self._deliver(txn, content)

    async def _read_chunk(self, size: int, receiver: ChunkReceiver | None) -> bool:
        """Read exactly ``size`` octets of a BDAT chunk into ``receiver`` (None: discard them).

        Memory: one piece of at most ``CHUNK_PIECE`` octets at a time, plus what the
        receiver keeps (bounded by the size limit). The idle timer is re-armed as in DATA,
        never past ``timeout`` plus the octets received divided by ``min_data_rate``.
        False when the connection closed first.
        """
        reader = self._reader
        clock = self.loop.time
        timeout = self.settings.timeout
        rate = self.settings.min_data_rate
        start = last_reset = clock()
        rearm_every = min(1.0, timeout / 4)
        left = size
        self._in_data = True
        self.busy = True
        try:
            while left > 0:
                piece = await reader.read(min(left, CHUNK_PIECE))
                if not piece:
                    if self.transport is not None:
                        self.transport.close()
                    return False
                left -= len(piece)
                if receiver is not None:
                    receiver.feed(piece)
                now = clock()
                if now - last_reset > rearm_every:
                    if rate:
                        deadline = start + timeout + (size - left) / rate
                        self._reset_timeout(max(min(timeout, deadline - now), 0.001))
                    else:
                        self._reset_timeout()
                    last_reset = now
        finally:
            self._in_data = False
            self.busy = False
        self._reset_timeout()
        return True

    async def handler_rejected_data(self, txn: Transaction, reply: Reply, size: int) -> None:
        hook = getattr(self.handler, "data_rejected", None)
        if hook is not None:
            await hook(self, txn, reply, size)

    # ------------------------------------------------------------------ helpers

    @property
    def helo_name(self) -> str | None:
        return self.session.host_name if self.session else None


_count_commands(BaseSMTP)


def _tls_description(sslobj: Any) -> str | None:
    if sslobj is None:
        return None
    try:
        version = sslobj.version()
        cipher = sslobj.cipher()
        return f"version={version} cipher={cipher[0] if cipher else '?'}"
    except Exception:  # pragma: no cover
        return "TLS"
