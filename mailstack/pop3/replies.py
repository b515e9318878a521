"""POP3 replies as named values (RFC 1939 §3, RFC 2449 §8 response codes).

Invariants:
- A reply is a value; handlers return replies, only the adapter writes bytes.
- ``Reply.to_bytes()`` is the exact wire form: one status line ending in CRLF and, for a
  multi-line reply, the body lines dot-stuffed (RFC 1939 §3) and the ``.`` terminator.
- Response codes are the RFC 2449 §8 / RFC 3206 ones: ``[IN-USE]``, ``[AUTH]``,
  ``[SYS/TEMP]``, ``[SYS/PERM]``; a reply text never holds CR or LF.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Reply",
    "ok",
    "err",
    "CONTINUE",
    "AUTH_FAILED",
    "IN_USE",
    "SYS_TEMP",
    "PLAINTEXT_DISALLOWED",
    "UPDATE_FAILED",
    "MESSAGE_VANISHED",
]


@dataclass(frozen=True)
class Reply:
    """``+OK``/``-ERR``/``+`` status, optional response code, text, optional multi-line body."""

    status: str  # "+OK", "-ERR" or "+" (SASL continuation, RFC 5034 §4)
    text: str = ""
    code: str | None = None  # RFC 2449 §8: "IN-USE", "AUTH", "SYS/TEMP", ...
    lines: tuple[bytes, ...] | None = None  # None = single-line reply

    def __post_init__(self) -> None:
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must not hold CR or LF")

    @property
    def ok(self) -> bool:
        return self.status == "+OK"

    def status_line(self) -> bytes:
        parts = [self.status]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.text or self.status == "+":
            parts.append(self.text)
        return (" ".join(parts)).encode("utf-8", "replace") + b"\r\n"

    def to_bytes(self) -> bytes:
        head = self.status_line()
        if self.lines is None:
            return head
        out = [head]
        for line in self.lines:
            # RFC 1939 §3: a line that starts with the termination octet is byte-stuffed.
            out.append(b"." + line if line.startswith(b".") else line)
            out.append(b"\r\n")
        out.append(b".\r\n")
        return b"".join(out)


def ok(text: str = "", lines: tuple[bytes, ...] | None = None) -> Reply:
    return Reply("+OK", text, None, lines)


def err(text: str, code: str | None = None) -> Reply:
    return Reply("-ERR", text, code)


CONTINUE = Reply("+", "")  # RFC 5034 §4: "+ " and an empty base64 challenge for PLAIN

# Named replies the adapter chooses after an effect (wording follows Dovecot where it has one).
AUTH_FAILED = err("Authentication failed.", "AUTH")  # RFC 3206 §4
IN_USE = err("Mailbox is locked by another POP3 session.", "IN-USE")  # RFC 2449 §8.1.1
SYS_TEMP = err("Temporary server failure, try again later.", "SYS/TEMP")  # RFC 3206 §3
PLAINTEXT_DISALLOWED = err("Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", "AUTH")
UPDATE_FAILED = err("Some deleted messages could not be removed, try again later.", "SYS/TEMP")
MESSAGE_VANISHED = err("Message was removed by another session.", "SYS/TEMP")
