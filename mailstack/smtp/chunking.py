"""CHUNKING (RFC 3030) as pure functions and a small state machine: BDAT in, message out.

No I/O: the server (``server.BaseSMTP.smtp_BDAT``) parses the command with
``parse_bdat``, reads exactly the announced number of octets from the stream (in
pieces, so a large chunk never sits in memory twice) and feeds them to a
``ChunkReceiver``; at ``BDAT ... LAST`` it asks for ``finish()``.

Rules (the byte-level transcripts are tests/smtp/test_bdat.py):

- ``BDAT <chunk-size> [LAST]`` (RFC 3030 §2, ``bdat-cmd``): the size is 1*DIGIT (we
  take at most ``MAX_SIZE_DIGITS`` of them), ``LAST`` in any case. A malformed BDAT line
  is ``501 5.5.4`` and the connection is closed: we cannot know how many octets
  follow, and they must never be read as commands (the smuggling rule of DATA).
- the octets of a chunk are always read, whatever the reply to it (RFC 3030 §2: the
  receiver-SMTP reads the chunk even when it refuses the command; §4.2 a client that
  pipelined chunks after a failed one has them discarded).
- no ``BODY=BINARYMIME``: we store Maildir files with LF line ends and hand messages
  unchanged to IMAP and POP3 clients, which cannot carry NUL or bare CR (RFC 3501 §4.3,
  RFC 1939 §3). So a chunked message follows the DATA rules: NUL is ``554 5.6.0``,
  bare CR ``550 5.6.0``, a bare LF is taken as a line end (as DATA normalises it);
  nothing of it is stored. BINARYMIME is not announced and ``BODY=BINARYMIME`` is
  refused at MAIL (``501 5.5.4``), so the sender converts or sends it elsewhere.
- no dot-stuffing (RFC 3030 §2: the chunk is raw octets); a message that does not end
  in CRLF gets one (Postfix does the same).
- size (RFC 1870): the octets of all chunks are counted; once over the limit nothing
  more is kept (memory stays bounded by ``max_message_size``), the rest of the chunk
  is read and dropped, and the reply is ``552 5.3.4``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailstack.smtp import replies as R
from mailstack.smtp.data import NUL
from mailstack.smtp.replies import Reply

__all__ = ["BdatArgs", "ChunkReceiver", "parse_bdat", "BDAT_SYNTAX", "MAX_SIZE_DIGITS"]

BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
MAX_SIZE_DIGITS = 20  # RFC 3030 allows 1*DIGIT; more than 20 cannot be a real size

_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class BdatArgs:
    """One BDAT command: how many octets follow it, and whether they end the message."""

    size: int
    last: bool


def parse_bdat(arg: str | None) -> BdatArgs | None:
    """``"<size> [LAST]"`` -> its values; None when malformed (RFC 3030 §2 ``bdat-cmd``)."""
    parts = (arg or "").split(" ")
    if not 1 <= len(parts) <= 2:
        return None
    size = parts[0]
    if not size or not size.isascii() or not size.isdigit() or len(size) > MAX_SIZE_DIGITS:
        return None
    if len(parts) == 2 and parts[1].upper() != "LAST":
        return None
    return BdatArgs(int(size), len(parts) == 2)


class ChunkReceiver:
    """The chunks of one message, bounded by ``limit`` octets."""

    __slots__ = ("limit", "size", "_buf", "_error", "chunks")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.size = 0
        self.chunks = 0
        self._buf = bytearray()
        self._error: Reply | None = None

    def feed(self, piece: bytes) -> None:
        """Octets of the current chunk, in order."""
        self.size += len(piece)
        if self._error is not None:
            return
        if self.limit is not None and self.size > self.limit:  # RFC 1870
            self._error = R.TOO_BIG
            self._buf = bytearray()
            return
        self._buf += piece

    def end_chunk(self) -> None:
        self.chunks += 1

    @property
    def error(self) -> Reply | None:
        return self._error

    def finish(self) -> Reply | tuple[bytes, int]:
        """At ``BDAT ... LAST``: the message (CRLF line ends) and its bare-LF count, or the
        reply that refuses it (see module docstring)."""
        if self._error is not None:
            return self._error
        buf = bytes(self._buf)
        self._buf = bytearray()
        if b"\0" in buf:
            return NUL
        if _BARE_CR.search(buf):  # RFC 5321 §2.3.8
            return R.BARE_CR
        buf, bare_lf = _BARE_LF.subn(b"\r\n", buf)
        if buf and not buf.endswith(b"\r\n"):
            buf += b"\r\n"
        return buf, bare_lf
