"""Replies as named values: one ``Reply`` for every mail protocol and the queue.

A ``Reply`` is what the MX, submission and LMTP answer (``mailstack.smtp.replies`` adds
the SMTP session's own), what delivery decides per recipient (``mailstack.delivery``),
and what a remote server answered our outbound client (``Reply.parse``, in
``mailstack.smtp.outbound``), which the queue keeps and bounces quote.

Invariants:
- the enhanced status code (RFC 3463), when there is one, has the class digit of the
  basic code (RFC 2034 §4); a remote reply whose first word is not such a code keeps
  that word in its text and has none (``status`` is then ``X.0.0`` by class);
- a ``Reply`` renders to exactly one line (``str()``); its text never holds CR or LF,
  so a reply can never smuggle a second one (``parse`` folds a remote's to spaces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Reply",
    "OK",
    "UNKNOWN_USER",
    "USER_DISABLED",
    "OVER_QUOTA",
    "LOOP",
    "LOCAL_ERROR",
    "DIRECTORY_DOWN",
    "BAD_ADDRESS",
]

ENHANCED_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_LEADING_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:[ \t]+|$)")
_CRLF = re.compile(r"[\r\n]+")


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: basic code (RFC 5321 §4.2), enhanced code (RFC 3463, may be ""), text."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"bad reply code {self.code}")
        if self.enhanced and (not ENHANCED_RE.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]):
            raise ValueError(f"bad enhanced code {self.enhanced!r} for {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must be one line")

    @classmethod
    def parse(cls, code: int, text: str) -> Reply:
        """A reply as it came over the wire (the lines of a multi-line reply joined).

        RFC 2034 §4: the enhanced code is the first word of the text, of the same class
        as ``code``; anything else (no code, another class) stays in the text.
        """
        text = _CRLF.sub(" ", text).strip()
        m = _LEADING_ENHANCED.match(text)
        if m and m.group(1)[0] == str(code)[0]:
            return cls(code, m.group(1), text[m.end():])
        return cls(code, "", text)

    def __str__(self) -> str:
        return " ".join(part for part in (str(self.code), self.enhanced, self.text) if part)

    @property
    def status(self) -> str:
        """The RFC 3463 status: the enhanced code, else ``X.0.0`` of the reply's class."""
        return self.enhanced or f"{str(self.code)[0]}.0.0"

    @property
    def is_ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


# What delivery decides per recipient (the MX, LMTP and the queue give these on).
OK = Reply(250, "2.0.0", "OK")
UNKNOWN_USER = Reply(550, "5.1.1", "Recipient address rejected: user unknown")
USER_DISABLED = Reply(550, "5.2.1", "Recipient address rejected: mailbox disabled")
OVER_QUOTA = Reply(452, "4.2.2", "Mailbox full")
LOOP = Reply(554, "5.4.6", "Mail loop detected")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
DIRECTORY_DOWN = Reply(451, "4.3.0", "Temporary lookup failure, try again later")
BAD_ADDRESS = Reply(553, "5.1.3", "Malformed address")
