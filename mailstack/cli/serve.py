"""`mailstack serve [SERVICE ...]`: run services in one asyncio process (see mailstack.serve)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from mailstack.cli.common import Context


def register(nouns: Any) -> None:
    p = nouns.add_parser("serve", help="run the mail services (default: every service the config enables)")
    p.add_argument("services", nargs="*", metavar="SERVICE",
                   help="smtp, submission, lmtp, imap, pop3, queue, http")
    p.add_argument("--log-level", default=os.environ.get("MAILSTACK_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, ctx: Context) -> int:
    # Under systemd (JOURNAL_STREAM set) journald stamps each line itself.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=args.log_level, format=stamp + "%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations are logged by the directory
    from mailstack.serve import run

    return run(ctx.config, args.services)
