"""The submission service (``[submission]``): users sending mail (RFC 6409), 587 and 465.

Built on ``server.BaseSMTP`` (protocol rules) and ``mx.MXHandler`` (recipient policy,
local delivery, settling results); this module adds, each where it is enforced:

- AUTH PLAIN (RFC 4616) and LOGIN against the directory, offered and accepted only
  under TLS (STARTTLS on ``listen``, implicit on ``tls_listen``) or, when
  ``[auth] allow_plaintext_on_loopback``, from a loopback peer (RFC 4954 §4: ``538
  5.7.11`` otherwise); the check is the one login path of every service
  (``mailstack.auth.Authenticator``: shared throttle, own hash pool, one mail-log line
  ``event=auth ... client=<ip> ... status=auth_failed`` for fail2ban); a blocked client
  or account gets the normal ``535 5.7.8``, a busy hash pool or a directory that is down
  ``454 4.7.0`` (RFC 4954 §6); a SASL line longer than ``mailstack.auth.MAX_SASL_LINE``
  gets ``500 5.5.6`` (RFC 4954 §4) and is discarded;
- MAIL before AUTH: ``530 5.7.0`` (RFC 4954 §6); the envelope sender must be an
  address the user owns: their own (``+tag`` too), or an alias whose targets include
  them, else ``553 5.7.1``; the null sender is refused the same way;
- at the end of DATA the author is read by ``mail.author.author`` (the one From:
  reading, shared with DMARC and DKIM signing): no From: ``550 5.6.0``; several From:
  or Sender: fields, a From: that does not parse, a group, a malformed header line
  ``554 5.6.0``; every From: mailbox and the Sender:, if any, must be owned the same
  way (``553 5.7.1``, RFC 5322 §3.6.2: simplest safe reading of several authors);
  ``Message-ID:`` and ``Date:`` are added when missing (RFC 6409 §8.2, §8.3), then our
  ``Received:`` (``with ESMTPSA``, RFC 3848), then the DKIM signature of the From:
  domain when it has a key (``mail.dkim``);
- remote recipients go into the queue as ONE entry (one transaction per destination
  domain later), before anything is delivered locally; local ones go to the MDA; 250
  only when all of it is on disk (``MXHandler._settle``), and the queue runner of this
  process is woken at once (``queue.wake.notify``); a message with ``TLS-Required: No``
  (RFC 8689 §5) and without REQUIRETLS is queued with ``extra["tls_optional"]``, so the
  runner ignores MTA-STS and DANE for it (the field itself stays in the message).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import syntax

from mailstack import maillog, net
from mailstack.delivery import NOT_LOCAL, Resolution, ResolveError, Resolver
from mailstack.mail import headers
from mailstack.mail.headers import received_header
from mailstack.mail import author as author_mod
from mailstack.mail import dkim
from mailstack.mail.address import AddressError, parse_address, split_tag
from mailstack.auth import MAX_SASL_LINE, Authenticator
from mailstack.service import RunningService, ServiceContext, ServiceError
from mailstack.queue import wake
from mailstack.smtp import replies as R
from mailstack.smtp.limits import SessionLimits
from mailstack.smtp.mx import MXHandler, build_mda, dsn_extra, make_delivery
from mailstack.smtp.replies import Reply
from mailstack.smtp.sendlimits import KEEP_SECONDS, SendingLimits, periods
from mailstack.smtp.server import BaseSMTP, ConnectionSet, ServerSettings, SMTPService, Transaction
from mailstack.smtp.tlspolicy import tls_required_no

__all__ = ["SubmissionHandler", "SubmissionSMTP", "start", "add_missing_headers"]

log = logging.getLogger(__name__)

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_NEEDED = Reply(530, "5.7.0", "Authentication required")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_TEMP = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_MECH = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_SYNTAX = Reply(501, "5.5.2", "Cannot decode response")
AUTH_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")  # RFC 4954 §4
AUTH_BUSY = Reply(454, "4.7.0", "Temporary authentication failure, try again later")  # RFC 4954 §6
NOT_OWNER = Reply(553, "5.7.1", "Sender address rejected: not owned by user")
FROM_NOT_OWNER = Reply(553, "5.7.1", "From: header address rejected: not owned by user")
NO_FROM = Reply(550, "5.6.0", "Message has no From: header")
BAD_AUTHOR = Reply(554, "5.6.0", "Message refused: malformed author header")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
MECHANISMS = ("PLAIN", "LOGIN")


# ---------------------------------------------------------------------------
# headers


def add_missing_headers(data: bytes, hostname: str, now: float | None = None) -> bytes:
    """Message-ID and Date when missing (RFC 6409 §8.2, §8.3), at the end of the header
    section (``mail.headers``: ``Date :`` counts as a Date field); CRLF message in and out."""
    added = b""
    if not headers.has_field(data, "Date"):
        added += headers.field("Date", email.utils.formatdate(now or time.time(), localtime=False))
    if not headers.has_field(data, "Message-ID"):
        added += headers.field("Message-ID", f"<{time.strftime('%Y%m%d%H%M%S')}.{secrets.token_hex(8)}@{hostname}>")
    return headers.insert_fields(data, added) if added else data


# ---------------------------------------------------------------------------
# policy


class SubmissionHandler(MXHandler):
    """MXHandler that relays for authenticated users, checks ownership, signs."""

    service = "submission"

    def __init__(self, *, directory: Any, keys_dir: Any, sending: SendingLimits = SendingLimits(), **kw: Any) -> None:
        super().__init__(keys_dir=keys_dir, **kw)
        self.directory = directory
        self.sending = sending
        self._usage_writes = 0

    async def _usage(self, user: str) -> tuple[int, int]:
        """(messages this hour, recipients today) of ``user``; (0, 0) if the directory is away."""
        hour, day = periods(time.time())
        try:
            got = await asyncio.to_thread(self.directory.sending_usage, user, [hour, day])
        except Exception as e:  # fail open: a lost count never loses mail (sendlimits)
            log.warning("submission: cannot read the sending usage of %s: %s", user, e)
            return 0, 0
        return got.get(hour, (0, 0))[0], got.get(day, (0, 0))[1]

    async def _count(self, user: str, recipients: int) -> None:
        """One accepted message with ``recipients`` recipients, in this hour's and day's counts."""
        if not self.sending.enabled:
            return
        now = time.time()
        self._usage_writes += 1
        prune = now - KEEP_SECONDS if self._usage_writes % 256 == 1 else None
        try:
            await asyncio.to_thread(self.directory.add_sending_usage, user, list(periods(now)), 1, recipients, now,
                                    prune_before=prune)
        except Exception as e:
            log.warning("submission: cannot count the message of %s: %s", user, e)

    def _log_limited(self, server: BaseSMTP, txn: Transaction, user: str, recipient: str | None, reply: Reply) -> None:
        maillog.log_event("rejected", queue_id=None, service=self.service, client=server.peer_ip, sender=txn.sender,
                          recipients=recipient, size=None, status="rate_limited", reply=reply, user=user)

    def may_relay(self, server: BaseSMTP) -> bool:
        return bool(server.session and server.session.authenticated)

    async def owns(self, user: str, address: str) -> bool:
        """Is ``address`` the user's own (``+tag`` too) or an alias that points to them?"""
        try:
            addr = parse_address(address)
            me = parse_address(user)
        except AddressError:
            return False
        if addr.key == me.key:
            return True
        base, tag = split_tag(addr.local)
        if tag is not None and f"{base.casefold()}@{addr.domain}" == me.key:
            return True
        candidates = [addr.key] + ([f"{base}@{addr.domain}"] if tag is not None else [])
        for source in candidates:
            try:
                alias = await asyncio.to_thread(self.directory.get_alias, source)
            except Exception as e:
                log.warning("submission: alias lookup for %s failed: %s", source, e)
                return False
            if alias is None:
                continue
            for target in alias.targets:
                try:
                    if parse_address(target).key == me.key:
                        return True
                except AddressError:
                    continue
        return False

    async def mail(self, server: BaseSMTP, txn: Transaction, sender: str) -> Reply:
        user = getattr(server, "auth_user", None)
        if not server.session or not server.session.authenticated or user is None:
            return AUTH_NEEDED  # RFC 4954 §6
        if not sender or not await self.owns(user, sender):
            self._log_reject(server, txn, None, NOT_OWNER)
            maillog.log_event("rejected", queue_id=None, service=self.service, client=server.peer_ip, sender=sender,
                              recipients=None, size=None, status="not_owner", reply=NOT_OWNER, user=user)
            return NOT_OWNER
        if self.sending.messages_per_hour:
            limited = self.sending.at_mail((await self._usage(user))[0])
            if limited is not None:
                self._log_limited(server, txn, user, None, limited)
                return limited
        return SENDER_OK

    async def rcpt(self, server: BaseSMTP, txn: Transaction, recipient: str) -> Reply:
        if not self.may_relay(server):
            return AUTH_NEEDED
        user = getattr(server, "auth_user", None)
        if self.sending.recipients_per_day and user is not None:
            limited = self.sending.at_rcpt((await self._usage(user))[1], len(txn.resolutions))
            if limited is not None:
                self._log_limited(server, txn, user, recipient, limited)
                return limited
        try:
            res = await asyncio.to_thread(self.resolver.resolve, recipient)
        except ResolveError as e:
            if e.reply is NOT_LOCAL:
                txn.resolutions.append(Resolution(recipient, forwards=(recipient,)))
                return Reply(250, "2.1.5", "Recipient OK")
            self._log_reject(server, txn, recipient, e.reply)
            return e.reply
        txn.resolutions.append(res)
        return Reply(250, "2.1.5", "Recipient OK")

    async def data(self, server: BaseSMTP, txn: Transaction, content: bytes) -> Sequence[Reply]:
        user = getattr(server, "auth_user", None)
        sender = txn.sender or ""
        common: dict[str, object] = dict(queue_id=txn.queue_id, service=self.service, client=server.peer_ip,
                                          sender=sender, size=len(content))
        # RFC 5322 §3.6, §3.6.2: exactly one From:, every mailbox in it (and the Sender:,
        # if any) owned by the user; read by the one From: parser (mail.author) that DMARC
        # and DKIM signing use too, so what we check is what they see.
        try:
            who = author_mod.author(content)
        except author_mod.AuthorError as e:
            reply = NO_FROM if str(e) == author_mod.NO_FROM else BAD_AUTHOR.with_text(f"Message refused: {e}")
            maillog.log_event("rejected", recipients=txn.recipients, status="rejected", reply=reply, user=user,
                              **common)
            return [reply]
        owned = list(who.mailboxes) + ([who.sender] if who.sender is not None else [])
        for mb in owned:
            if user is None or not await self.owns(user, str(mb.address)):
                maillog.log_event("rejected", recipients=txn.recipients, status="not_owner", reply=FROM_NOT_OWNER,
                                  user=user, header_from=str(mb.address), **common)
                return [FROM_NOT_OWNER]
        content = add_missing_headers(content, self.hostname)
        proto = "UTF8SMTPSA" if txn.smtp_utf8 else "ESMTPSA"  # RFC 3848
        trace = received_header(helo=server.helo_name, client_ip=server.peer_ip, by=self.hostname, protocol=proto,
                                queue_id=txn.queue_id, tls=server.tls_info)
        data = trace + content
        try:
            data = await asyncio.to_thread(dkim.sign_for_from, data, self.keys_dir)
        except dkim.DKIMError as e:
            log.error("submission: %s", e)  # send unsigned rather than not at all
        common["size"] = len(data)
        remote = [r for r in txn.resolutions if not r.mailboxes and r.forwards == (r.recipient,) and not r.via_alias]
        local = [r for r in txn.resolutions if r not in remote]
        results = []
        if remote:
            try:
                qid = await asyncio.to_thread(
                    self.queue.enqueue, sender, [r.recipient for r in remote], data,
                    queue_id=txn.queue_id, smtputf8=bool(txn.smtp_utf8), client=server.peer_ip,
                    reason="submission",
                    extra={"user": user, **dsn_extra(txn), **({"requiretls": True} if txn.requiretls else {}),
                           # RFC 8689 §5: TLS-Required: No lifts MTA-STS/DANE; REQUIRETLS wins over it
                           **({"tls_optional": True} if not txn.requiretls and tls_required_no(data) else {})},
                )
            except OSError:
                log.exception("submission: cannot queue %s", txn.queue_id)
                maillog.log_event("deferred", recipients=txn.recipients, status="deferred", reply=R.LOCAL_ERROR,
                                  **common)
                return [R.LOCAL_ERROR]
            wake.notify(self.queue.dir)
            from mailstack.delivery import RecipientResult

            queued = Reply(250, "2.0.0", f"Queued as {qid}")
            results.extend(RecipientResult(r.recipient, queued, (), qid) for r in remote)
            for r in remote:
                maillog.log_event("queued", recipients=r.recipient, status="queued", reply=queued,
                                  **{**common, "queue_id": qid})
        if local:
            results.extend(await self.mda.deliver(
                sender, [r.recipient for r in local], local, data, queue_id=txn.queue_id, client=server.peer_ip,
                smtputf8=bool(txn.smtp_utf8), body_8bit=txn.body_type == "8BITMIME",
                dsn=txn.dsn, requiretls=bool(txn.requiretls),
            ))
            # the DSN of a local permanent failure, or a queued retry, may need the runner
            wake.notify(self.queue.dir)
        if not local:
            reply = Reply(250, "2.0.0", f"OK: queued as {txn.queue_id}")
            maillog.log_event("accepted", recipients=txn.recipients, status="ok", reply=reply, user=user, **common)
            if user is not None:
                await self._count(user, len(txn.recipients))
            return [reply]
        order = {r: i for i, r in enumerate(txn.recipients)}
        results.sort(key=lambda r: order.get(r.recipient, 0))
        settled = await self._settle(txn, sender, data, results, common)
        if user is not None and settled.code < 300:
            await self._count(user, len(txn.recipients))
        return [settled]


# ---------------------------------------------------------------------------
# protocol


class SubmissionSMTP(BaseSMTP):
    """BaseSMTP plus AUTH (see module docstring)."""

    def __init__(self, handler: SubmissionHandler, settings: ServerSettings, *, directory: Any,
                 auth: Authenticator, allow_plaintext_on_loopback: bool, **kw: Any) -> None:
        super().__init__(handler, settings, **kw)
        self.directory = directory
        self.auth = auth
        self.allow_plaintext_on_loopback = allow_plaintext_on_loopback
        self.auth_user: str | None = None
        # AUTH with an initial response reaches smtp_AUTH up to the reader's limit, so an
        # overlong one gets 500 5.5.6 there rather than a bare "500 Command line too long".
        self.command_size_limits["AUTH"] = self.line_length_limit

    @property
    def sasl_allowed(self) -> bool:
        if self.tls_active:
            return True
        return self.allow_plaintext_on_loopback and self.transport is not None and net.is_loopback_peer(self.transport)

    def ehlo_keywords(self) -> list[str]:
        kw = super().ehlo_keywords()
        if self.sasl_allowed and not (self.session and self.session.authenticated):
            kw.append("AUTH " + " ".join(MECHANISMS))
        return kw

    async def _read_b64(self, challenge: str) -> str | None:
        """One SASL continuation (RFC 4954 §4); None when the client aborted, sent junk or
        an overlong line (each already answered), or went away."""
        await self.push(f"334 {base64.b64encode(challenge.encode()).decode('ascii')}")
        line = await self._read_sasl_line()
        if line is None:
            return None
        blob = line.strip()
        if blob == b"*":  # RFC 4954 §4: the client cancels
            await self.push(AUTH_ABORTED)
            return None
        try:
            return base64.b64decode(blob, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            await self.push(AUTH_SYNTAX)
            return None

    async def _read_sasl_line(self) -> bytes | None:
        """A continuation line of at most MAX_SASL_LINE octets; longer: the rest of it is
        read and dropped, 500 5.5.6 (RFC 4954 §4), None. None too when the client left."""
        reader = self._reader
        try:
            try:
                line: bytes = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as e:
                await reader.readexactly(e.consumed)
                while True:  # drop the rest of the line, a buffer at a time
                    try:
                        await reader.readuntil(b"\n")
                        break
                    except asyncio.LimitOverrunError as more:
                        await reader.readexactly(more.consumed)
                line = b""
                too_long = True
            else:
                too_long = len(line.rstrip(b"\r\n")) > MAX_SASL_LINE
        except (asyncio.IncompleteReadError, ConnectionError):
            if self.transport is not None:
                self.transport.close()
            return None
        if too_long:
            await self.push(AUTH_TOO_LONG)
            return None
        self._reset_timeout()
        return line

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None
        if not self.session.extended_smtp:
            await self.push(Reply(503, "5.5.1", "AUTH needs EHLO"))
            return
        if not self.sasl_allowed:
            await self.push(AUTH_NEEDS_TLS)
            return
        if self.session.authenticated:
            await self.push(AUTH_ALREADY)
            return
        if self.txn.sender is not None:  # RFC 4954 §4: not during a mail transaction
            await self.push(Reply(503, "5.5.1", "AUTH not allowed during a mail transaction"))
            return
        if len(arg or "") > MAX_SASL_LINE:
            await self.push(AUTH_TOO_LONG)
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self.push(R.BAD_SYNTAX.with_text("Syntax: AUTH mechanism [initial-response]"))
            return
        mech = args[0].upper()
        if mech not in MECHANISMS:
            await self.push(AUTH_MECH)
            return
        username: str | None
        password: str | None
        if mech == "PLAIN":
            if len(args) == 2:
                if args[1] == "=":
                    raw = ""
                else:
                    try:
                        raw = base64.b64decode(args[1], validate=True).decode("utf-8")
                    except (binascii.Error, UnicodeDecodeError):
                        await self.push(AUTH_SYNTAX)
                        return
            else:
                got = await self._read_b64("")
                if got is None:
                    return
                raw = got
            parts = raw.split("\0")
            if len(parts) != 3:  # RFC 4616 §2: [authzid] NUL authcid NUL passwd
                await self.push(AUTH_SYNTAX)
                return
            authzid, username, password = parts
            if authzid and authzid.casefold() != username.casefold():
                await self.push(Reply(535, "5.7.8", "Authorization identity not allowed"))
                return
        else:  # LOGIN (draft-murchison-sasl-login)
            if len(args) == 2:
                try:
                    username = base64.b64decode(args[1], validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    await self.push(AUTH_SYNTAX)
                    return
            else:
                username = await self._read_b64("Username:")
                if username is None:
                    return
            password = await self._read_b64("Password:")
            if password is None:
                return
        await self._check(username, password, mech)

    async def _check(self, username: str, password: str, mechanism: str) -> None:
        assert self.session is not None
        outcome = await self.auth.authenticate("submission", username, password, self.peer_ip, mechanism=mechanism)
        if outcome.temporary:
            await self.push(AUTH_BUSY)
            return
        if outcome.user is None:  # failed or throttled: the same answer
            await self.push(AUTH_FAILED)
            return
        self.session.authenticated = True
        self.session.auth_data = username  # type: ignore[assignment]  # aiosmtpd types it None
        self.auth_user = str(outcome.user.address)
        await self.push(AUTH_OK)


async def start(ctx: ServiceContext) -> RunningService:
    """The ``submission`` service (see ``mailstack.service``)."""
    cfg = ctx.config
    delivery, queue = make_delivery(cfg, ctx.directory)
    queue.ensure()
    try:
        mda = build_mda(cfg, delivery)
    except ValueError as e:
        raise ServiceError(f"[smtp] mda: {e}") from None
    handler = SubmissionHandler(directory=ctx.directory, keys_dir=dkim.keys_dir(cfg), hostname=cfg.hostname,
                                resolver=Resolver(ctx.directory), delivery=delivery, mda=mda, queue=queue,
                                sending=SendingLimits(cfg.submission.max_messages_per_hour,
                                                      cfg.submission.max_recipients_per_day))
    settings = ServerSettings(
        service="submission",
        hostname=cfg.hostname,
        max_message_size=cfg.smtp.max_message_size,
        max_recipients=cfg.smtp.max_recipients,
        timeout=cfg.smtp.command_timeout,
        tls_context=ctx.tls.server,
        protocol="ESMTPSA",
        limits=SessionLimits.from_config(cfg.smtp),
        min_data_rate=cfg.smtp.min_data_rate,
    )
    auth = ctx.auth or Authenticator.from_config(cfg, ctx.directory)
    # [submission]'s own connection caps (not the MX's: users behind one NAT share an IP)
    limits = net.ConnectionLimits(cfg.submission.max_connections, cfg.submission.max_connections_per_ip, "submission")
    inflight = net.InFlight()
    conns = ConnectionSet()

    def factory_for(address: object, implicit_tls: bool) -> net.ProtocolFactory:
        s = settings if not implicit_tls else ServerSettings(**{**settings.__dict__, "implicit_tls": True})
        return lambda: SubmissionSMTP(handler, s, directory=ctx.directory, auth=auth,
                                      allow_plaintext_on_loopback=cfg.auth.allow_plaintext_on_loopback,
                                      limits=limits, inflight=inflight, connections=conns)

    servers = await net.open_listeners("submission", cfg.listeners("submission"), factory_for, ctx.tls.server)
    return _SubmissionService("submission", servers, inflight, conns, own_auth=None if ctx.auth else auth)


class _SubmissionService(SMTPService):
    """SMTPService that also closes the Authenticator it made (when the runner shared none)."""

    def __init__(self, *args: Any, own_auth: Authenticator | None) -> None:
        super().__init__(*args)
        self._own_auth = own_auth

    async def stop(self, grace: float) -> None:
        await super().stop(grace)
        if self._own_auth is not None:
            await asyncio.to_thread(self._own_auth.close)
