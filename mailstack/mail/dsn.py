"""Delivery Status Notifications (RFC 3464): the bounce and the delay warning.

``build_dsn`` makes a ``multipart/report; report-type=delivery-status`` message
(RFC 6522) with three parts: a human-readable text, the ``message/delivery-status``
fields, and the original message's header (``text/rfc822-headers``, RFC 6522 §4: the
body is not returned, which keeps bounces small and leaks nothing big), unless the
sender asked for the full message (RFC 3461 ``RET=FULL``) in a failure report. Actions:
``failed`` (bounce), ``delayed`` (warning), ``delivered``/``relayed`` (success notices
the sender asked for with ``NOTIFY=SUCCESS``).

Invariants:
- never called for a null reverse-path: the caller checks ``should_bounce(sender)``
  (RFC 5321 §4.5.5, RFC 3464 §2: a DSN is never sent about a DSN);
- the DSN itself goes out with the null reverse-path ``<>``, ``Auto-Submitted:
  auto-replied`` (RFC 3834 §5) and From: ``MAILER-DAEMON@<hostname>``;
- every field value is one line (CR/LF from remote replies are replaced), so a remote
  server cannot inject header fields into our bounce;
- CRLF line ends throughout, as the queue stores messages.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mailstack.mail import headers

__all__ = ["DSNRecipient", "build_dsn", "should_bounce", "status_from_reply"]

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
_CTRL = re.compile(r"[\x00-\x1f\x7f]+")
_ENH = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class DSNRecipient:
    """One recipient's fate (RFC 3464 §2.3)."""

    address: str
    status: str  # RFC 3463 code, e.g. "5.1.1"
    action: Action = "failed"
    diagnostic: str | None = None  # the remote reply, e.g. "550 5.1.1 No such user"
    remote_mta: str | None = None
    original_recipient: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None


def should_bounce(sender: str) -> bool:
    """False for the null reverse-path (RFC 5321 §4.5.5) and obvious daemon senders."""
    if not sender or sender == "<>":
        return False
    local = sender.rpartition("@")[0].lower()
    return local not in ("mailer-daemon",)


def status_from_reply(code: int, text: str) -> str:
    """The RFC 3463 status of an SMTP reply: its enhanced code, else x.0.0 by class."""
    m = _ENH.search(text[:20])
    if m and m.group(1) == str(code)[0]:
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return f"{str(code)[0]}.0.0"


def _one_line(text: str, limit: int = 900) -> str:
    return _CTRL.sub(" ", text).strip()[:limit]


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=False)


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    original: bytes,
    recipients: Sequence[DSNRecipient],
    queue_id: str | None = None,
    arrival: float | None = None,
    now: float | None = None,
    envid: str | None = None,
    return_full: bool = False,
) -> bytes:
    """The DSN to send to ``sender`` about ``recipients`` (all of one action kind).

    ``envid``: the sender's RFC 3461 ENVID, returned as ``Original-Envelope-Id``;
    ``return_full``: RET=FULL on a failure: the whole message goes back
    (``message/rfc822``, or ``message/global`` when it is not ASCII, RFC 6533 §3)
    instead of its header.
    """
    now = time.time() if now is None else now
    delayed = all(r.action == "delayed" for r in recipients)
    success = all(r.action in ("delivered", "relayed", "expanded") for r in recipients)
    return_full = return_full and not delayed and not success  # RFC 3461 §4.3: failures only
    boundary = f"=_mailstack_{secrets.token_hex(12)}"
    host = _one_line(reporting_mta)
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Successful Mail Delivery Report" if success
               else "Undelivered Mail Returned to Sender")
    msgid = f"<{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{secrets.token_hex(8)}@{host}>"

    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{_one_line(sender)}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: {msgid}",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]

    human = [
        f"This is the mail system at host {host}.",
        "",
    ]
    if delayed:
        human += [
            "Your message could not be delivered yet to the recipients below.",
            "The mail system will keep trying; you need not send it again.",
        ]
    elif success:
        human += [
            "Your message was successfully delivered to the destination(s) listed",
            "below. If the message was relayed to a system that does not report",
            "delivery status, you will get no further notice from it.",
        ]
    else:
        human += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    human.append("")
    for r in recipients:
        line = f"<{_one_line(r.address)}>"
        if r.remote_mta:
            line += f": host {_one_line(r.remote_mta)} said:"
        human.append(line)
        human.append(f"    {_one_line(r.diagnostic or r.status)}")
        if r.will_retry_until:
            human.append(f"    (will retry until {_date(r.will_retry_until)})")
        human.append("")

    # RFC 3464 §2.2: per-message fields
    status = []
    if envid:  # RFC 3464 §2.2.1
        status.append(f"Original-Envelope-Id: {_one_line(envid)}")
    status.append(f"Reporting-MTA: dns; {host}")
    if queue_id:
        status.append(f"X-Mailstack-Queue-ID: {_one_line(queue_id)}")
    if arrival:
        status.append(f"Arrival-Date: {_date(arrival)}")
    # RFC 3464 §2.3: per-recipient fields, each group after a blank line
    for r in recipients:
        status.append("")
        if r.original_recipient:  # RFC 3464 §2.3.1: "addr-type; address" (from ORCPT)
            addr_type, semi, value = r.original_recipient.partition(";")
            if not semi:
                addr_type, value = "rfc822", r.original_recipient
            status.append(f"Original-Recipient: {_one_line(addr_type)}; {_one_line(value.strip())}")
        status.append(f"Final-Recipient: rfc822; {_one_line(r.address)}")
        status.append(f"Action: {r.action}")
        status.append(f"Status: {_one_line(r.status)}")
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {_one_line(r.remote_mta)}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {_one_line(r.diagnostic)}")
        if r.last_attempt:
            status.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.will_retry_until:
            status.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")

    if return_full:
        original_head = re.sub(rb"\r?\n", b"\r\n", original)
        returned_type = "message/rfc822" if original.isascii() else "message/global"
        returned_name = "Undelivered Message"
    else:
        # the header section as mail.headers reads it (at most MAX_HEADER_SCAN bytes, whole lines)
        original_head = re.sub(rb"\r?\n", b"\r\n", headers.header_block(original))
        returned_type = "text/rfc822-headers"
        returned_name = "Message Headers" if success or delayed else "Undelivered Message Headers"
    if not original_head.endswith(b"\r\n"):
        original_head += b"\r\n"
    crlf = "\r\n"
    out = (
        crlf.join(head) + crlf + crlf
        + "This is a MIME-encapsulated message." + crlf + crlf
        + f"--{boundary}" + crlf
        + "Content-Description: Notification" + crlf
        + "Content-Type: text/plain; charset=utf-8" + crlf + crlf
        + crlf.join(human) + crlf
        + f"--{boundary}" + crlf
        + "Content-Description: Delivery report" + crlf
        + "Content-Type: message/delivery-status" + crlf + crlf
        + crlf.join(status) + crlf + crlf
        + f"--{boundary}" + crlf
        + f"Content-Description: {returned_name}" + crlf
        + f"Content-Type: {returned_type}" + crlf + crlf
    ).encode("utf-8")
    out += original_head + f"\r\n--{boundary}--\r\n".encode()
    return out
