"""`mailstack sieve list|get|put|activate|deactivate|delete ADDRESS [NAME] [FILE|-]`, `mailstack sieve check FILE`.

A user's Sieve scripts as ManageSieve sees them, stored where Pigeonhole keeps them
(``<maildir>/sieve/NAME.sieve``, the active one behind ``.dovecot.sieve``). ``put`` and
``check`` compile the script first: a bad one exits 1 naming its line and column, and
nothing on disk changes (the active script keeps running).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailstack.cli.common import EXIT_OK, CLIError, Context, print_json, print_table
from mailstack.sieve import MAX_SCRIPT_BYTES, SieveSyntaxError, compile_script
from mailstack.sieve.store import ScriptError, ScriptStore
from mailstack.storage import Maildir, StorageError


def register(nouns: Any) -> None:
    p = nouns.add_parser("sieve", help="users' Sieve scripts")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="a user's scripts, the active one marked")
    ls.add_argument("address")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)
    get = verbs.add_parser("get", help="print a script")
    get.add_argument("address")
    get.add_argument("name")
    get.set_defaults(handler=_get)
    put = verbs.add_parser("put", help="store a script (from FILE, or stdin with - or no FILE)")
    put.add_argument("address")
    put.add_argument("name")
    put.add_argument("file", nargs="?", default="-")
    put.set_defaults(handler=_put)
    act = verbs.add_parser("activate", help="make a script the active one")
    act.add_argument("address")
    act.add_argument("name")
    act.set_defaults(handler=_activate)
    deact = verbs.add_parser("deactivate", help="no active script (mail goes to INBOX)")
    deact.add_argument("address")
    deact.set_defaults(handler=_deactivate)
    rm = verbs.add_parser("delete", help="delete a script (not the active one)")
    rm.add_argument("address")
    rm.add_argument("name")
    rm.set_defaults(handler=_delete)
    chk = verbs.add_parser("check", help="validate a script; names the line of an error")
    chk.add_argument("file")
    chk.set_defaults(handler=_check)


def _store(ctx: Context, address: str) -> ScriptStore:
    user = ctx.directory.get_user(address)
    if user is None:
        raise CLIError(f"no such user: {address}")
    try:
        md = Maildir.for_user(ctx.config.storage.maildir_root, user.domain, user.local)
    except StorageError as e:
        raise CLIError(str(e)) from None
    return ScriptStore(md.root)


def _read(file: str) -> bytes:
    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_SCRIPT_BYTES + 1)
        else:
            with open(file, "rb") as f:
                data = f.read(MAX_SCRIPT_BYTES + 1)
    except OSError as e:
        raise CLIError(f"cannot read {file}: {e.strerror}") from None
    return data


def _compile(label: str, data: bytes) -> None:
    try:
        compile_script(data)
    except SieveSyntaxError as e:
        raise CLIError(f"{label}: line {e.line}, column {e.column}: error: {e.message}") from None


def _list(args: argparse.Namespace, ctx: Context) -> int:
    scripts = _store(ctx, args.address).list()
    if args.json:
        print_json([{"name": s.name, "active": s.active} for s in scripts])
    else:
        print_table(["NAME", "ACTIVE"], [(s.name, "yes" if s.active else "") for s in scripts])
    return EXIT_OK


def _get(args: argparse.Namespace, ctx: Context) -> int:
    try:
        data = _store(ctx, args.address).get(args.name)
    except ScriptError as e:
        raise CLIError(str(e)) from None
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return EXIT_OK


def _put(args: argparse.Namespace, ctx: Context) -> int:
    store = _store(ctx, args.address)
    data = _read(args.file)
    _compile("stdin" if args.file == "-" else args.file, data)
    try:
        store.put(args.name, data)
    except (ScriptError, OSError) as e:
        raise CLIError(str(e)) from None
    print(f"sieve script {args.name} stored for {args.address}")
    return EXIT_OK


def _activate(args: argparse.Namespace, ctx: Context) -> int:
    store = _store(ctx, args.address)
    try:
        _compile(args.name, store.get(args.name))
        store.activate(args.name)
    except (ScriptError, OSError) as e:
        raise CLIError(str(e)) from None
    print(f"sieve script {args.name} active for {args.address}")
    return EXIT_OK


def _deactivate(args: argparse.Namespace, ctx: Context) -> int:
    _store(ctx, args.address).deactivate()
    print(f"no active sieve script for {args.address}")
    return EXIT_OK


def _delete(args: argparse.Namespace, ctx: Context) -> int:
    try:
        _store(ctx, args.address).delete(args.name)
    except (ScriptError, OSError) as e:
        raise CLIError(str(e)) from None
    print(f"sieve script {args.name} deleted for {args.address}")
    return EXIT_OK


def _check(args: argparse.Namespace, ctx: Context) -> int:
    _compile(args.file, _read(args.file))
    print(f"{args.file}: ok")
    return EXIT_OK


__all__ = ["register"]
