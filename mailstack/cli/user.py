"""`mailstack user add|passwd|remove|list|disable|enable|quota`: mailbox users.

Passwords come from `--password-stdin` (one line) or a no-echo prompt asked twice;
never from the command line, where `ps` would show them. `--password-hash` takes a hash
made elsewhere in Dovecot's `{SCHEME}hash` form (`{SHA512-CRYPT}$6$...`, `{ARGON2ID}...`,
see `directory.passwords`): a hash reveals no password, so the command line is fine for it. Removing a user leaves the
Maildir on disk unless `--purge` is given (Postfix/Dovecot admins expect mail to
survive a directory mistake).
"""

from __future__ import annotations

import argparse
import getpass
import shutil
import sys
from typing import Any

from mailstack.cli.common import EXIT_OK, EXIT_USAGE, CLIError, Context, format_size, iso, print_json, print_table
from mailstack.config import parse_size


def register(nouns: Any) -> None:
    p = nouns.add_parser("user", help="mailbox users")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    add = verbs.add_parser("add", help="add a mailbox user")
    add.add_argument("address")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    how.add_argument("--password-hash", metavar="HASH",
                     help="a hash from Dovecot, kept as it is: {SHA512-CRYPT}$6$..., {BLF-CRYPT}, {ARGON2ID}, ...")
    add.add_argument("--quota", metavar="SIZE", type=_quota, help="like 500M or 2G; 0 = unlimited (default)")
    add.set_defaults(handler=_add)

    pw = verbs.add_parser("passwd", help="set a new password")
    pw.add_argument("address")
    pw_how = pw.add_mutually_exclusive_group()
    pw_how.add_argument("--password-stdin", action="store_true")
    pw_how.add_argument("--password-hash", metavar="HASH", help="a {SCHEME}hash kept as it is")
    pw.set_defaults(handler=_passwd)

    rm = verbs.add_parser("remove", help="remove a user (the Maildir stays unless --purge)")
    rm.add_argument("address")
    rm.add_argument("--purge", action="store_true", help="also delete the user's Maildir")
    rm.set_defaults(handler=_remove)

    ls = verbs.add_parser("list", help="list users")
    ls.add_argument("domain", nargs="?")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)

    for verb, enabled in (("disable", False), ("enable", True)):
        v = verbs.add_parser(verb, help=f"{verb} logins and delivery")
        v.add_argument("address")
        v.set_defaults(handler=_set_enabled, enabled=enabled)

    q = verbs.add_parser("quota", help="set a user's quota (0 = unlimited)")
    q.add_argument("address")
    q.add_argument("size", type=_quota)
    q.set_defaults(handler=_set_quota)


def _quota(text: str) -> int | None:
    if text.strip().lower() in ("0", "none", "unlimited"):
        return None
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        if not sys.stdin.isatty():
            raise CLIError("no terminal to prompt for the password: use --password-stdin", EXIT_USAGE)
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CLIError("the passwords do not match")
    if not password:
        raise CLIError("empty password refused")
    if "\x00" in password or len(password.encode("utf-8")) > 1024:
        raise CLIError("password refused: NUL byte or longer than 1024 bytes")
    return password


def _hash_arg(text: str) -> str:
    """The hash as given; `directory.passwords.import_hash` judges it (one-line `Invalid`)."""
    if not text.strip():
        raise CLIError("empty password hash", EXIT_USAGE)
    return text.strip()


def _add(args: argparse.Namespace, ctx: Context) -> int:
    directory = ctx.directory
    if args.password_hash is not None:
        u = directory.add_user(args.address, None, args.quota, password_hash=_hash_arg(args.password_hash))
    else:
        u = directory.add_user(args.address, _read_password(args.password_stdin), args.quota)
    print(f"user {u.address} added (quota {format_size(u.quota_bytes)})")
    return EXIT_OK


def _passwd(args: argparse.Namespace, ctx: Context) -> int:
    directory = ctx.directory
    if directory.get_user(args.address) is None:  # fail before asking for a password
        raise CLIError(f"no such user: {args.address}")
    if args.password_hash is not None:
        directory.set_password(args.address, None, password_hash=_hash_arg(args.password_hash))
    else:
        directory.set_password(args.address, _read_password(args.password_stdin))
    print(f"password of {args.address} changed")
    return EXIT_OK


def _remove(args: argparse.Namespace, ctx: Context) -> int:
    u = ctx.directory.remove_user(args.address)
    if args.purge:
        from mailstack.storage import Maildir

        path = Maildir.for_user(ctx.config.storage.maildir_root, u.domain, u.local).root
        if path.exists():
            shutil.rmtree(path)
        print(f"user {u.address} removed, Maildir {path} deleted")
    else:
        print(f"user {u.address} removed (Maildir kept; --purge deletes it)")
    return EXIT_OK


def _list(args: argparse.Namespace, ctx: Context) -> int:
    users = ctx.directory.list_users(args.domain)
    if args.json:
        print_json([
            {"address": u.address, "quota": u.quota_bytes, "enabled": u.enabled,
             "created_at": iso(u.created_at), "updated_at": iso(u.updated_at)}
            for u in users
        ])
    else:
        print_table(["ADDRESS", "QUOTA", "ENABLED", "CREATED"],
                    [(u.address, format_size(u.quota_bytes), "yes" if u.enabled else "no", iso(u.created_at))
                     for u in users])
    return EXIT_OK


def _set_enabled(args: argparse.Namespace, ctx: Context) -> int:
    ctx.directory.set_enabled(args.address, args.enabled)
    print(f"user {args.address} {'enabled' if args.enabled else 'disabled'}")
    return EXIT_OK


def _set_quota(args: argparse.Namespace, ctx: Context) -> int:
    ctx.directory.set_quota(args.address, args.size)
    print(f"quota of {args.address} set to {format_size(args.size)}")
    return EXIT_OK
