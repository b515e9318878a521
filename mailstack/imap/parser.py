"""Incremental IMAP command reader: bytes in, events out (h11 style, no I/O).

``CommandReader.feed(data)`` appends received bytes; ``next_event()`` returns one of

- ``Command``: a complete, parsed command (see ``types``);
- ``NeedContinuation(tag, size)``: a synchronising literal ``{n}`` was accepted; the
  server must now send ``+ Ready`` (RFC 3501 §7.5) before the client sends its octets;
- ``NeedData()``: nothing more can be done until more bytes are fed;
- ``ParseError(tag, message, ...)``: the command is refused; ``response()`` gives the
  tagged (or untagged, without a tag) reply; ``fatal`` means the connection must close;
- ``ContinuationLine(line)``: in ``expect_line()`` mode (AUTHENTICATE responses, IDLE's
  DONE), the next raw line.

Invariants:
- A line (without its literals) longer than ``max_line`` is refused (the rest of it is
  discarded up to its end, and a ``{n+}`` literal announced at its end is skipped too).
- A literal header larger than the limit for its command (``max_append`` for APPEND,
  ``max_literal`` otherwise) is refused from the header alone: no octet of it is waited
  for or buffered. A refused synchronising literal gives ``NO [TOOBIG]`` (APPEND,
  RFC 7889 §3) or ``BAD``, and the session goes on; a refused non-synchronising literal
  (``{n+}``) is fatal, because its octets are already on the way (RFC 7888 §4).
- After a fatal error the reader yields nothing more (``NeedData``) and drops input.
- Bare LF is accepted as a line end; commands are reassembled with CRLF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailstack.storage import mutf7

from .grammar import GrammarError, MailboxDecoder, decode_base64, parse_command, parse_tag
from .responses import StatusResponse
from .types import Command

__all__ = [
    "CommandReader", "Command", "NeedContinuation", "NeedData", "ParseError", "ContinuationLine",
    "Event", "is_idle_done", "decode_sasl_response",
]

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_MAX_LITERAL = 64 * 1024
DEFAULT_MAX_APPEND = 50 * 1024 * 1024
DEFAULT_MAX_LITERALS = 1000  # literals in one command


@dataclass(frozen=True)
class NeedData:
    """More bytes are needed before another event can be produced."""


@dataclass(frozen=True)
class NeedContinuation:
    """Send ``+ Ready`` now: the client waits for it before sending ``size`` octets."""

    tag: str | None
    size: int


@dataclass(frozen=True)
class ContinuationLine:
    """A raw client line read in ``expect_line()`` mode (without its line end)."""

    line: bytes = field(repr=False)


@dataclass(frozen=True)
class ParseError:
    """A refused command; carries its response (RFC 3501 §7.1.3 BAD, or NO [TOOBIG])."""

    tag: str | None
    message: str
    status: str = "BAD"
    code: str | None = None
    fatal: bool = False

    def response(self) -> StatusResponse:
        return StatusResponse(self.tag, self.status, self.message, self.code)


Event = Command | NeedContinuation | NeedData | ParseError | ContinuationLine

_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\Z")
_NAME = re.compile(rb"[^ \r\n]+ +(?:UID +)?([A-Za-z]+)", re.IGNORECASE)


def _literal_header(segment: bytes) -> tuple[int, bool] | None:
    """``(size, synchronising)`` if the line segment ends in a literal header outside quotes."""
    m = _LITERAL_AT_END.search(segment)
    if m is None:
        return None
    # the "{" must not sit inside a quoted string: scan the quoting state up to it
    quoted = False
    i = 0
    stop = m.start()
    while i < stop:
        c = segment[i]
        if quoted and c == 0x5C:
            i += 2
            continue
        if c == 0x22:
            quoted = not quoted
        i += 1
    if quoted:
        return None
    return int(m.group(1)), m.group(2) != b"+"


class CommandReader:
    """Frames and parses client commands. See the module docstring for the events."""

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_literal: int = DEFAULT_MAX_LITERAL,
        max_append: int = DEFAULT_MAX_APPEND,
        max_literals: int = DEFAULT_MAX_LITERALS,
        decode_mailbox: MailboxDecoder | None = None,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
        self.max_literals = max_literals
        self._decode = decode_mailbox or mutf7.decode  # RFC 3501 §5.1.3
        self.utf8 = False  # RFC 9051 §5.1: UTF-8 mailbox names (the session enabled IMAP4rev2)
        self._buf = bytearray()
        self._parts: list[bytes] = []  # the current command so far, CRLF-normalised
        self._tag: str | None = None
        self._name: str = ""
        self._literal_left: int | None = None  # octets of the current literal still due
        self._literals = 0
        self._literal_total = 0
        self._discarding = False  # skipping the rest of an overlong line
        self._discard_tail = b""
        self._skip = 0  # octets of a refused line's {n+} literal still to drop
        self._line_mode = False
        self._closed = False
        self._scanned = 0  # bytes at the start of _buf known to hold no LF

    # -- public API ---------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Append received bytes (b"" is allowed and does nothing)."""
        if not self._closed:
            self._buf += data

    @property
    def closed(self) -> bool:
        """True after a fatal error: the connection must be closed."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes held but not yet consumed (for tests and STARTTLS checks, RFC 3501 §6.2.1)."""
        return len(self._buf) + sum(len(p) for p in self._parts)

    def take_buffered(self) -> bytes:
        """Hand over (and forget) the octets received after the last complete command:
        after COMPRESS (RFC 4978 §3) they are the start of the client's deflate stream."""
        data = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return data

    def expect_line(self) -> None:
        """Read the next line raw (AUTHENTICATE continuation, IDLE's DONE)."""
        self._line_mode = True

    def next_event(self) -> Event:
        if self._closed:
            return NeedData()
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buf))
                del self._buf[:dropped]
                self._skip -= dropped
                if self._skip:
                    return NeedData()
            if self._literal_left is not None:
                if len(self._buf) < self._literal_left:
                    # move what we have into the command so far; wait for the rest
                    if self._buf:
                        self._parts.append(bytes(self._buf))
                        self._literal_left -= len(self._buf)
                        self._buf.clear()
                    return NeedData()
                self._parts.append(bytes(self._buf[: self._literal_left]))
                del self._buf[: self._literal_left]
                self._literal_left = None
            if self._discarding:
                event = self._discard()
                if event is not None:
                    return event
                continue
            # only the bytes fed since the last look are searched: a line dribbled in one
            # byte per packet is not rescanned from its start each time (quadratic)
            nl = self._buf.find(b"\n", self._scanned)
            if nl < 0:
                if len(self._buf) > self.max_line:
                    return self._start_discard()
                self._scanned = len(self._buf)
                return NeedData()
            self._scanned = 0
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                error = self._refuse_line(line)
                if error is not None:
                    return error
                continue
            event = self._on_line(line)
            if event is not None:
                return event

    # -- internals ----------------------------------------------------------------------
    def _reset(self) -> None:
        self._parts = []
        self._tag = None
        self._name = ""
        self._literals = 0
        self._literal_total = 0

    def _current_tag(self, start: bytes) -> str | None:
        return self._tag if self._parts else parse_tag(start[:256], complete=False)

    def _start_discard(self) -> ParseError:
        error = ParseError(self._current_tag(bytes(self._buf[:256])), "Command line too long")
        self._discard_tail = bytes(self._buf[-32:])
        self._buf.clear()
        self._scanned = 0
        self._discarding = True
        self._reset()
        self._line_mode = False
        return error

    def _discard(self) -> Event | None:
        nl = self._buf.find(b"\n")
        if nl < 0:
            self._discard_tail = (self._discard_tail + bytes(self._buf))[-32:]
            self._buf.clear()
            return NeedData()
        tail = (self._discard_tail + bytes(self._buf[:nl]))[-32:].rstrip(b"\r")
        del self._buf[: nl + 1]
        self._discarding = False
        self._discard_tail = b""
        self._skip_literal_of(tail)
        return None

    def _skip_literal_of(self, tail: bytes) -> None:
        header = _literal_header(tail)
        if header is not None and not header[1]:
            self._skip = header[0]  # RFC 7888: its octets follow without a "+"

    def _refuse_line(self, line: bytes) -> ParseError:
        error = ParseError(self._current_tag(line[:256]), "Command line too long")
        self._reset()
        self._line_mode = False
        self._skip_literal_of(line[-32:])
        return error

    def _on_line(self, line: bytes) -> Event | None:
        if self._line_mode:
            self._line_mode = False
            return ContinuationLine(line)
        first = not self._parts
        if first:
            if not line.strip():
                return ParseError(None, "Empty command line")  # RFC 3501 §7.1.3: untagged BAD
            self._tag = parse_tag(line)
            m = _NAME.match(line)
            self._name = m.group(1).decode("ascii").upper() if m else ""
        header = _literal_header(line)
        if header is None:
            self._parts.append(line + b"\r\n")
            return self._finish()
        size, sync = header
        limit = self.max_append if self._name == "APPEND" else self.max_literal
        self._literals += 1
        self._literal_total += size
        total_limit = self.max_append + self.max_line if self._name == "APPEND" else self.max_literal * 16
        if size > limit or self._literals > self.max_literals or self._literal_total > total_limit:
            return self._refuse_literal(size, sync)
        self._parts.append(line + b"\r\n")
        self._literal_left = size
        if sync:
            return NeedContinuation(self._tag, size)
        return None

    def _refuse_literal(self, size: int, sync: bool) -> ParseError:
        tag = self._tag
        toobig = self._name == "APPEND"
        self._reset()
        if not sync:
            # RFC 7888 §4: the octets of a {n+} are already coming and cannot be told
            # apart from commands: answer and close the connection.
            self._closed = True
            self._buf.clear()
            return ParseError(tag, "Literal too large", "BAD", "TOOBIG" if toobig else None, fatal=True)
        if toobig:  # RFC 7889 §3: NO [TOOBIG] instead of the continuation request
            return ParseError(tag, "Message too large", "NO", "TOOBIG")
        return ParseError(tag, "Literal too large")

    def _finish(self) -> Event:
        data = b"".join(self._parts)
        tag = self._tag
        self._reset()
        try:
            return parse_command(data, self._decode, self.utf8)
        except GrammarError as exc:
            return ParseError(tag, exc.message, exc.status, exc.code)


def is_idle_done(line: ContinuationLine) -> bool:
    """RFC 2177 §3: IDLE ends with the line ``DONE`` (case-insensitive)."""
    return line.line.strip().upper() == b"DONE"


def decode_sasl_response(line: ContinuationLine) -> bytes | None:
    """An AUTHENTICATE response line: its decoded bytes, or None for ``*`` (cancel,
    RFC 3501 §6.2.2). Raises ``GrammarError`` (BAD) for invalid base64."""
    raw = line.line.strip()
    if raw == b"*":
        return None
    if raw == b"":
        return b""
    return decode_base64(raw)
