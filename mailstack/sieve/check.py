"""Validation of a parsed Sieve script: known commands and tests, ``require``d extensions,
tags that belong to them, argument counts. Errors carry the line and column of the culprit.

What a Pigeonhole user relies on and this server runs (``EXTENSIONS``): fileinto, mailbox
(``:create``), envelope, encoded-character, reject, ereject, imap4flags, copy, body,
variables, relational, comparator-i;ascii-numeric, subaddress, date, index, regex, include.
vacation and vacation-seconds (RFC 5230, 6131). No I/O.

``:regex`` keys are compiled here, as Pigeonhole does (``sieve-test`` exits 89 naming the
line of the key): a bad pattern is refused when the script is stored, not found at delivery.
Keys holding a variable (``${..}`` with "variables" required) can only be checked at run time.
"""

from __future__ import annotations

from collections.abc import Iterable

import regex  # type: ignore[import-untyped]

from mailstack.sieve.grammar import Argument, Command, SieveSyntaxError, Strings, Tag, Test, parse

EXTENSIONS = frozenset({
    "fileinto", "mailbox", "envelope", "encoded-character", "reject", "ereject", "imap4flags", "copy",
    "body", "variables", "relational", "comparator-i;ascii-numeric", "comparator-i;octet",
    "comparator-i;ascii-casemap", "subaddress", "date", "index", "regex", "include", "vacation",
    "vacation-seconds",
})

# command -> the extension it needs (None: core)
COMMANDS: dict[str, str | None] = {
    "require": None, "if": None, "elsif": None, "else": None, "stop": None, "keep": None,
    "discard": None, "redirect": None, "fileinto": "fileinto", "reject": "reject", "ereject": "ereject",
    "setflag": "imap4flags", "addflag": "imap4flags", "removeflag": "imap4flags", "set": "variables",
    "include": "include", "return": "include", "global": "include", "vacation": "vacation",
}
TESTS: dict[str, str | None] = {
    "address": None, "header": None, "exists": None, "size": None, "allof": None, "anyof": None,
    "not": None, "true": None, "false": None, "envelope": "envelope", "body": "body",
    "hasflag": "imap4flags", "string": "variables", "date": "date", "currentdate": "date",
}
# tag -> the extension it needs (None: core); tags taking a value are in VALUE_TAGS
TAGS: dict[str, str | None] = {
    "is": None, "contains": None, "matches": None, "all": None, "localpart": None, "domain": None,
    "over": None, "under": None, "comparator": None, "regex": "regex", "count": "relational",
    "value": "relational", "user": "subaddress", "detail": "subaddress", "copy": "copy",
    "create": "mailbox", "flags": "imap4flags", "raw": "body", "content": "body", "text": "body",
    "index": "index", "last": "index", "zone": "date", "originalzone": "date", "lower": "variables",
    "upper": "variables", "lowerfirst": "variables", "upperfirst": "variables",
    "quotewildcard": "variables", "length": "variables", "quoteregex": "regex", "personal": "include",
    "global": "include", "once": "include", "optional": "include", "days": "vacation",
    "seconds": "vacation-seconds", "subject": "vacation", "from": "vacation", "addresses": "vacation",
    "mime": "vacation", "handle": "vacation",
}
VALUE_TAGS = frozenset({"comparator", "count", "value", "flags", "content", "index", "zone", "days", "seconds",
                        "subject", "from", "addresses", "handle"})
MATCH_TAGS = ("is", "contains", "matches", "regex", "count", "value")
REGEX_MAX_PATTERN = 1024  # the interpreter refuses longer :regex keys at run time (interp.py)


def _fail(line: int, column: int, message: str) -> SieveSyntaxError:
    return SieveSyntaxError(line, column, message)


def _check_args(name: str, args: Iterable[Argument], line: int, column: int, required: set[str]) -> None:
    items = list(args)
    i = 0
    seen_match = False
    while i < len(items):
        arg = items[i]
        if isinstance(arg, Tag):
            ext = TAGS.get(arg.name, "?")
            if ext == "?":
                raise _fail(arg.line, arg.column, f"unknown tag ':{arg.name}' for {name}")
            if ext is not None and ext not in required:
                raise _fail(arg.line, arg.column, f"':{arg.name}' needs require \"{ext}\"")
            if arg.name in MATCH_TAGS:
                if seen_match:
                    raise _fail(arg.line, arg.column, "more than one match type")
                seen_match = True
            if arg.name in VALUE_TAGS:
                if i + 1 >= len(items) or isinstance(items[i + 1], Tag):
                    raise _fail(arg.line, arg.column, f"':{arg.name}' needs a value")
                if arg.name == "comparator":
                    cmp = items[i + 1]
                    if isinstance(cmp, Strings):
                        cname = cmp.values[0].lower()
                        if cname not in ("i;octet", "i;ascii-casemap") and f"comparator-{cname}" not in required:
                            raise _fail(arg.line, arg.column, f"unknown comparator {cmp.values[0]!r}")
                i += 1
        i += 1


def check(commands: tuple[Command, ...]) -> tuple[Command, ...]:
    """The same commands when valid; ``SieveSyntaxError`` naming the first problem otherwise."""
    required: set[str] = set()
    _walk(commands, required, at_start=True)
    return commands


def _walk(commands: tuple[Command, ...], required: set[str], at_start: bool) -> None:
    prev: str | None = None
    ext: str | None
    for cmd in commands:
        if cmd.name not in COMMANDS:
            raise _fail(cmd.line, cmd.column, f"unknown command '{cmd.name}'")
        if cmd.name == "require":
            if not at_start:  # RFC 5228 §3.2: require before any other command
                raise _fail(cmd.line, cmd.column, "require must come before other commands")
            for arg in cmd.args:
                if not isinstance(arg, Strings):
                    raise _fail(cmd.line, cmd.column, "require takes a string list")
                for ext in arg.values:
                    if ext.lower() not in EXTENSIONS:
                        raise _fail(cmd.line, cmd.column, f"unsupported extension '{ext}'")
                    required.add(ext.lower())
            prev = cmd.name
            continue
        at_start = False
        ext = COMMANDS[cmd.name]
        if ext is not None and ext not in required:
            raise _fail(cmd.line, cmd.column, f"unknown command '{cmd.name}' (needs require \"{ext}\")")
        if cmd.name in ("elsif", "else") and prev not in ("if", "elsif"):
            raise _fail(cmd.line, cmd.column, f"'{cmd.name}' without a preceding 'if'")
        if cmd.name in ("if", "elsif"):
            if len(cmd.tests) != 1 or cmd.block is None:
                raise _fail(cmd.line, cmd.column, f"'{cmd.name}' needs one test and a block")
        elif cmd.name == "else":
            if cmd.tests or cmd.block is None:
                raise _fail(cmd.line, cmd.column, "'else' takes a block only")
        elif cmd.block is not None or cmd.tests:
            raise _fail(cmd.line, cmd.column, f"'{cmd.name}' takes no test or block")
        _check_args(cmd.name, cmd.args, cmd.line, cmd.column, required)
        strings = [a for a in cmd.args if isinstance(a, Strings)]
        need = {"redirect": 1, "fileinto": 1, "reject": 1, "ereject": 1, "set": 2, "include": 1, "vacation": 1}.get(cmd.name)
        if need is not None and len(strings) < need:
            raise _fail(cmd.line, cmd.column, f"'{cmd.name}' needs {need} string argument(s)")
        for test in cmd.tests:
            _check_test(test, required)
        if cmd.block is not None:
            _walk(cmd.block, required, at_start=False)
        prev = cmd.name


def _check_test(test: Test, required: set[str]) -> None:
    if test.name not in TESTS:
        raise _fail(test.line, test.column, f"unknown test '{test.name}'")
    ext = TESTS[test.name]
    if ext is not None and ext not in required:
        raise _fail(test.line, test.column, f"unknown test '{test.name}' (needs require \"{ext}\")")
    if test.name in ("allof", "anyof"):
        if not test.tests:
            raise _fail(test.line, test.column, f"'{test.name}' needs a test list")
    elif test.name == "not":
        if len(test.tests) != 1:
            raise _fail(test.line, test.column, "'not' needs one test")
    elif test.tests:
        raise _fail(test.line, test.column, f"'{test.name}' takes no tests")
    _check_args(test.name, test.args, test.line, test.column, required)
    strings = [a for a in test.args if isinstance(a, Strings)]
    need = {"address": 2, "header": 2, "envelope": 2, "exists": 1, "body": 1, "hasflag": 1, "string": 2,
            "date": 3, "currentdate": 2}.get(test.name, 0)
    if len(strings) < need:
        raise _fail(test.line, test.column, f"'{test.name}' needs {need} string argument(s)")
    if any(isinstance(a, Tag) and a.name == "regex" for a in test.args) and strings:
        _check_regex_keys(strings[-1], "variables" in required, test.line, test.column)
    if test.name == "size":
        tags = {a.name for a in test.args if isinstance(a, Tag)}
        if not tags & {"over", "under"} or not any(not isinstance(a, (Tag, Strings)) for a in test.args):
            raise _fail(test.line, test.column, "'size' needs :over or :under and a number")
    for sub in test.tests:
        _check_test(sub, required)


def _check_regex_keys(keys: Strings, variables: bool, line: int, column: int) -> None:
    """Each ``:regex`` key must compile (draft-ietf-sieve-regex-01 §3: an invalid one is a
    compile error). Pigeonhole uses POSIX extended regexes, the interpreter the ``regex``
    module: a key must compile in the latter, and ``(?`` groups, which ERE has not, are
    refused as Pigeonhole refuses them ("invalid preceding regular expression")."""
    for i, key in enumerate(keys.values):
        at = keys.lines[i] if i < len(keys.lines) else line
        if variables and "${" in key:
            continue  # expanded at run time
        if len(key) > REGEX_MAX_PATTERN:
            raise _fail(at, column, f"regular expression longer than {REGEX_MAX_PATTERN} characters")
        problem = "invalid preceding regular expression" if "(?" in key else None
        if problem is None:
            try:
                regex.compile(key, regex.S)
            except (regex.error, ValueError, OverflowError, RecursionError) as e:
                problem = str(e)
        if problem is not None:
            shown = key if len(key) <= 60 else key[:57] + "..."
            raise _fail(at, column, f"invalid regular expression {shown!r} for regex match: {problem}")


def compile_script(source: bytes | str) -> tuple[Command, ...]:
    """Parse and validate; ``SieveSyntaxError`` (line, column, message) when the script is bad."""
    return check(parse(source))
