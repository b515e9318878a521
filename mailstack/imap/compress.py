"""COMPRESS=DEFLATE (RFC 4978): the raw deflate streams of one connection, without I/O.

``Inflater`` turns what the client sends into the bytes the command reader sees,
``Deflater`` what the server writes into what goes on the wire. The asyncio adapter
(``server._Connection``) owns one of each once COMPRESS succeeded.

Invariants:
- Raw deflate without zlib header or checksum (RFC 4978 §3: RFC 1951 only, wbits=-15).
- Inflating is bounded: ``take(limit)`` never yields more than ``limit`` octets, and what
  does not fit stays compressed (``decompressobj`` with ``max_length``), so a few bytes
  that inflate to gigabytes reach the reader at the same pace, and under the same line and
  literal limits, as plain input would; memory stays at the caller's limit plus the
  compressed bytes not yet inflated (which the caller bounds by pausing the socket).
- Output is flushed with ``Z_SYNC_FLUSH`` (RFC 4978 §4: the client must be able to
  decode every response without waiting for more), once per write burst: the caller
  calls ``flush()`` before it waits for the client.
- A corrupt stream, or data after the end of the client's stream, raises ``CompressionError``:
  the connection cannot be resynchronised and must be closed (Dovecot does the same).
"""

from __future__ import annotations

import zlib

__all__ = ["CompressionError", "Deflater", "Inflater", "WBITS", "LEVEL"]

WBITS = -15  # RFC 4978 §3: raw deflate (RFC 1951), 32 KB window
LEVEL = 6  # zlib's default; Dovecot's imap_zlib default level is 6 too


class CompressionError(Exception):
    """The client's deflate stream is broken."""


class Inflater:
    """The client -> server direction."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=WBITS)
        self._pending = b""  # compressed octets not inflated yet

    def feed(self, data: bytes) -> None:
        if data:
            self._pending = self._pending + data if self._pending else bytes(data)

    @property
    def pending(self) -> int:
        """Compressed octets received but not yet inflated."""
        return len(self._pending)

    def take(self, limit: int) -> bytes:
        """Inflate up to ``limit`` (> 0) octets of what was fed."""
        if limit <= 0 or not self._pending:
            return b""
        if self._z.eof:
            raise CompressionError("data after the end of the deflate stream")
        try:
            out = self._z.decompress(self._pending, limit)  # max_length: never more than limit
        except zlib.error as e:
            raise CompressionError(str(e)) from None
        self._pending = self._z.unconsumed_tail
        if self._z.eof and self._z.unused_data:
            raise CompressionError("data after the end of the deflate stream")
        return out


class Deflater:
    """The server -> client direction."""

    def __init__(self, level: int = LEVEL) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, WBITS)
        self.dirty = False  # something compressed since the last flush

    def compress(self, data: bytes) -> bytes:
        if not data:
            return b""
        self.dirty = True
        return self._z.compress(data)

    def flush(self) -> bytes:
        """Everything so far, decodable by the client now (RFC 4978 §4: Z_SYNC_FLUSH)."""
        if not self.dirty:
            return b""
        self.dirty = False
        return self._z.flush(zlib.Z_SYNC_FLUSH)
