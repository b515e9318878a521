"""`mailstack backup DEST [--full] [--keep N]` and `mailstack restore SRC [--force]`.

`backup` runs while the servers do (see `mailstack.backup.snapshot`); `restore` wants them
stopped and refuses a damaged backup or a root that is not empty (unless --force) with one
line, having written nothing. The work is in `mailstack.backup`; this is argparse and output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mailstack.cli.common import EXIT_OK, CLIError, Context


def register(nouns: Any) -> None:
    b = nouns.add_parser("backup", help="a consistent copy of everything into DEST/<time>/ while the server runs")
    b.add_argument("dest", metavar="DEST", help="folder of snapshots (made when missing)")
    b.add_argument("--full", action="store_true", help="copy every file (default: hard-link what did not change "
                   "since DEST/latest)")
    b.add_argument("--keep", type=_count, default=0, metavar="N",
                   help="then remove the oldest snapshots beyond N (default 0: keep all)")
    b.set_defaults(handler=_backup)
    r = nouns.add_parser("restore", help="verify a backup, then write it where --config says")
    r.add_argument("src", metavar="SRC", help="a snapshot, or a backup folder (its latest snapshot)")
    r.add_argument("--force", action="store_true", help="restore over a root that is not empty")
    r.set_defaults(handler=_restore)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return n


def _backup(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.backup import BackupError, backup

    try:
        result = backup(ctx.config, Path(args.dest), full=args.full, keep=args.keep)
    except BackupError as e:
        raise CLIError(str(e)) from None
    how = f"{result.linked} linked from {result.parent}, " if result.parent else ""
    print(f"{result.path}: {result.files} files ({how}{result.copied} copied, {result.bytes_copied} bytes)")
    for name in result.removed:
        print(f"removed old snapshot {name}", file=sys.stderr)
    return EXIT_OK


def _restore(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.backup import BackupError, restore

    try:
        result = restore(ctx.config, Path(args.src), force=args.force)
    except BackupError as e:
        raise CLIError(str(e)) from None
    print(f"restored {result.snapshot}: {result.files} files")
    if result.config_copy is not None:
        print(f"the backed-up config is in {result.config_copy} (for reference; {ctx.config.path} is unchanged)")
    return EXIT_OK
