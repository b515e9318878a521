"""Per-session misbehaviour accounting for the SMTP-family servers (no I/O).

Postfix's smtpd model, which MTA admins know, with its defaults:

- every error reply (4xx/5xx, but the 421 that closes) counts one error;
- ``junk_command_limit`` (Postfix ``smtpd_junk_command_limit`` = 100): NOOP, RSET,
  VRFY, EXPN, HELP, HELO, EHLO, LHLO are free up to that many; each one after it
  counts as an error too, so a client cannot hold a session with NOOPs;
- from ``soft_error_limit`` errors on (``smtpd_soft_error_limit`` = 10) every reply
  waits ``error_sleep`` seconds first (``smtpd_error_sleep_time`` = 1 s): a tarpit for
  address harvesting (10,000 ``RCPT TO`` for unknown users) that only slows that session
  (the server sleeps with ``asyncio.sleep``, other sessions go on);
- at ``hard_error_limit`` errors (``smtpd_hard_error_limit`` = 20) the session is told
  ``421 4.7.0`` and closed;
- both counts start again once a message is accepted (Postfix: "without delivering
  mail"), so a long session that delivers mail is never cut.

A limit of 0 turns that rule off (LMTP, whose clients are our own MTA or a trusted one,
runs without error limits: one delivery may name many unknown users legitimately).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailstack.config import SMTPConfig

__all__ = ["JUNK_COMMANDS", "SessionLimits", "ErrorCounter"]

# Commands that make no progress towards a message (Postfix's SMTPD_CMD_FLAG_LIMIT set,
# plus HELP/EXPN/LHLO which we also answer).
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "HELO", "EHLO", "LHLO"})


@dataclass(frozen=True)
class SessionLimits:
    """The per-session limits of one listener (see module docstring); 0 = off."""

    junk_command_limit: int = 100
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    error_sleep: float = 1.0

    @classmethod
    def off(cls) -> SessionLimits:
        return cls(0, 0, 0, 0.0)

    @classmethod
    def from_config(cls, smtp: SMTPConfig) -> SessionLimits:
        """The ``[smtp]`` keys (shared by the MX and submission)."""
        return cls(smtp.junk_command_limit, smtp.soft_error_limit, smtp.hard_error_limit, smtp.error_sleep)


class ErrorCounter:
    """The error and junk counts of one session."""

    __slots__ = ("limits", "errors", "junk")

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self.errors = 0
        self.junk = 0

    def command(self, verb: str) -> None:
        """A command line was received (upper-case verb)."""
        if verb in JUNK_COMMANDS:
            self.junk += 1
            if self.limits.junk_command_limit and self.junk > self.limits.junk_command_limit:
                self.errors += 1

    def reply(self, code: int) -> None:
        """A reply is about to be sent."""
        if 400 <= code < 600 and code != 421:
            self.errors += 1

    def delivered(self) -> None:
        """A message was accepted: a fresh start."""
        self.errors = 0
        self.junk = 0

    @property
    def delay(self) -> float:
        """Seconds to wait before the next reply (the tarpit)."""
        soft = self.limits.soft_error_limit
        return self.limits.error_sleep if soft and self.errors >= soft else 0.0

    @property
    def exhausted(self) -> bool:
        """True once the session must be closed (421 4.7.0)."""
        hard = self.limits.hard_error_limit
        return bool(hard) and self.errors >= hard
