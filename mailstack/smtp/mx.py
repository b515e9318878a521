"""The MX service (``[smtp]``): mail from other MTAs, for our domains only.

Policy (``MXHandler``), each rule where it is enforced:

- RCPT: the recipient is resolved against the directory (``delivery.Resolver``):
  unknown ``550 5.1.1``, disabled ``550 5.2.1``, a domain that is not ours
  ``554 5.7.1`` (never an open relay: the MX has no authenticated clients; the
  submission service overrides ``may_relay``), over quota ``452 4.2.2`` (with the
  SIZE= hint), directory down ``451 4.3.0``. More than ``max_recipients`` is
  ``452 4.5.3`` in ``server.BaseSMTP``.
- RCPT to ``SRS0=``/``SRS1=`` of one of our domains (a bounce of mail we forwarded with an
  SRS sender, ``mail.forward``): forged, altered or older than 21 days ``550 5.1.1``; a
  non-null sender ``550 5.7.1`` (bounces only); otherwise routed to the original sender
  (queued for it), before any directory lookup of the recipient.
- DATA: our ``Received:`` goes on top, then the MDA (in-process or LMTP, see ``mda``)
  delivers; the reply is 250 only when every recipient is on disk or durably queued:
    all OK -> 250; none OK -> the first temporary failure (the sender retries), else
    the first permanent one; some OK and some temporary -> those are queued for a
    retry (queue store) and 250; some OK and some permanent -> those bounce
    (``queue.bounce``: a signed DSN to the sender is queued, one log line) and 250. If
    that queueing fails, 451 (the sender retries; a duplicate is better than a loss).
- DATA, first: SPF, DKIM and DMARC (``[checks]``, ``mailstack.mail.authcheck``, MX only:
  submission and LMTP never check): ``550 5.7.1`` for a failing DMARC ``p=reject``,
  ``451 4.4.3`` when DNS cannot answer, Junk folder for ``p=quarantine``; forged
  ``Authentication-Results:`` claiming our hostname are removed and ours goes on top
  (RFC 8601 §5). With ``[checks] enabled = false`` no DNS is used at all.
- DATA, then: rspamd (``[spam] rspamd_url``, ``mailstack.spam``, MX only, clients outside
  ``[checks] ignore_networks``) with our SPF/DKIM/DMARC results: ``reject`` ``550 5.7.1``,
  ``soft reject``/``greylist`` ``451 4.7.1``, ``add header``/``rewrite subject`` Junk,
  ``no action`` INBOX, each with the spam headers (forged ones removed). rspamd down, slow
  or answering garbage: delivered unscanned with a header, or 451 (``[spam] fail_mode``).
- Every accepted, rejected, delivered, deferred and bounced message is one mail log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailstack import maillog, net
from mailstack.config import Config, parse_listen
from mailstack.delivery import NOT_LOCAL, LocalDelivery, Outcome, RecipientResult, Resolution, Resolver, ResolveError
from mailstack.mail import dkim
from mailstack.mail.forward import Forwarder, SRSError
from mailstack.mail.headers import received_header
from mailstack.mail.authcheck import Action, AuthChecker, CheckPolicy
from mailstack.mail.dsn import DSNRecipient
from mailstack.service import RunningService, ServiceContext, ServiceError
from mailstack.spam import Scanner, scanner_from_config
from mailstack.spam.policy import Disposition
from mailstack.spam.rspamd import ScanRequest
from mailstack.smtp import replies as R
from mailstack.smtp.limits import SessionLimits
from mailstack.smtp.mda import MDA, InProcessMDA, LMTPClient
from mailstack.queue import QueueStore
from mailstack.queue.bounce import bounce, notify_success
from mailstack.queue.store import arrival_time, delay_since
from mailstack.smtp.replies import Reply
from mailstack.smtp.server import BaseSMTP, ConnectionSet, ServerSettings, SMTPService, Transaction

__all__ = ["MXHandler", "start", "build_mda"]

log = logging.getLogger(__name__)

SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
SRS_UNKNOWN = Reply(550, "5.1.1", "Unknown or expired SRS address")  # forged hash, expired or malformed
SRS_BOUNCES_ONLY = Reply(550, "5.7.1", "SRS addresses accept only bounces (MAIL FROM:<>)")


class MXHandler:
    """Recipient policy and delivery of the MX; reusable by submission (``may_relay``)."""

    service = "smtp"

    def __init__(
        self,
        *,
        hostname: str,
        resolver: Resolver,
        delivery: LocalDelivery,
        mda: MDA,
        queue: QueueStore,
        keys_dir: Path,
        checks: AuthChecker | None = None,
        junk_folder: str = "Junk",
        ignore_networks: Sequence[str] = (),
        spam: Scanner | None = None,
    ) -> None:
        self.hostname = hostname
        self.resolver = resolver
        self.delivery = delivery
        self.mda = mda
        self.queue = queue
        self.keys_dir = keys_dir  # [queue] dkim_dir: signs the DSNs of late failures
        self.checks = checks  # None: no SPF/DKIM/DMARC (submission, or [checks] enabled = false)
        self.junk_folder = junk_folder
        self.ignore_networks = tuple(ipaddress.ip_network(n, strict=False) for n in ignore_networks)
        self.spam = spam  # None: no rspamd (submission, LMTP, or [spam] rspamd_url = "")

    def _ignored(self, ip: str) -> bool:
        """A client in ``[checks] ignore_networks`` (loopback by default) is not checked."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.ignore_networks)

    # -- hooks ------------------------------------------------------------------

    def may_relay(self, server: BaseSMTP) -> bool:
        """May this client send to domains that are not ours? Never on the MX."""
        return False

    async def mail(self, server: BaseSMTP, txn: Transaction, sender: str) -> Reply:
        return SENDER_OK

    async def rcpt(self, server: BaseSMTP, txn: Transaction, recipient: str) -> Reply:
        forwarder = self.delivery.forwarder
        if forwarder is not None and forwarder.is_srs_address(recipient):
            srs_reply = await self._srs_rcpt(server, txn, recipient, forwarder)
            if srs_reply is not None:
                return srs_reply
        try:
            res = await self.resolver.resolve_async(recipient)
        except ResolveError as e:
            if e.reply is NOT_LOCAL and self.may_relay(server):
                txn.resolutions.append(Resolution(recipient, forwards=(recipient,)))
                return RECIPIENT_OK
            self._log_reject(server, txn, recipient, e.reply)
            return e.reply
        if not await self.delivery.quota_ok(res, txn.size_hint):
            self._log_reject(server, txn, recipient, R.OVER_QUOTA)
            return R.OVER_QUOTA
        txn.resolutions.append(res)
        return RECIPIENT_OK

    async def data_rejected(self, server: BaseSMTP, txn: Transaction, reply: Reply, size: int) -> None:
        self._log_reject(server, txn, txn.recipients, reply, size=size)

    async def data(self, server: BaseSMTP, txn: Transaction, content: bytes) -> Sequence[Reply]:
        sender = txn.sender or ""
        proto = ("UTF8SMTP" if txn.smtp_utf8 else "ESMTP") + ("S" if server.tls_active else "")
        if not server.session or not server.session.extended_smtp:
            proto = "SMTP"
        trace = received_header(
            helo=server.helo_name,
            client_ip=server.peer_ip,
            by=self.hostname,
            protocol=proto,
            queue_id=txn.queue_id,
            recipient=txn.recipients[0] if len(txn.recipients) == 1 else None,
            tls=server.tls_info,
        )
        resolutions = txn.resolutions
        auth: dict[str, object] = {}  # for the mail log: auth="spf=pass dkim=pass dmarc=pass", folder=Junk
        client_ip = server.peer_ip or ""
        outside = bool(client_ip) and not self._ignored(client_ip)  # [checks] ignore_networks: neither checks nor spam
        verdict = None
        junk = False
        if self.checks is not None and outside:
            verdict = await self.checks.check(content, client_ip=client_ip, helo=server.helo_name,
                                              mail_from=sender)
            if verdict.action in (Action.REJECT, Action.DEFER):
                reply = Reply(verdict.code, verdict.status, verdict.text)
                maillog.log_event("rejected" if reply.is_permanent else "deferred", queue_id=txn.queue_id,
                                  service=self.service, client=server.peer_ip, sender=sender,
                                  recipients=txn.recipients, size=len(content), auth=verdict.summary,
                                  status="rejected" if reply.is_permanent else "deferred", reply=reply)
                return [reply]
            content = verdict.apply(content, self.hostname)  # RFC 8601 §5: ours on top, forged ones gone
            auth["auth"] = verdict.summary
            junk = verdict.action is Action.JUNK
        if self.spam is not None and outside:
            decision = await self.spam.scan(content, ScanRequest(
                client_ip=server.peer_ip, helo=server.helo_name, sender=sender, recipients=tuple(txn.recipients),
                queue_id=txn.queue_id, hostname=self.hostname), auth=verdict)
            auth["spam"] = decision.summary
            if decision.disposition in (Disposition.REJECT, Disposition.DEFER):
                reply = Reply(decision.code, decision.status, decision.text)
                maillog.log_event("rejected" if reply.is_permanent else "deferred", queue_id=txn.queue_id,
                                  service=self.service, client=server.peer_ip, sender=sender,
                                  recipients=txn.recipients, size=len(content), **auth,
                                  status="rejected" if reply.is_permanent else "deferred", reply=reply)
                return [reply]
            content = decision.apply(content)  # forged X-Spam-* gone, ours on top
            junk = junk or decision.disposition is Disposition.JUNK
        if junk:
            resolutions = await asyncio.to_thread(self._to_junk, resolutions)
            auth["folder"] = self.junk_folder
        data = trace + content
        common = dict(queue_id=txn.queue_id, service=self.service, client=server.peer_ip, sender=sender,
                      size=len(data), **auth)
        results = await self._deliver(sender, txn, resolutions, data, server.peer_ip)
        reply = await self._settle(txn, sender, data, results, common)
        return [reply]

    # -- helpers ----------------------------------------------------------------

    async def _srs_rcpt(self, server: BaseSMTP, txn: Transaction, recipient: str,
                        forwarder: Forwarder) -> Reply | None:
        """RCPT to ``SRS0=...``/``SRS1=...`` of one of our domains: a bounce of mail we
        forwarded, routed to the original sender. None: not our domain (the usual rules).

        Only bounces (the null sender) are taken on the MX, as a bounce or an RFC 3834
        auto-reply is all that should ever come back to a rewritten sender; anything else
        would make a valid SRS address a 21-day relay to its sender (postsrsd accepts any
        sender, we choose not to). Submission (``may_relay``) may send to it as to anyone.
        """
        domain = recipient.rpartition("@")[2]
        try:
            if not await asyncio.to_thread(self.resolver.directory.is_local_domain, domain):
                return None
        except Exception:
            log.exception("directory lookup for %s failed", domain)
            return R.DIRECTORY_DOWN
        try:
            original = await asyncio.to_thread(forwarder.reverse, recipient)
        except SRSError as e:
            reply = SRS_UNKNOWN.with_text(f"Unknown or expired SRS address ({e})")
            self._log_reject(server, txn, recipient, reply)
            return reply
        if txn.sender and not self.may_relay(server):
            self._log_reject(server, txn, recipient, SRS_BOUNCES_ONLY)
            return SRS_BOUNCES_ONLY
        txn.resolutions.append(Resolution(recipient, forwards=(original,), srs_bounce=True))
        return RECIPIENT_OK

    async def _deliver(self, sender: str, txn: Transaction, resolutions: Sequence[Resolution], data: bytes,
                       client: str | None) -> list[RecipientResult]:
        """The MDA's results, one per recipient; bounces to SRS addresses are queued here
        (an LMTP MDA would not know those addresses: they are no mailboxes)."""
        utf8, body_8bit = bool(txn.smtp_utf8), txn.body_type == "8BITMIME"
        dsn, requiretls = txn.dsn, bool(txn.requiretls)  # kept on forwards (RFC 3461 §5.2.7, RFC 8689 §4.2)
        srs = [i for i, r in enumerate(resolutions) if r.srs_bounce]
        if not srs or isinstance(self.mda, InProcessMDA):
            return await self.mda.deliver(sender, txn.recipients, resolutions, data, queue_id=txn.queue_id,
                                          client=client, smtputf8=utf8, body_8bit=body_8bit, dsn=dsn,
                                          requiretls=requiretls)
        out: dict[int, RecipientResult] = {}
        got = await self.delivery.deliver(sender, [resolutions[i] for i in srs], data, queue_id=txn.queue_id,
                                          client=client, smtputf8=utf8, dsn=dsn, requiretls=requiretls)
        out.update(zip(srs, got))
        rest = [i for i in range(len(resolutions)) if i not in out]
        if rest:
            got = await self.mda.deliver(sender, [txn.recipients[i] for i in rest], [resolutions[i] for i in rest],
                                         data, queue_id=txn.queue_id, client=client, smtputf8=utf8,
                                         body_8bit=body_8bit, dsn=dsn, requiretls=requiretls)
            out.update(zip(rest, got))
        return [out[i] for i in range(len(resolutions))]

    def _to_junk(self, resolutions: Sequence[Resolution]) -> list[Resolution]:
        """The same recipients, their local mailboxes' Junk folder (made when missing)."""
        from mailstack.storage import FolderExists, Maildir, StorageError

        out = []
        for res in resolutions:
            boxes = []
            for mb in res.mailboxes:
                try:
                    md = Maildir.for_user(self.delivery.maildir_root, mb.domain, mb.local)
                    if not md.has_folder(self.junk_folder):
                        try:  # with the \\Junk special use (RFC 6154), as Dovecot's config gives it
                            md.create_special_folder(self.junk_folder, ("\\Junk",))
                            md.subscribe(self.junk_folder)
                        except FolderExists:  # made by someone else meanwhile
                            pass
                    boxes.append(dataclasses.replace(mb, folder=self.junk_folder))
                except (StorageError, OSError) as e:  # into INBOX rather than not at all
                    log.warning("cannot use %s of %s: %s", self.junk_folder, mb.address, e)
                    boxes.append(mb)
            out.append(dataclasses.replace(res, mailboxes=tuple(boxes)))
        return out

    async def _settle(
        self, txn: Transaction, sender: str, data: bytes, results: Sequence[RecipientResult], common: dict[str, object]
    ) -> Reply:
        ok = [r for r in results if r.outcome is Outcome.OK]
        temp = [r for r in results if r.outcome is Outcome.TEMPORARY]
        perm = [r for r in results if r.outcome is Outcome.PERMANENT]
        if not ok:
            reply = temp[0].reply if temp else perm[0].reply
            maillog.log_event("rejected" if reply.is_permanent else "deferred", recipients=txn.recipients,
                              status="rejected" if reply.is_permanent else "deferred", reply=reply, **common)
            return reply
        extra_ids: list[str] = []
        try:
            if temp:
                qid = await asyncio.to_thread(
                    self.queue.enqueue, sender, [r.recipient for r in temp], data, smtputf8=bool(txn.smtp_utf8),
                    client=str(common["client"]) if common["client"] else None, reason="deferred",
                    extra={"orig_id": txn.queue_id, "last_reply": str(temp[0].reply),
                           **dsn_extra(txn), **({"requiretls": True} if txn.requiretls else {})},
                )
                extra_ids.append(qid)
                for r in temp:
                    # orig_id: the accepted message's id, so ``mailstack log ID`` follows it here
                    maillog.log_event("queued", recipients=r.recipient, status="deferred", reply=r.reply,
                                      **{**common, "queue_id": qid}, orig_id=txn.queue_id)
            if perm:
                extra = {k: v for k, v in common.items() if k not in ("queue_id", "service", "client", "sender", "size")}
                dsn_id = await asyncio.to_thread(
                    bounce, self.queue, hostname=self.hostname, keys_dir=self.keys_dir, queue_id=txn.queue_id,
                    sender=sender, original=data, service=self.service,
                    client=str(common["client"]) if common["client"] else None, log_fields=extra,
                    recipients=[DSNRecipient(r.recipient, r.reply.status, "failed", str(r.reply)) for r in perm],
                    request=txn.dsn, arrival=arrival_time(txn.queue_id),
                )
                if dsn_id is not None:
                    extra_ids.append(dsn_id)
        except OSError:
            log.exception("cannot queue for %s", txn.queue_id)
            maillog.log_event("deferred", recipients=txn.recipients, status="deferred", reply=R.LOCAL_ERROR, **common)
            return R.LOCAL_ERROR
        # RFC 3461 §4.1: NOTIFY=SUCCESS: the copies now in a mailbox are "delivered"
        # (forwarded copies are reported by the runner that relays them, not here). The
        # mail is delivered already: a notice we cannot queue is logged, never a 451
        # (which would bring the message again).
        delivered = [DSNRecipient(r.recipient, "2.0.0", "delivered", str(r.reply))
                     for r in ok if r.mailboxes and txn.dsn.wants(r.recipient, "success")]
        if delivered:
            try:
                await asyncio.to_thread(
                    notify_success, self.queue, hostname=self.hostname, keys_dir=self.keys_dir,
                    queue_id=txn.queue_id, sender=sender, original=data, recipients=delivered,
                    request=txn.dsn, arrival=arrival_time(txn.queue_id))
            except OSError:
                log.exception("cannot queue the success DSN of %s", txn.queue_id)
        for r in ok:
            maillog.log_event("delivered", recipients=r.recipient, status="ok", reply=r.reply, **common,
                              mailbox=",".join(r.mailboxes) or None, forwarded=r.queued,
                              delay=delay_since(txn.queue_id))
        reply = Reply(250, "2.0.0", f"OK: queued as {txn.queue_id}")
        maillog.log_event("accepted", recipients=txn.recipients, status="ok", reply=reply, **common)
        return reply

    def _log_reject(self, server: BaseSMTP, txn: Transaction, recipients: object, reply: Reply,
                    size: int | None = None) -> None:
        maillog.log_event("rejected", queue_id=txn.queue_id or None, service=self.service, client=server.peer_ip,
                          sender=txn.sender, recipients=recipients, size=size, status="rejected", reply=reply)


def dsn_extra(txn: Transaction) -> dict[str, object]:
    """The transaction's DSN request (RFC 3461) for a queue envelope's ``extra``; {} if none."""
    request = txn.dsn
    return {"dsn": request.to_extra()} if request else {}


def build_mda(config: Config, delivery: LocalDelivery) -> MDA:
    """``[smtp] mda``: "" = in-process; otherwise an LMTP address (unix:PATH or HOST:PORT)."""
    target = config.smtp.mda.strip()
    if not target:
        return InProcessMDA(delivery)
    address = parse_listen(target, config.base_dir)
    return LMTPClient(address, helo=config.hostname)


def make_delivery(config: Config, directory: Any = None) -> tuple[LocalDelivery, QueueStore]:
    """The delivery of the MX and submission; with ``directory``, forwards get SRS and ARC."""
    queue = QueueStore(config.queue.dir)
    forwarder = Forwarder.from_config(config, directory.is_local_domain) if directory is not None else None
    delivery = LocalDelivery(config.storage.maildir_root, config.hostname, config.smtp.max_received_headers, queue,
                             forwarder=forwarder, sieve_global_dir=config.sieve.global_dir)
    return delivery, queue


async def start(ctx: ServiceContext) -> RunningService:
    cfg = ctx.config
    delivery, queue = make_delivery(cfg, ctx.directory)
    try:
        mda = build_mda(cfg, delivery)
    except ValueError as e:
        raise ServiceError(f"[smtp] mda: {e}") from None
    checks = None
    if cfg.checks.enabled:
        from mailstack.dns import resolver_from_config

        try:
            checks = AuthChecker(resolver_from_config(cfg.dns), cfg.hostname, CheckPolicy.from_config(cfg.checks))
        except Exception as e:  # e.g. no /etc/resolv.conf and no [dns] nameservers
            raise ServiceError(f"[checks]: no DNS resolver: {e}") from None
    handler = MXHandler(hostname=cfg.hostname, resolver=Resolver(ctx.directory), delivery=delivery, mda=mda,
                        queue=queue, keys_dir=dkim.keys_dir(cfg), checks=checks, junk_folder=cfg.checks.junk_folder,
                        ignore_networks=cfg.checks.ignore_networks, spam=scanner_from_config(cfg))
    settings = ServerSettings(
        service="smtp",
        hostname=cfg.hostname,
        max_message_size=cfg.smtp.max_message_size,
        max_recipients=cfg.smtp.max_recipients,
        timeout=cfg.smtp.command_timeout,
        tls_context=ctx.tls.server,
        limits=SessionLimits.from_config(cfg.smtp),
        min_data_rate=cfg.smtp.min_data_rate,
    )
    inflight = net.InFlight()
    conns = ConnectionSet()

    def factory_for(address: object, implicit_tls: bool) -> net.ProtocolFactory:
        s = settings if not implicit_tls else ServerSettings(**{**settings.__dict__, "implicit_tls": True})
        return lambda: BaseSMTP(handler, s, limits=ctx.limits, inflight=inflight, connections=conns)

    servers = await net.open_listeners("smtp", cfg.listeners("smtp"), factory_for, ctx.tls.server)
    return SMTPService("smtp", servers, inflight, conns, closers=[handler.spam.close] if handler.spam else [])
