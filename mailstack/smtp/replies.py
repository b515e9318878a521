"""The SMTP family's replies: the shared ``Reply`` values plus the session's own.

``Reply`` and the replies delivery decides (``OK``, ``UNKNOWN_USER``, ``OVER_QUOTA``,
...) live in ``mailstack.replies``, below delivery and the queue; they are re-exported
here so that ``replies.X`` names every reply an SMTP, submission or LMTP session can
send. What is SMTP-only stays here: the session replies (greeting-time limits, DATA,
STARTTLS, timeouts), ``SMTPReplyError`` and ``add_enhanced`` for aiosmtpd's own lines.

Invariants:
- every reply we send (after the greeting) carries an RFC 3463 enhanced status code
  whose class digit equals the first digit of the basic code (RFC 2034 §4);
- handlers return replies; code that cannot go on raises `SMTPReplyError(reply)`,
  which the server turns into that reply (never a traceback).
"""

from __future__ import annotations

import re

from mailstack.replies import (
    BAD_ADDRESS,
    DIRECTORY_DOWN,
    ENHANCED_RE,
    LOCAL_ERROR,
    LOOP,
    OK,
    OVER_QUOTA,
    UNKNOWN_USER,
    USER_DISABLED,
    Reply,
)

__all__ = [
    "Reply",
    "SMTPReplyError",
    "add_enhanced",
    "OK",
    "BYE",
    "READY_TLS",
    "START_DATA",
    "UNKNOWN_USER",
    "RELAY_DENIED",
    "USER_DISABLED",
    "OVER_QUOTA",
    "TOO_MANY_RECIPIENTS",
    "TOO_BIG",
    "LOOP",
    "BARE_CR",
    "LOCAL_ERROR",
    "DIRECTORY_DOWN",
    "TOO_MANY_CONNECTIONS",
    "TOO_MANY_FROM_IP",
    "TIMEOUT",
    "BAD_SEQUENCE",
    "BAD_ADDRESS",
    "BAD_SYNTAX",
    "TLS_UNAVAILABLE",
    "LINE_TOO_LONG",
    "SHUTTING_DOWN",
]

class SMTPReplyError(Exception):
    """Raised where a command cannot go on; the server sends `reply`."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# Default enhanced codes for aiosmtpd's built-in replies that lack one (RFC 3463 §3,
# RFC 5248 registry). 354 and the 220 greeting get none (RFC 2034 §4 and practice).
_DEFAULT_ENHANCED: dict[int, str] = {
    211: "2.0.0",
    214: "2.0.0",
    220: "2.0.0",
    221: "2.0.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.5.0",
    421: "4.3.0",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}
_REPLY_RE = re.compile(r"^([2-5]\d\d)([ -])(.*)$", re.DOTALL)


def add_enhanced(line: str) -> str:
    """Give a reply line from aiosmtpd an enhanced code when it has none (RFC 2034 §4)."""
    m = _REPLY_RE.match(line)
    if not m:
        return line
    code, sep, rest = m.groups()
    first = rest.split(" ", 1)[0]
    if ENHANCED_RE.match(first):
        return line
    enhanced = _DEFAULT_ENHANCED.get(int(code))
    if enhanced is None:
        return line
    # aiosmtpd prefixes its texts with "Error: "; drop that noise.
    if rest.startswith("Error: "):
        rest = rest[7:]
    return f"{code}{sep}{enhanced} {rest}"


BYE = Reply(221, "2.0.0", "Bye")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")  # RFC 5321 §4.5.3.1.10
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
BARE_CR = Reply(550, "5.6.0", "Bare <CR> in message not allowed (RFC 5321 §2.3.8)")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
BAD_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
