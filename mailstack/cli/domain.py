"""`mailstack domain add|remove|list`: the local domains."""

from __future__ import annotations

import argparse
from typing import Any

from mailstack.cli.common import EXIT_OK, Context, iso, print_json, print_table


def register(nouns: Any) -> None:
    p = nouns.add_parser("domain", help="local domains")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="add a local domain")
    add.add_argument("domain")
    add.set_defaults(handler=_add)
    rm = verbs.add_parser("remove", help="remove a local domain (its mail stays on disk)")
    rm.add_argument("domain")
    rm.add_argument("--force", action="store_true", help="also remove its users and aliases from the directory")
    rm.set_defaults(handler=_remove)
    ls = verbs.add_parser("list", help="list local domains")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)


def _add(args: argparse.Namespace, ctx: Context) -> int:
    d = ctx.directory.add_domain(args.domain)
    print(f"domain {d.name} added")
    return EXIT_OK


def _remove(args: argparse.Namespace, ctx: Context) -> int:
    ctx.directory.remove_domain(args.domain, force=args.force)
    print(f"domain {args.domain} removed")
    return EXIT_OK


def _list(args: argparse.Namespace, ctx: Context) -> int:
    domains = ctx.directory.list_domains()
    if args.json:
        print_json([{"name": d.name, "created_at": iso(d.created_at)} for d in domains])
    else:
        print_table(["DOMAIN", "CREATED"], [(d.name, iso(d.created_at)) for d in domains])
    return EXIT_OK
