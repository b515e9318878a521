"""The one bounce path: every DSN mailstack sends is made, signed, logged and queued here.

Used by the MX (a recipient failing permanently after the transaction, e.g. one of an
alias's mailboxes: ``smtp.mx``), the queue runner (a remote 5xx, or ``[queue] max_age``
reached: ``smtp.queue_runner``) and ``mailstack queue delete --bounce`` (``cli.queue``).
``bounce`` does, in order:

1. build the RFC 3464 report (``mail.dsn.build_dsn``: ``multipart/report``, the original's
   header only, From ``MAILER-DAEMON@<hostname>``, ``Auto-Submitted: auto-replied``);
2. DKIM-sign it as outbound mail is signed (``mail.dkim.sign_for_from``: with the keys of
   its From: domain, the hostname, when ``[queue] dkim_dir`` holds any);
3. queue it from the null reverse-path ``<>`` to the original sender (``reason="dsn"``,
   ``extra.dsn_for`` = the original's queue id), which wakes the runners (``queue.wake``);
4. write the mail-log line(s): ``event=bounced id=<original id> service=<who> ...
   status=bounced reply="<why>" relay=<remote MTA or -> dsn=<DSN's queue id or ->``,
   one per group of recipients that failed for the same reason at the same host.

``warn_delayed`` is steps 1-3 for a delay warning (``Action: delayed``, RFC 3464 §2.3.3):
nothing bounced, so no ``bounced`` line; ``notify_success`` the same for a success
notice (``delivered``, or ``relayed`` to a server without DSN, RFC 3461 §6.2.2).

The sender's DSN request (RFC 3461, ``mail.dsnrequest.DSNRequest``, kept in the
queue envelope's ``extra["dsn"]``) decides: only recipients whose ``NOTIFY`` asks for
that kind of notice are reported (``NOTIFY=NEVER``: none, the recipient is still
logged as bounced with ``dsn=-``), ``ORCPT`` becomes ``Original-Recipient``, ``ENVID``
``Original-Envelope-Id``, and ``RET=FULL`` returns the whole message in a failure.

Invariants:
- never a DSN for the null reverse-path (RFC 5321 §4.5.5, RFC 3464 §2: no bounce loops)
  or a daemon sender (``mail.dsn.should_bounce``); the recipients are still logged as
  bounced (dropped) with ``dsn=-``;
- the log line is written only once the DSN is durably queued (or needs none): an
  ``OSError`` from the queue propagates and nothing says it bounced; the caller keeps
  the message (runner) or answers 451 (MX), so nothing is lost;
- a key that cannot be used (``DKIMError``, ``OSError``) sends the DSN unsigned with a
  warning rather than not at all: a bounce that may land in Junk beats one never sent.

Blocking (file I/O, signing): from asyncio call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from mailstack.mail import dkim
from mailstack.mail.dsn import DSNRecipient, build_dsn, should_bounce
from mailstack.mail.dsnrequest import DSNRequest, Kind
from mailstack.maillog import log_event
from mailstack.queue.store import QueueStore

__all__ = ["DSNRecipient", "DSNRequest", "bounce", "warn_delayed", "notify_success"]

log = logging.getLogger(__name__)


def bounce(
    store: QueueStore,
    *,
    hostname: str,
    keys_dir: Path,
    queue_id: str,
    sender: str,
    original: bytes,
    recipients: Sequence[DSNRecipient],
    service: str,
    client: str | None = None,
    arrival: float | None = None,
    log_fields: Mapping[str, object] | None = None,
    request: DSNRequest | None = None,
) -> str | None:
    """Bounce ``recipients`` (``action="failed"``) of message ``queue_id`` back to ``sender``.

    Returns the DSN's queue id, None when no DSN is due (null or daemon sender).
    ``service``/``client``/``log_fields`` (e.g. the MX's ``auth=``) go into the log line.
    """
    if not recipients:
        return None
    dsn_id = _send(store, hostname=hostname, keys_dir=keys_dir, queue_id=queue_id, sender=sender,
                   original=original, recipients=recipients, arrival=arrival, request=request, kind="failure")
    groups: dict[tuple[str, str | None], list[str]] = {}
    for r in recipients:
        groups.setdefault((r.diagnostic or r.status, r.remote_mta), []).append(r.address)
    for (reply, mta), group in groups.items():
        log_event("bounced", queue_id=queue_id, service=service, client=client, sender=sender,
                  recipients=group, size=len(original), status="bounced", reply=reply, relay=mta or "-",
                  dsn=dsn_id or "-", **dict(log_fields or {}))
    return dsn_id


def warn_delayed(
    store: QueueStore,
    *,
    hostname: str,
    keys_dir: Path,
    queue_id: str,
    sender: str,
    original: bytes,
    recipients: Sequence[DSNRecipient],
    arrival: float | None = None,
    request: DSNRequest | None = None,
) -> str | None:
    """Tell ``sender`` that ``recipients`` (``action="delayed"``) are still being retried."""
    if not recipients:
        return None
    return _send(store, hostname=hostname, keys_dir=keys_dir, queue_id=queue_id, sender=sender,
                 original=original, recipients=recipients, arrival=arrival, request=request, kind="delay")


def notify_success(
    store: QueueStore,
    *,
    hostname: str,
    keys_dir: Path,
    queue_id: str,
    sender: str,
    original: bytes,
    recipients: Sequence[DSNRecipient],
    request: DSNRequest,
    arrival: float | None = None,
) -> str | None:
    """Tell ``sender`` that ``recipients`` (``delivered``/``relayed``) got the message,
    those of them whose ``NOTIFY`` has ``SUCCESS`` (RFC 3461 §4.1); None when none did."""
    return _send(store, hostname=hostname, keys_dir=keys_dir, queue_id=queue_id, sender=sender,
                 original=original, recipients=recipients, arrival=arrival, request=request, kind="success")


def _send(
    store: QueueStore,
    *,
    hostname: str,
    keys_dir: Path,
    queue_id: str,
    sender: str,
    original: bytes,
    recipients: Sequence[DSNRecipient],
    arrival: float | None,
    request: DSNRequest | None,
    kind: Kind,
) -> str | None:
    request = request or DSNRequest()
    # RFC 3461 §4.1: only the notices each recipient asked for; §4.2: its ORCPT goes back
    recipients = [r if r.original_recipient or not request.orcpt(r.address)
                  else dataclasses.replace(r, original_recipient=request.orcpt(r.address))
                  for r in recipients if request.wants(r.address, kind)]
    if not recipients:
        return None
    action = recipients[0].action
    if not should_bounce(sender):  # RFC 5321 §4.5.5: never bounce a bounce
        log.info("queue: %s: no DSN (%s) for the sender <%s>", queue_id, action, sender)
        return None
    dsn = build_dsn(reporting_mta=hostname, sender=sender, original=original, recipients=recipients,
                    queue_id=queue_id, arrival=arrival, envid=request.envid,
                    return_full=request.return_full())
    try:
        dsn = dkim.sign_for_from(dsn, keys_dir)
    except (dkim.DKIMError, OSError) as e:
        log.warning("queue: DSN for %s goes unsigned: %s", queue_id, e)
    dsn_id = store.enqueue("", [sender], dsn, reason="dsn", extra={"dsn_for": queue_id})
    log.info("queue: %s: DSN (%s) for <%s> queued as %s", queue_id, action, sender, dsn_id)
    return dsn_id
