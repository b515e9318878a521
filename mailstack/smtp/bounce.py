"""Delivery status notifications (RFC 3464) for recipients that failed after we said 250.

Invariants:
- a DSN is never sent for a message with the null reverse-path (RFC 5321 §4.5.5: no
  bounce loops), and is itself sent from the null reverse-path ``<>``;
- it carries only the headers of the original message (``text/rfc822-headers``),
  never the whole body;
- it is pure: bytes out, the caller queues it.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence

from mailstack.mail.headers import header_block
from mailstack.smtp.replies import Reply

__all__ = ["make_dsn"]


def make_dsn(
    *,
    hostname: str,
    sender: str,
    failures: Sequence[tuple[str, Reply]],
    original: bytes,
    queue_id: str,
) -> bytes | None:
    """A multipart/report DSN to ``sender`` for the failed recipients; None for ``<>``."""
    if not sender or not failures:
        return None
    boundary = f"{queue_id}.{int(time.time())}/{hostname}"
    date = email.utils.formatdate(localtime=False)
    lines_human = "\r\n".join(f"<{rcpt}>: {reply}" for rcpt, reply in failures)
    per_rcpt = "\r\n\r\n".join(
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {reply.enhanced or '5.0.0'}\r\n"
        f"Diagnostic-Code: smtp; {reply}"
        for rcpt, reply in failures
    )
    headers = header_block(original).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    text = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{queue_id}.dsn@{hostname}>\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"This is the mail system at {hostname}.\r\n\r\n"
        f"Your message could not be delivered to one or more recipients:\r\n\r\n"
        f"{lines_human}\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {hostname}\r\n"
        f"X-Mailstack-Queue-ID: {queue_id}\r\n\r\n"
        f"{per_rcpt}\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n"
    ).encode("utf-8")
    return text + headers + f"\r\n--{boundary}--\r\n".encode("ascii")
