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
from collections.abc import Iterable, Iterator

from mailstack import metrics

__all__ = ["LOGGER_NAME", "follow", "format_event", "log_event", "parse", "quote"]

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


# ---------------------------------------------------------------------------
# reading it back

# Where a line's fields begin (after a timestamp, a syslog tag, "INFO mailstack.maillog: ").
_START = re.compile(r"(?:^|\s)(event=[a-z_]+ id=)")
_FIELD = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|\S*)(?:\s+|$)')
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|.)")


def _unquote(raw: str) -> str:
    if not raw.startswith('"'):
        return raw
    return _ESCAPE.sub(lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) == 3 else m.group(1), raw[1:-1])


def parse(line: str) -> dict[str, str] | None:
    """The fields of one mail-log line (whatever precedes ``event=``), None if it is not one.

    The inverse of ``format_event``: quoted values are unquoted. Values are only what the
    line says (``-`` stays ``-``); a value holding ``=`` or a space is always quoted, so a
    client's text cannot pose as another field.
    """
    m = _START.search(line)
    if m is None:
        return None
    fields: dict[str, str] = {}
    pos = m.start(1)
    text = line.rstrip("\r\n")
    while pos < len(text):
        f = _FIELD.match(text, pos)
        if f is None:
            break
        fields.setdefault(f.group(1), _unquote(f.group(2)))
        pos = f.end()
    return fields


def follow(lines: Iterable[str], queue_id: str) -> Iterator[str]:
    """The lines about message ``queue_id`` and those it led to, in the order given.

    A message changes id where the log says so: the MX's ``event=queued`` line for a local
    retry has the new ``id=`` and ``orig_id=`` the accepted one; a bounce has ``dsn=`` the
    id of the DSN it queued. Lines are read once, oldest first (as a log is written), so
    an id is followed from the line that introduces it on.
    """
    ids = {queue_id.upper()}
    for line in lines:
        fields = parse(line)
        if fields is None:
            continue
        linked = {fields.get("id", "-"), fields.get("orig_id", "-"), fields.get("dsn", "-")} - {"-", ""}
        if linked & ids:
            ids |= {i.upper() for i in linked}
            yield line
