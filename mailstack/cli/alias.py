"""`mailstack alias add|remove|list`: aliases, catch-alls (`@domain`) and forwards to remote targets."""

from __future__ import annotations

import argparse
from typing import Any

from mailstack.cli.common import EXIT_OK, Context, print_json, print_table


def register(nouns: Any) -> None:
    p = nouns.add_parser("alias", help="aliases and catch-alls")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="SOURCE (address or @domain) delivers to TARGET...")
    add.add_argument("source")
    add.add_argument("targets", nargs="+", metavar="TARGET")
    add.set_defaults(handler=_add)
    rm = verbs.add_parser("remove", help="remove an alias, or only some of its targets")
    rm.add_argument("source")
    rm.add_argument("targets", nargs="*", metavar="TARGET")
    rm.set_defaults(handler=_remove)
    ls = verbs.add_parser("list", help="list aliases")
    ls.add_argument("domain", nargs="?")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)


def _add(args: argparse.Namespace, ctx: Context) -> int:
    a = ctx.directory.add_alias(args.source, args.targets)
    print(f"alias {a.source} -> {', '.join(a.targets)}")
    return EXIT_OK


def _remove(args: argparse.Namespace, ctx: Context) -> int:
    ctx.directory.remove_alias(args.source, args.targets or None)
    print(f"alias {args.source} removed" + (f" ({', '.join(args.targets)})" if args.targets else ""))
    return EXIT_OK


def _list(args: argparse.Namespace, ctx: Context) -> int:
    aliases = ctx.directory.list_aliases(args.domain)
    if args.json:
        print_json([{"source": a.source, "targets": list(a.targets)} for a in aliases])
    else:
        print_table(["SOURCE", "TARGETS"], [(a.source, ", ".join(a.targets)) for a in aliases])
    return EXIT_OK
