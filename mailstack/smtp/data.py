"""The DATA phase as a pure state machine: lines in, message (or a refusal) out.

No I/O: the server feeds it whatever ``StreamReader.readuntil(b"\\n")`` returns (a line
ending in LF, or a fragment of an over-long line without one) and asks ``done``.

Rules (the table of edge cases is in tests/smtp/test_data.py):

- The message ends only at ``<CRLF>.<CRLF>`` (RFC 5321 §4.1.1.4): a line that is exactly
  ``.\\r\\n`` and follows a line that ended in CRLF (the DATA command line counts).
  ``<LF>.<LF>``, ``<LF>.<CRLF>``, ``<CR>.<CR>``, ``<CRLF>.<LF>`` never end it, so a
  client (or a sloppy relay in front of us) cannot smuggle a second transaction into
  the body: SMTP smuggling, CVE-2023-51764 / -51765 / -51766.
- Bare LF (RFC 5321 §2.3.8 forbids it) is *normalised*: it ends a content line as if
  it were CRLF (as Postfix's ``smtpd_forbid_bare_newline = normalize``), but a line
  after it is never the end-of-data dot. Bare CR is *refused* after the end of data
  (``550 5.6.0``): it has no meaning in a line and our Maildir files hold LF.
- NUL is *refused* the same way (``554 5.6.0``, nothing stored), on the MX, submission
  and LMTP alike, as IMAP APPEND refuses it: a message we store is one every IMAP and
  POP3 client can be given unchanged (Dovecot instead rewrites NUL as 0x80 on IMAP,
  which breaks DKIM signatures and changes the message; refusing tells the sender).
- Dot-unstuffing (RFC 5321 §4.5.2): one leading dot of each content line is removed.
- Size (RFC 1870): bytes are counted as they arrive (before unstuffing, as the client
  sent them); once over the limit nothing more is kept, the rest is read and dropped,
  and the reply is ``552 5.3.4``. Memory stays bounded by the limit plus one line.
- The content is returned with CRLF line ends. It is kept in one growing buffer, so
  memory is the message size plus one line whatever the line lengths (a list of one
  small bytes object per line cost ~15x the message for very short lines).
"""

from __future__ import annotations

from mailstack.smtp import replies as R
from mailstack.smtp.replies import Reply

__all__ = ["DataReceiver", "NUL"]

# RFC 5322 §3.5 text excludes NUL; RFC 2045 §2.7/§2.8: neither 7bit nor 8bit data holds
# NUL (only BINARYMIME over BDAT may, RFC 3030, which we do not offer). IMAP cannot
# carry it either (RFC 3501 §4.3), and IMAP APPEND refuses it: one rule everywhere.
NUL = Reply(554, "5.6.0", "NUL character in message not allowed")


class DataReceiver:
    """Collects one message body from the DATA stream."""

    __slots__ = ("limit", "size", "_parts", "_cur", "_in_line", "_prev_crlf", "_error", "done", "bare_lf")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.size = 0
        self._parts = bytearray()  # the content so far, CRLF line ends
        self._cur: list[bytes] = []  # fragments of the current (long) line
        self._in_line = False  # a fragment of the current line has been fed
        self._prev_crlf = True  # the DATA command line ended in CRLF
        self._error: Reply | None = None
        self.done = False
        self.bare_lf = 0

    def feed(self, piece: bytes) -> bool:
        """Feed what readuntil(b"\\n") gave (or a fragment); True once the message ended."""
        if self.done:
            raise RuntimeError("DATA already complete")
        if not piece.endswith(b"\n"):
            # a fragment of a long line: never the end, count it, keep it if we may
            self._count(piece)
            self._in_line = True
            if self._error is None:
                self._cur.append(piece)
            return False
        in_progress = self._in_line
        self._in_line = False
        if in_progress:
            line = b"".join(self._cur) + piece
            self._cur = []
        else:
            line = piece
            if self._prev_crlf and line == b".\r\n":
                self.done = True
                return True
        self._count(piece)
        if line.endswith(b"\r\n"):
            content = line[:-2]
            self._prev_crlf = True
        else:
            content = line[:-1]
            self._prev_crlf = False
            self.bare_lf += 1
        if self._error is None:
            if b"\r" in content or b"\0" in content:
                self._error = R.BARE_CR if b"\r" in content else NUL
                self._parts = bytearray()
                return False
            if content[:1] == b".":  # RFC 5321 §4.5.2 transparency
                content = content[1:]
            self._parts += content
            self._parts += b"\r\n"
        return False

    def _count(self, data: bytes) -> None:
        self.size += len(data)
        if self._error is None and self.limit is not None and self.size > self.limit:
            self._error = R.TOO_BIG
            self._parts = bytearray()
            self._cur = []

    @property
    def error(self) -> Reply | None:
        return self._error

    def content(self) -> bytes:
        """The message, CRLF line ends; only valid when done and error is None."""
        if not self.done or self._error is not None:
            raise RuntimeError("no content")
        return bytes(self._parts)
