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
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mailstack.serve import run

    return run(ctx.config, args.services)
