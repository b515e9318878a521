"""`mailstack vacation set ADDRESS --subject S --message-file F [--days N] [--until YYYY-MM-DD]`,
`mailstack vacation show|off ADDRESS`.

The auto-reply, kept apart from the user's own Sieve script and run before it
(``<maildir>/sieve-before/vacation.sieve``, see ``mailstack.sieve.vacation``): the user's
filters keep working, and ManageSieve cannot list or overwrite it. Replies follow RFC 5230
and RFC 3834 (delivery's ``vacation`` action: never to ``<>``, lists, bulk or automatic mail,
once per sender per ``--days``), go through the queue, DKIM-signed.

Exit status: a malformed address, ``--days`` out of range, a bad ``--until`` date or subject
is wrong usage (2); an unknown user, an unreadable or non-UTF-8 message file is a refusal (1).
``--until`` in the past is accepted with a warning (nothing will be sent), as a date an
admin set deliberately.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date, datetime, timezone
from typing import Any

from mailstack.cli.common import EXIT_OK, EXIT_USAGE, CLIError, Context, print_json
from mailstack.mail.address import AddressError, parse_address
from mailstack.sieve.vacation import MAX_DAYS, MAX_MESSAGE_BYTES, MAX_SUBJECT, Vacation, VacationError, VacationStore
from mailstack.storage import Maildir, StorageError


def _days(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 1 <= n <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_DAYS}")
    return n


def _until(text: str) -> date:
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _subject(text: str) -> str:
    if len(text) > MAX_SUBJECT or re.search(r"[\x00-\x1f\x7f]", text):
        raise argparse.ArgumentTypeError(f"must be one line of at most {MAX_SUBJECT} characters")
    return text


def register(nouns: Any) -> None:
    p = nouns.add_parser("vacation", help="a user's auto-reply (run before the user's own Sieve script)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    s = verbs.add_parser("set", help="turn the auto-reply on (or replace it)")
    s.add_argument("address")
    s.add_argument("--subject", required=True, type=_subject)
    s.add_argument("--message-file", required=True, metavar="FILE", help="the reply's text (UTF-8; - for stdin)")
    s.add_argument("--days", type=_days, default=7, metavar="N",
                   help=f"at most one reply per sender in N days (1..{MAX_DAYS}; default 7)")
    s.add_argument("--until", type=_until, metavar="YYYY-MM-DD", help="last day to answer (UTC); default: until off")
    s.set_defaults(handler=_set)
    sh = verbs.add_parser("show", help="the auto-reply's settings")
    sh.add_argument("address")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(handler=_show)
    off = verbs.add_parser("off", help="turn the auto-reply off")
    off.add_argument("address")
    off.set_defaults(handler=_off)


def _user(ctx: Context, address: str) -> tuple[str, VacationStore]:
    try:
        parse_address(address)
    except AddressError as e:
        raise CLIError(f"invalid address {address!r}: {e}", EXIT_USAGE) from None
    user = ctx.directory.get_user(address)
    if user is None:
        raise CLIError(f"no such user: {address}")
    try:
        md = Maildir.for_user(ctx.config.storage.maildir_root, user.domain, user.local)
    except StorageError as e:
        raise CLIError(str(e)) from None
    return f"{user.local}@{user.domain}", VacationStore(md.root)


def _read(file: str) -> str:
    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)
        else:
            with open(file, "rb") as f:
                data = f.read(MAX_MESSAGE_BYTES + 1)
    except OSError as e:
        raise CLIError(f"cannot read {file}: {e.strerror}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise CLIError(f"{file}: larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"{file}: not UTF-8 text") from None


def _set(args: argparse.Namespace, ctx: Context) -> int:
    address, store = _user(ctx, args.address)
    message = _read(args.message_file)
    try:
        v = Vacation(address, args.subject, message, args.days, args.until)
    except VacationError as e:
        raise CLIError(str(e)) from None
    try:
        store.set(v)
    except OSError as e:
        raise CLIError(f"cannot store the auto-reply: {e.strerror or e}") from None
    today = datetime.now(timezone.utc).date()
    if not v.active_on(today):
        print(f"mailstack: warning: --until {v.until} is in the past: no reply will be sent", file=sys.stderr)
    print(f"auto-reply on for {address}" + (f" until {v.until}" if v.until else ""))
    return EXIT_OK


def _show(args: argparse.Namespace, ctx: Context) -> int:
    address, store = _user(ctx, args.address)
    try:
        v = store.get()
    except (VacationError, OSError) as e:
        raise CLIError(f"{address}: {e}") from None
    today = datetime.now(timezone.utc).date()
    if args.json:
        print_json(None if v is None else {
            "address": v.address, "subject": v.subject, "days": v.days,
            "until": v.until.isoformat() if v.until else None, "active": v.active_on(today), "message": v.message})
        return EXIT_OK
    if v is None:
        print(f"no auto-reply for {address}")
        return EXIT_OK
    state = "on" if v.active_on(today) else "ended"
    print(f"auto-reply: {state}\nsubject: {v.subject}\ndays: {v.days}\nuntil: {v.until or '-'}\n\n{v.message}", end="")
    if not v.message.endswith("\n"):
        print()
    return EXIT_OK


def _off(args: argparse.Namespace, ctx: Context) -> int:
    address, store = _user(ctx, args.address)
    try:
        had = store.off()
    except OSError as e:
        raise CLIError(f"cannot remove the auto-reply: {e.strerror or e}") from None
    print(f"auto-reply off for {address}" if had else f"no auto-reply for {address}")
    return EXIT_OK


__all__ = ["register"]
