"""The `mailstack` admin command line: one module per noun, argparse underneath.

Exit status (README.md, "The admin CLI"): 0 done, 1 refused or failed (one clear line on stderr,
nothing half-written), 2 wrong usage. No traceback ever reaches the admin: every
expected failure is a `CLIError` or a library error with a one-line `str()`; anything
else is logged as one line and exits 1 (set MAILSTACK_DEBUG=1 for the traceback).

Every command runs under umask 077 (`storage.safeio.PRIVATE_UMASK`), whatever the
caller's: the database, Maildirs, queue, keys it may create are nobody else's business.
The creating calls give their modes explicitly as well; this is the backstop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from mailstack import __version__
from mailstack.cli import alias, backup, cert, dkim, dns, domain, importing, log, queue, serve, sieve, status, user
from mailstack.cli import vacation
from mailstack.cli.common import EXIT_FAILED, EXIT_USAGE, CLIError, Context
from mailstack.config import ConfigError
from mailstack.storage.safeio import PRIVATE_UMASK

NOUNS = (serve, domain, user, alias, queue, dkim, dns, importing, backup, status, log, cert, sieve, vacation)


class _Parser(argparse.ArgumentParser):
    """argparse that says one line and exits 2 on wrong usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailstack", description="A self-hosted mail server stack.")
    parser.add_argument("--config", metavar="FILE", help="config file (default: $MAILSTACK_CONFIG, "
                        "./config/mailstack.toml, /etc/mailstack/mailstack.toml)")
    parser.add_argument("--version", action="version", version=f"mailstack {__version__}")
    nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", parser_class=_Parser)
    nouns.required = True
    for module in NOUNS:
        module.register(nouns)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(PRIVATE_UMASK)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, Context], int] = args.handler
    ctx = Context(config_arg=args.config)
    try:
        return handler(args, ctx)
    except CLIError as e:
        print(f"mailstack: {e}", file=sys.stderr)
        return e.status
    except ConfigError as e:
        print(f"mailstack: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("mailstack: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # last resort: one line, never a traceback
        if _is_directory_error(e):
            print(f"mailstack: {e}", file=sys.stderr)
            return EXIT_FAILED
        if os.environ.get("MAILSTACK_DEBUG"):
            raise
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(f"mailstack: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        ctx.close()


def _is_directory_error(e: Exception) -> bool:
    try:
        from mailstack.directory import DirectoryError
    except ImportError:
        return False
    return isinstance(e, DirectoryError)
