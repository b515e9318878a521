"""Sieve grammar (RFC 5228 §8): text -> a tree of commands, or a ``SieveSyntaxError`` with line and column.

Written here rather than taken from ``sievelib``: sievelib's parser validates against its own
fixed command table, which lacks ``ereject``, ``include``/``global``, ``:regex``, ``:index``
and ``encoded-character``, and reports a line only. This one parses the generic grammar
(every command and test has the same shape), then ``check.py`` validates names, tags and
``require``. Bounded like Pigeonhole: scripts over ``MAX_SCRIPT_BYTES`` and blocks or tests
nested deeper than ``MAX_NESTING`` are refused. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_SCRIPT_BYTES = 1024 * 1024  # Pigeonhole's sieve_max_script_size default (1M)
MAX_NESTING = 32  # Pigeonhole's maximum block/test nesting


class SieveSyntaxError(ValueError):
    """A script that cannot run; ``line``/``column`` are 1-based."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.message = message


@dataclass(frozen=True)
class Tag:
    name: str  # lower case, without the colon
    line: int
    column: int


@dataclass(frozen=True)
class Number:
    value: int


@dataclass(frozen=True)
class Strings:
    values: tuple[str, ...]
    is_list: bool  # written as [..] (a single string may stand where a list is expected)
    # the line of each value (for errors that name one string, e.g. a bad :regex key); not compared
    lines: tuple[int, ...] = field(default=(), compare=False)


Argument = Tag | Number | Strings


@dataclass(frozen=True)
class Test:
    name: str
    args: tuple[Argument, ...]
    tests: tuple[Test, ...]
    line: int
    column: int


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None
    line: int
    column: int


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)
      |(?P<hash>\#[^\n]*)
      |(?P<bracket>/\*.*?\*/)
      |(?P<mlstart>text:[ \t]*(?:\#[^\n]*)?\r?\n)
      |(?P<quoted>"(?:[^"\\]|\\.)*")
      |(?P<number>[0-9]+[KMGkmg]?)
      |(?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
      |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<punct>[\[\](){},;])""",
    re.X | re.S,
)
_MULTIPLIER = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int
    column: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    line, line_start = 1, 0
    while pos < len(text):
        col = pos - line_start + 1
        m = _TOKEN.match(text, pos)
        if m is None:
            if text.startswith("/*", pos):
                raise SieveSyntaxError(line, col, "unterminated comment")
            if text[pos] == '"':
                raise SieveSyntaxError(line, col, "unterminated string")
            raise SieveSyntaxError(line, col, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        value = m.group()
        end = m.end()
        if kind == "mlstart":  # RFC 5228 §2.4.2: lines up to "." alone, ".." unstuffed
            lines: list[str] = []
            cursor = end
            while True:
                nl = text.find("\n", cursor)
                if nl < 0:
                    raise SieveSyntaxError(line, col, "unterminated multi-line string")
                raw = text[cursor:nl + 1]
                cursor = nl + 1
                if raw.rstrip("\r\n") == ".":
                    break
                lines.append(raw[1:] if raw.startswith("..") else raw)
            out.append(_Tok("string", "".join(lines).replace("\r\n", "\n").replace("\n", "\r\n"), line, col))
            end = cursor
        elif kind == "quoted":  # RFC 5228 §2.4.2: \" and \\ escapes, others drop the backslash
            out.append(_Tok("string", re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.S), line, col))
        elif kind not in ("ws", "hash", "bracket"):
            out.append(_Tok(kind, value, line, col))
        consumed = text[pos:end]
        nls = consumed.count("\n")
        if nls:
            line += nls
            line_start = pos + consumed.rfind("\n") + 1
        pos = end
    out.append(_Tok("eof", "", line, pos - line_start + 1))
    return out


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, message: str) -> SieveSyntaxError:
        return SieveSyntaxError(tok.line, tok.column, message)

    def expect(self, text: str) -> _Tok:
        tok = self.take()
        if tok.text != text or tok.kind == "string":
            shown = "end of script" if tok.kind == "eof" else repr(tok.text)
            raise self.fail(tok, f"expected {text!r}, found {shown}")
        return tok

    def commands(self, depth: int, until_brace: bool) -> tuple[Command, ...]:
        out: list[Command] = []
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                if until_brace:
                    raise self.fail(tok, "missing '}' at end of script")
                return tuple(out)
            if tok.kind == "punct" and tok.text == "}" and until_brace:
                self.take()
                return tuple(out)
            out.append(self.command(depth))

    def command(self, depth: int) -> Command:
        tok = self.take()
        if tok.kind != "ident":
            raise self.fail(tok, f"expected a command, found {tok.text or 'end of script'!r}")
        args, tests = self.arguments(depth)
        nxt = self.take()
        block: tuple[Command, ...] | None = None
        if nxt.kind == "punct" and nxt.text == "{":
            if depth + 1 > MAX_NESTING:
                raise self.fail(nxt, f"blocks nested deeper than {MAX_NESTING}")
            block = self.commands(depth + 1, until_brace=True)
        elif not (nxt.kind == "punct" and nxt.text == ";"):
            raise self.fail(nxt, f"expected ';' after {tok.text}, found {nxt.text or 'end of script'!r}")
        return Command(tok.text.lower(), args, tests, block, tok.line, tok.column)

    def arguments(self, depth: int) -> tuple[tuple[Argument, ...], tuple[Test, ...]]:
        args: list[Argument] = []
        while True:
            tok = self.peek()
            if tok.kind == "tag":
                self.take()
                args.append(Tag(tok.text[1:].lower(), tok.line, tok.column))
            elif tok.kind == "number":
                self.take()
                mult = _MULTIPLIER.get(tok.text[-1].lower(), 1)
                digits = tok.text[:-1] if mult != 1 else tok.text
                args.append(Number(int(digits) * mult))
            elif tok.kind == "string":
                self.take()
                args.append(Strings((tok.text,), False, (tok.line,)))
            elif tok.kind == "punct" and tok.text == "[":
                self.take()
                values, lines = self.string_list_rest()
                args.append(Strings(values, True, lines))
            else:
                break
        tok = self.peek()
        tests: tuple[Test, ...] = ()
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            tests = self.test_list(depth + 1)
        elif tok.kind == "ident":
            tests = (self.test(depth + 1),)
        return tuple(args), tests

    def string_list_rest(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        values: list[str] = []
        lines: list[int] = []
        while True:
            tok = self.take()
            if tok.kind != "string":
                raise self.fail(tok, "expected a string in the string list")
            values.append(tok.text)
            lines.append(tok.line)
            sep = self.take()
            if sep.text == "]" and sep.kind == "punct":
                return tuple(values), tuple(lines)
            if sep.text != "," or sep.kind != "punct":
                raise self.fail(sep, "expected ',' or ']' in the string list")

    def test_list(self, depth: int) -> tuple[Test, ...]:
        tests = [self.test(depth)]
        while True:
            sep = self.take()
            if sep.kind == "punct" and sep.text == ")":
                return tuple(tests)
            if not (sep.kind == "punct" and sep.text == ","):
                raise self.fail(sep, "expected ',' or ')' in the test list")
            tests.append(self.test(depth))

    def test(self, depth: int) -> Test:
        tok = self.take()
        if depth > MAX_NESTING:
            raise self.fail(tok, f"tests nested deeper than {MAX_NESTING}")
        if tok.kind != "ident":
            raise self.fail(tok, f"expected a test, found {tok.text or 'end of script'!r}")
        args, tests = self.arguments(depth)
        return Test(tok.text.lower(), args, tests, tok.line, tok.column)


def parse(source: bytes | str) -> tuple[Command, ...]:
    """The script's commands; ``SieveSyntaxError`` for a script that breaks the grammar or a limit."""
    if isinstance(source, bytes):
        if len(source) > MAX_SCRIPT_BYTES:
            raise SieveSyntaxError(1, 1, f"script is larger than {MAX_SCRIPT_BYTES} bytes")
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as e:  # RFC 5228 §2.2: scripts are UTF-8
            line = source[:e.start].count(b"\n") + 1
            raise SieveSyntaxError(line, 1, "script is not valid UTF-8") from None
    else:
        text = source
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
            raise SieveSyntaxError(1, 1, f"script is larger than {MAX_SCRIPT_BYTES} bytes")
    return _Parser(_tokens(text)).commands(0, until_brace=False)
