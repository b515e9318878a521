"""The MDA as an LMTP service (RFC 2033, ``[lmtp]``): Postfix, Exim or our MX deliver here.

- ``LHLO`` instead of EHLO/HELO (RFC 2033 §4.1); the same extensions as the MX
  (PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES), no STARTTLS (the
  listener is a unix socket or a trusted TCP address).
- RCPT resolves the recipient like the MX (aliases, catch-all, ``+tag``); a domain
  that is not ours is ``550 5.1.1`` (an MDA never relays), over quota ``452 4.2.2``.
- After DATA, one reply per accepted recipient in RCPT order (RFC 2033 §4.2), each
  250 only once that recipient's copy is fsynced into its Maildir (or its alias's
  remote targets into the queue).
- Every delivery is a mail log line (service ``lmtp``).
- REQUIRETLS (RFC 8689) is offered without TLS (see ``LMTPServer.requiretls_ok``) and
  kept, like the DSN request, on the forwards delivery queues.
- DSN (RFC 3461) is offered: we are the final delivery, so a recipient delivered
  with ``NOTIFY=SUCCESS`` gets its "delivered" notice from us (``queue.bounce.
  notify_success``, signed as the MX's DSNs are); failures are the client's to report
  (it has our 5xx, RFC 2033 §4.2) and it does not also send "relayed" (§6.2.2).
- Its own connection caps (``[lmtp] max_connections``, ``max_connections_per_ip``);
  no junk command or error limits (see ``smtp/limits.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from aiosmtpd.smtp import syntax

from mailstack import maillog, net
from mailstack.delivery import NOT_LOCAL, LocalDelivery, Outcome, Resolver, ResolveError
from mailstack.mail import dkim
from mailstack.mail.dsn import DSNRecipient
from mailstack.mail.forward import Forwarder
from mailstack.mail.headers import received_header
from mailstack.service import RunningService, ServiceContext
from mailstack.smtp import replies as R
from mailstack.smtp.limits import SessionLimits
from mailstack.queue import QueueStore
from mailstack.queue.bounce import notify_success
from mailstack.queue.store import arrival_time, delay_since
from mailstack.smtp.replies import Reply
from mailstack.smtp.server import BaseSMTP, ConnectionSet, ServerSettings, SMTPService, Transaction

log = logging.getLogger(__name__)

__all__ = ["LMTPServer", "LMTPHandler", "start"]


class LMTPServer(BaseSMTP):
    """BaseSMTP speaking LMTP."""

    is_lmtp = True

    @property
    def requiretls_ok(self) -> bool:
        """REQUIRETLS is offered without TLS here: the LMTP listener is a unix socket or a
        trusted TCP address (the local hop to the MDA, as the MX's own in-process
        delivery), so the MX can hand a REQUIRETLS message over and the forwards we
        make of it keep the requirement (RFC 8689 §4.2)."""
        return True

    def ehlo_keywords(self) -> list[str]:
        return [k for k in super().ehlo_keywords() if k != "STARTTLS"]

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, hostname: str) -> None:
        await self._ehlo(hostname, "LHLO")

    async def smtp_EHLO(self, hostname: str) -> None:  # RFC 2033 §4.1
        await self.push(Reply(500, "5.5.1", "Use LHLO (this is LMTP)"))

    async def smtp_HELO(self, hostname: str) -> None:
        await self.push(Reply(500, "5.5.1", "Use LHLO (this is LMTP)"))

    async def check_helo_needed(self, helo: str = "HELO") -> bool:
        assert self.session is not None
        if not self.session.host_name:
            await self.push(Reply(503, "5.5.1", "Send LHLO first"))
            return True
        return False


class LMTPHandler:
    service = "lmtp"

    def __init__(self, *, hostname: str, resolver: Resolver, delivery: LocalDelivery,
                 queue: QueueStore | None = None, keys_dir: Path | None = None) -> None:
        self.hostname = hostname
        self.resolver = resolver
        self.delivery = delivery
        self.queue = queue  # where success DSNs go (None: none are sent)
        self.keys_dir = keys_dir or Path("/nonexistent")

    async def mail(self, server: BaseSMTP, txn: Transaction, sender: str) -> Reply:
        return Reply(250, "2.1.0", "Sender OK")

    async def rcpt(self, server: BaseSMTP, txn: Transaction, recipient: str) -> Reply:
        try:
            res = await self.resolver.resolve_async(recipient)
        except ResolveError as e:
            reply = R.UNKNOWN_USER if e.reply is NOT_LOCAL else e.reply
            self._log(server, txn, "rejected", recipient, reply)
            return reply
        if not await self.delivery.quota_ok(res, txn.size_hint):
            self._log(server, txn, "rejected", recipient, R.OVER_QUOTA)
            return R.OVER_QUOTA
        txn.resolutions.append(res)
        return Reply(250, "2.1.5", "Recipient OK")

    async def data_rejected(self, server: BaseSMTP, txn: Transaction, reply: Reply, size: int) -> None:
        self._log(server, txn, "rejected", txn.recipients, reply, size=size)

    async def data(self, server: BaseSMTP, txn: Transaction, content: bytes) -> Sequence[Reply]:
        trace = received_header(
            helo=server.helo_name,
            client_ip=server.peer_ip,
            by=self.hostname,
            protocol="LMTP",
            queue_id=txn.queue_id,
            recipient=txn.recipients[0] if len(txn.recipients) == 1 else None,
        )
        data = trace + content
        results = await self.delivery.deliver(txn.sender or "", txn.resolutions, data, queue_id=txn.queue_id,
                                              client=server.peer_ip, smtputf8=bool(txn.smtp_utf8),
                                              dsn=txn.dsn, requiretls=bool(txn.requiretls))
        replies = []
        for r in results:
            event = {Outcome.OK: "delivered", Outcome.TEMPORARY: "deferred", Outcome.PERMANENT: "rejected"}[r.outcome]
            self._log(server, txn, event, r.recipient, r.reply, size=len(data),
                      mailbox=",".join(r.mailboxes) or None, forwarded=r.queued,
                      **({"delay": delay_since(txn.queue_id)} if event == "delivered" else {}))
            reply = r.reply
            if reply.is_ok:
                reply = Reply(250, "2.0.0", f"<{r.recipient}> delivered, id {txn.queue_id}")
            replies.append(reply)
        await self._notify_success(txn, data, [r.recipient for r in results if r.reply.is_ok and r.mailboxes])
        return replies

    async def _notify_success(self, txn: Transaction, data: bytes, delivered: list[str]) -> None:
        """RFC 3461 §4.1 NOTIFY=SUCCESS: the "delivered" notice; a failure to queue it is
        logged, never a 4xx (the message is in the mailbox already)."""
        request = txn.dsn
        wanted = [DSNRecipient(r, "2.0.0", "delivered") for r in delivered if request.wants(r, "success")]
        if not wanted or self.queue is None:
            return
        try:
            await asyncio.to_thread(notify_success, self.queue, hostname=self.hostname, keys_dir=self.keys_dir,
                                    queue_id=txn.queue_id, sender=txn.sender or "", original=data,
                                    recipients=wanted, request=request, arrival=arrival_time(txn.queue_id))
        except OSError:
            log.exception("lmtp: cannot queue the success DSN of %s", txn.queue_id)

    def _log(self, server: BaseSMTP, txn: Transaction, event: str, recipients: object, reply: Reply,
             size: int | None = None, **extra: object) -> None:
        maillog.log_event(event, queue_id=txn.queue_id or None, service=self.service,
                          client=server.peer_ip or "unix", sender=txn.sender, recipients=recipients, size=size,
                          status="ok" if reply.is_ok else event, reply=reply, **extra)


async def start(ctx: ServiceContext) -> RunningService:
    cfg = ctx.config
    queue = QueueStore(cfg.queue.dir)
    delivery = LocalDelivery(cfg.storage.maildir_root, cfg.hostname, cfg.smtp.max_received_headers, queue,
                             forwarder=Forwarder.from_config(cfg, ctx.directory.is_local_domain),
                             sieve_global_dir=cfg.sieve.global_dir)
    handler = LMTPHandler(hostname=cfg.hostname, resolver=Resolver(ctx.directory), delivery=delivery,
                          queue=queue, keys_dir=dkim.keys_dir(cfg))
    settings = ServerSettings(
        service="lmtp",
        hostname=cfg.hostname,
        max_message_size=cfg.smtp.max_message_size,
        max_recipients=max(cfg.smtp.max_recipients, 1000),
        timeout=cfg.smtp.command_timeout,
        tls_context=None,
        ident="LMTP mailstack",
        protocol="LMTP",
        # no junk/error limits: the client is a trusted MTA and one delivery may name
        # many unknown users legitimately (smtp/limits.py); the timeout still applies
        limits=SessionLimits.off(),
        min_data_rate=cfg.smtp.min_data_rate,
    )
    limits = net.ConnectionLimits(cfg.lmtp.max_connections, cfg.lmtp.max_connections_per_ip, "lmtp")
    inflight = net.InFlight()
    conns = ConnectionSet()

    def factory_for(address: object, implicit_tls: bool) -> net.ProtocolFactory:
        return lambda: LMTPServer(handler, settings, limits=limits, inflight=inflight, connections=conns)

    servers = await net.open_listeners("lmtp", cfg.listeners("lmtp"), factory_for, ctx.tls.server)
    return SMTPService("lmtp", servers, inflight, conns)
