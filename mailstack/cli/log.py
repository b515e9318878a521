"""`mailstack log ID [FILE ...]`: one message's mail-log lines, from its arrival to its delivery.

Reads the log (files, ``.gz`` too, or standard input when no FILE or ``-`` is given) and
prints, in order, every ``mailstack.maillog`` line about message ``ID`` and about the
messages it became (a local retry queued under a new id, ``orig_id=ID``; the bounce it
caused, ``dsn=``): accepted, queued, deferred, delivered, bounced. Under systemd::

    journalctl -u 'mailstack*' -o short-iso | mailstack log 18C2F4A51B3E0001

Exit 0 when a line was found, 1 when none was (one line on stderr), 2 wrong usage.
It needs no config: only the log is read.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from collections.abc import Iterator
from typing import IO, Any

from mailstack.cli.common import EXIT_OK, CLIError, Context
from mailstack.maillog import follow

_ID_RE = re.compile(r"^[0-9A-Fa-f]{18}$")


def register(nouns: Any) -> None:
    p = nouns.add_parser("log", help="follow one message through the mail log by its queue id")
    p.add_argument("id", metavar="ID", help="the queue id (id=... in the mail log, 'queued as ...' in the 250 reply)")
    p.add_argument("files", nargs="*", metavar="FILE", help="log files, oldest first (.gz too); '-' or none: "
                   "standard input, e.g. journalctl -u 'mailstack*' | mailstack log ID")
    p.set_defaults(handler=_log)


def _lines(name: str) -> Iterator[str]:
    if name == "-":
        if sys.stdin.isatty():
            raise CLIError("no FILE given and standard input is a terminal: pipe the log in "
                           "(journalctl -u 'mailstack*' | mailstack log ID) or name a file", 2)
        yield from sys.stdin
        return
    try:
        f: IO[str] = (gzip.open(name, "rt", encoding="utf-8", errors="replace") if name.endswith(".gz")
                      else open(name, encoding="utf-8", errors="replace"))
    except OSError as e:
        raise CLIError(f"{name}: {(e.strerror or str(e)).lower()}") from None
    with f:
        try:
            yield from f
        except (OSError, EOFError) as e:  # a truncated .gz
            raise CLIError(f"{name}: {e}") from None


def _log(args: argparse.Namespace, ctx: Context) -> int:
    if not _ID_RE.match(args.id):
        raise CLIError(f"{args.id!r} is not a queue id (18 hex digits)", 2)

    def every() -> Iterator[str]:
        for name in args.files or ["-"]:
            yield from _lines(name)

    found = 0
    for line in follow(every(), args.id):
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
        found += 1
    if not found:
        raise CLIError(f"no mail-log line about {args.id.upper()}")
    return EXIT_OK
