"""Per-user sending limits on submission: messages per hour, recipients per day.

A mailbox whose password leaked is a spam cannon; these limits keep it a small one, and
are set so that a normal employee never meets them (defaults 500 messages an hour, 2,000
recipients a day; ``[submission] max_messages_per_hour``, ``max_recipients_per_day``,
0 = no limit). Like Postfix's anvil ``smtpd_client_message_rate_limit`` but per
authenticated user, and shared:

- The counts live in the directory database (``sending_usage``: one row per user and
  period), so every process and every host that shares the directory counts together,
  and a restart forgets nothing.
- Periods are calendar hours and days in UTC (``h2026120117``, ``d20261201``): a fixed
  window, simple to explain to a user ("until the top of the hour") and cheap to count.
- Checked before the work: at MAIL FROM the hour's message count, at each RCPT TO the
  day's recipient count plus the recipients already accepted in this transaction; over a
  limit the answer is ``451 4.7.1`` (temporary: the client's outbox retries later, RFC
  3463 §3.8 "delivery not authorized"), and one mail-log line says so.
- Counted after the work: a message counts once it was accepted (the 250 after DATA),
  with all its recipients. Sessions of one user that run at the same moment may pass a
  limit by what they had in flight together (at most ``max_recipients`` per session).
- The directory unavailable: the check lets the message through (logged); losing a
  count never loses mail.

The policy here has no I/O; ``SubmissionHandler`` does the lookups.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mailstack.replies import Reply

__all__ = ["SendingLimits", "periods", "HOUR_LIMIT", "DAY_LIMIT", "KEEP_SECONDS"]

KEEP_SECONDS = 2 * 86400  # usage rows older than this are swept (only today and this hour are read)


def periods(now: float) -> tuple[str, str]:
    """(this hour, this day), UTC: ``("h2026120117", "d20261201")``."""
    t = time.gmtime(now)
    return time.strftime("h%Y%m%d%H", t), time.strftime("d%Y%m%d", t)


def HOUR_LIMIT(n: int) -> Reply:  # noqa: N802 - a named reply with its number
    return Reply(451, "4.7.1", f"Sending limit reached: {n} messages per hour; try again later")


def DAY_LIMIT(n: int) -> Reply:  # noqa: N802
    return Reply(451, "4.7.1", f"Sending limit reached: {n} recipients per day; try again later")


@dataclass(frozen=True)
class SendingLimits:
    """The two limits of one installation (0 = that limit is off)."""

    messages_per_hour: int = 500
    recipients_per_day: int = 2000

    @property
    def enabled(self) -> bool:
        return bool(self.messages_per_hour or self.recipients_per_day)

    def at_mail(self, messages_this_hour: int) -> Reply | None:
        """The refusal for a new transaction, or None."""
        if self.messages_per_hour and messages_this_hour >= self.messages_per_hour:
            return HOUR_LIMIT(self.messages_per_hour)
        return None

    def at_rcpt(self, recipients_today: int, in_this_transaction: int) -> Reply | None:
        """The refusal for one more recipient, or None."""
        if self.recipients_per_day and recipients_today + in_this_transaction >= self.recipients_per_day:
            return DAY_LIMIT(self.recipients_per_day)
        return None
