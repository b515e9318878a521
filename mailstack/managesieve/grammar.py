"""ManageSieve command syntax (RFC 5804 §4): bytes in, whole commands out, no I/O.

``CommandReader.feed(data)`` takes what the client sent; ``next()`` returns the next
complete ``Command`` (a name and its arguments: strings from quoted strings or literals,
and atoms such as numbers), ``NEED_DATA``, or a ``Refusal`` for a command that cannot be
taken (bad syntax, a literal too large) after its bytes have been consumed.

Invariants:
- Nothing is buffered without bound: a line without its literals is at most ``max_line``
  octets (longer: ``Fatal``, the connection ends, as the rest cannot be parsed safely); a
  literal larger than ``max_literal`` is counted off as it arrives, never held, and the
  command is then refused (RFC 5804 §2.6 ``QUOTA/MAXSIZE``); at most ``MAX_LITERALS``
  literals per command.
- Literal octets are never read as commands: a bad command's literals are skipped with it.
- ``{n+}`` (non-synchronizing, RFC 5804 §4 ``literal-c2s``) and ``{n}`` are both read at
  once, as Dovecot does: ManageSieve has no continuation for a client literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Atom",
    "Command",
    "CommandReader",
    "Fatal",
    "NEED_DATA",
    "Refusal",
    "SyntaxProblem",
    "parse_words",
]

MAX_LINE = 8192  # one line of a command, literals excluded (quoted strings are at most 1024 octets)
MAX_LITERALS = 4  # no command takes more than two strings; AUTHENTICATE's SASL line one
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}$")
_ATOM_STOP = b' "{}()\r\n'


@dataclass(frozen=True)
class Atom:
    """An unquoted word: a command name or a number (HAVESPACE's size)."""

    text: str


Arg = Atom | bytes  # bytes: a string (quoted or literal), raw octets


@dataclass(frozen=True)
class Command:
    """``head`` is the first word as sent; ``name`` its upper case when an atom ("" when a
    string: a SASL response line is one string, RFC 5804 §2.1); ``args`` the words after it."""

    name: str
    args: tuple[Arg, ...]
    head: Arg = b""


@dataclass(frozen=True)
class Refusal:
    """A command refused whole: ``reason`` says why (``"literal"``: too large, ``"syntax"``)."""

    name: str  # the command's name as far as known ("" when not)
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Fatal:
    """The input cannot be parsed on (a line longer than allowed): end the connection."""

    detail: str


class _Need:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _Need()


class SyntaxProblem(ValueError):
    pass


class CommandReader:
    """Reassembles commands from a byte stream (see the module docstring)."""

    def __init__(self, *, max_line: int = MAX_LINE, max_literal: int = 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self._buf = bytearray()
        self._segments: list[bytes] = []  # text of the command, one per literal + the last
        self._literals: list[bytes] = []
        self._literal_left = 0  # octets of the current literal still to come
        self._skipping = False  # counting off a literal too large (or one past MAX_LITERALS)
        self._too_big = False
        self._why = ""
        self._fatal = False

    @property
    def buffered(self) -> int:
        """Octets held: unread input plus the command assembled so far."""
        return len(self._buf) + sum(map(len, self._literals)) + sum(map(len, self._segments))

    def feed(self, data: bytes) -> None:
        if not self._fatal:
            self._buf += data

    def discard_buffer(self) -> None:
        """Drop what was received but not read (RFC 5804 §2.2: nothing sent before TLS counts)."""
        self._buf.clear()

    def next(self) -> Command | Refusal | Fatal | _Need:
        while True:
            if self._fatal:
                return NEED_DATA
            if self._literal_left:
                if self._skipping:
                    n = min(self._literal_left, len(self._buf))
                    del self._buf[:n]
                    self._literal_left -= n
                    if self._literal_left:
                        return NEED_DATA
                    continue  # a refused command keeps nothing of its literals
                if len(self._buf) < self._literal_left:
                    return NEED_DATA
                self._literals.append(bytes(self._buf[: self._literal_left]))
                del self._buf[: self._literal_left]
                self._literal_left = 0
                continue
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    self._fatal = True
                    self._buf.clear()
                    return Fatal("line too long")
                return NEED_DATA
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                self._fatal = True
                self._buf.clear()
                return Fatal("line too long")
            m = _LITERAL_AT_END.search(line)
            if m is not None:
                size = int(m.group(1))
                if not self._too_big:
                    self._segments.append(line[: m.start()])
                    if len(self._segments) > MAX_LITERALS:
                        self._skipping = self._too_big = True  # from here on only counted, never kept
                        self._why = f"more than {MAX_LITERALS} literals"
                    elif size > self.max_literal:
                        self._skipping = self._too_big = True
                        self._why = f"literal larger than {self.max_literal} octets"
                    elif size == 0:
                        self._literals.append(b"")
                self._literal_left = size
                continue
            if not self._too_big:
                self._segments.append(line)
            done = self._finish()
            if done is not None:
                return done

    def _finish(self) -> Command | Refusal | None:
        segments, literals, too_big = self._segments, self._literals, self._too_big
        self._segments, self._literals = [], []
        self._skipping = self._too_big = False
        name = _first_word(segments[0])
        if too_big:
            return Refusal(name, "literal", self._why)
        words: list[Arg] = []
        try:
            for i, seg in enumerate(segments):
                words += parse_words(seg)
                if i < len(literals):
                    if seg and not seg.endswith(b" ") and words:
                        raise SyntaxProblem("missing space before a literal")
                    words.append(literals[i])
        except SyntaxProblem as e:
            return Refusal(name, "syntax", str(e))
        if not words:
            return None  # an empty line: nothing to answer (as Dovecot)
        first = words[0]
        return Command(first.text.upper() if isinstance(first, Atom) else "", tuple(words[1:]), first)


def _first_word(seg: bytes) -> str:
    word = seg.split(b" ", 1)[0]
    if word and all(0x21 <= c < 0x7F and c not in _ATOM_STOP for c in word):
        return word.decode("ascii").upper()
    return ""


def parse_words(seg: bytes) -> list[Arg]:
    """The atoms and quoted strings of one line segment (RFC 5804 §4)."""
    out: list[Arg] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == 0x20:
            i += 1
            continue
        if c == 0x22:  # quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-SPECIALS = DQUOTE / "\"
            value = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise SyntaxProblem("unterminated quoted string")
                c = seg[i]
                if c == 0x22:
                    i += 1
                    break
                if c == 0x5C:
                    if i + 1 >= n or seg[i + 1] not in b'"\\':
                        raise SyntaxProblem("bad escape in quoted string")
                    value.append(seg[i + 1])
                    i += 2
                    continue
                if c == 0:
                    raise SyntaxProblem("NUL in quoted string")
                value.append(c)
                i += 1
            if len(value) > 1024:
                raise SyntaxProblem("quoted string longer than 1024 octets")
            if i < n and seg[i] != 0x20:
                raise SyntaxProblem("missing space after a quoted string")
            out.append(bytes(value))
            continue
        j = i
        while j < n and seg[j] not in _ATOM_STOP:
            j += 1
        if j == i or (j < n and seg[j] != 0x20):
            raise SyntaxProblem(f"unexpected {chr(seg[j])!r}" if j < n else "unexpected end of line")
        word = seg[i:j]
        if any(b < 0x21 or b >= 0x7F for b in word):
            raise SyntaxProblem("invalid characters in an atom")
        out.append(Atom(word.decode("ascii")))
        i = j
    return out
