"""The mail log: one grep-able line per accepted, rejected, delivered, queued or bounced message.

Logger ``mailstack.maillog`` (route it to its own file or syslog facility ``mail``).
Every line is a fixed sequence of ``key=value`` pairs, Postfix style, so an admin can
``grep id=5F3A2C91B04D`` or ``grep 'event=rejected'`` and fail2ban can match
``client=<HOST>``:

    event=<accepted|rejected|delivered|deferred|bounced|queued> id=<queue id>
      service=<smtp|lmtp|...> client=<ip or unix> from=<sender> to=<recipient[,...]>
      size=<bytes> status=<result> reply="<SMTP reply>" [extra keys]

Keys always appear in that order; a missing value is ``-`` (``from=<>`` is the null
sender). A value with a space, ``"`` or ``=`` is double-quoted with ``\\`` escapes; CR,
LF and other control characters never reach the log (they are escaped as ``\\xNN``),
so a client cannot forge a log line.

Every line is counted as well (``mailstack.metrics``: ``mailstack_messages_total``,
``mailstack_logins_total``, ...), so the metrics and the log never disagree.

Examples::

    event=rejected id=- service=smtp client=192.0.2.7 from=<a@example.org> to=<nobody@example.test> size=- status=rejected reply="550 5.1.1 Recipient address rejected: user unknown"
    event=accepted id=18C2F4A51B3E0001 service=smtp client=192.0.2.7 from=<a@example.org> to=<u1@example.test> size=5120 status=ok reply="250 2.0.0 OK: queued as 18C2F4A51B3E0001"
    event=delivered id=18C2F4A51B3E0001 service=smtp client=192.0.2.7 from=<a@example.org> to=<u1@example.test> size=5120 status=ok reply="250 2.0.0 Delivered" mailbox=example.test/u1 folder=INBOX
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from mailstack import metrics

__all__ = ["LOGGER_NAME", "log_event", "format_event", "quote"]

LOGGER_NAME = "mailstack.maillog"
_logger = logging.getLogger(LOGGER_NAME)

_SAFE = re.compile(r'^[^\s"=\\\x00-\x1f\x7f]+$')
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def quote(value: object) -> str:
    """A log-safe rendering of one value (``-`` for None/empty)."""
    if value is None:
        return "-"
    text = str(value)
    if text == "":
        return "-"
    if _SAFE.match(text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return f'"{text}"'


def _addr(a: str | None) -> str:
    if a is None:
        return "-"
    return f"<{a}>"


def format_event(
    event: str,
    *,
    queue_id: str | None,
    service: str,
    client: str | None,
    sender: str | None,
    recipients: Iterable[str] | str | None,
    size: int | None,
    status: str,
    reply: object = None,
    **extra: object,
) -> str:
    if isinstance(recipients, str):
        to = _addr(recipients)
    elif recipients is None:
        to = "-"
    else:
        to = ",".join(_addr(r) for r in recipients) or "-"
    parts = [
        f"event={quote(event)}",
        f"id={quote(queue_id)}",
        f"service={quote(service)}",
        f"client={quote(client)}",
        f"from={quote(_addr(sender))}",
        f"to={quote(to)}",
        f"size={quote(size)}",
        f"status={quote(status)}",
        f"reply={quote(reply)}",
    ]
    parts.extend(f"{k}={quote(v)}" for k, v in extra.items())
    return " ".join(parts)


def log_event(event: str, **fields: object) -> None:
    """Write one mail log line at INFO (see module docstring for keys); every line is
    counted for ``GET /metrics`` (``metrics.record_event``) whatever the log level."""
    metrics.record_event(event, str(fields.get("service")), str(fields.get("status")), fields.get("reply"), fields)
    if _logger.isEnabledFor(logging.INFO):
        _logger.info(format_event(event, **fields))  # type: ignore[arg-type]
