"""`mailstack serve [SERVICE ...]`: run services (see mailstack.serve; several processes: mailstack.supervisor)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from mailstack.cli.common import Context
from mailstack.config import find_config_path


def register(nouns: Any) -> None:
    p = nouns.add_parser("serve", help="run the mail services (default: every service the config enables)")
    p.add_argument("services", nargs="*", metavar="SERVICE",
                   help="smtp, submission, lmtp, imap, pop3, queue, http")
    p.add_argument("--log-level", default=os.environ.get("MAILSTACK_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack import supervisor

    # A worker runs the config its supervisor read (not the file as it may be now).
    link = supervisor.worker_link()
    config = link.config(find_config_path(ctx.config_arg)) if link is not None else ctx.config
    # Under systemd (JOURNAL_STREAM set) journald stamps each line itself; with several
    # workers every line says which process wrote it (``[pid] INFO name: ...``: the pid comes
    # before the level, so ``mailstack.maillog:`` stays as fail2ban and rsyslog filters expect it).
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    pid = "[%(process)d] " if link is not None or supervisor.worker_count(config) > 1 else ""
    logging.basicConfig(level=args.log_level, format=stamp + pid + "%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations are logged by the directory
    from mailstack.serve import run

    return run(config, args.services, link)
