"""`mailstack import passwd-file|imap`: users and mail carried over from the old server.

- `import passwd-file FILE [--domain D]`: users from a Dovecot passwd-file, their hashes
  kept as they are (`{SCHEME}hash`, rehashed to argon2id at the next login) and their
  quota from `userdb_quota_rule=*:storage=...`. Domains are created as needed. A line it
  cannot use is named on stderr and skipped, the rest imported (exit 0; the summary
  counts the skipped lines). A user who already exists is left exactly as it is, so a
  second run changes nothing (and never puts back an old hash over a rehashed one).
- `import imap ADDRESS --host H ...` (or `--all-users FILE` of `local-address source-login`
  lines, usually with `--master-user`): every folder of an account on another IMAP server
  copied into the local user's Maildir (`mailstack.migrate.imapcopy`); progress on stderr;
  run again, it copies only what is new. The local user must exist (`user add` or
  `import passwd-file` first). Exit 1 with one line for a wrong host, port, TLS or
  password, or a source that stays away after the retries.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from mailstack.cli.common import EXIT_OK, EXIT_USAGE, CLIError, Context, format_size
from mailstack.migrate.progress import Progress

MAX_PASSWD_FILE = 64 * 1024 * 1024  # bytes; a passwd-file larger than this is not one (limits.md)


def register(nouns: Any) -> None:
    p = nouns.add_parser("import", help="users and mail from another server")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    pf = verbs.add_parser("passwd-file", help="users from a Dovecot passwd-file, hashes kept")
    pf.add_argument("file", metavar="FILE", help="the passwd-file ('-' = standard input)")
    pf.add_argument("--domain", metavar="D", help="domain for user names without @domain")
    pf.set_defaults(handler=_passwd_file)

    im = verbs.add_parser("imap", help="copy an account's mail from another IMAP server")
    im.add_argument("address", nargs="?", metavar="ADDRESS", help="the local user to copy into")
    im.add_argument("--all-users", metavar="FILE",
                    help="a file of 'local-address source-login' lines: every account in it")
    im.add_argument("--host", required=True, metavar="H", help="the old IMAP server")
    im.add_argument("--port", type=_port, metavar="P", help="default 993 with --tls, 143 otherwise")
    sec = im.add_mutually_exclusive_group()
    sec.add_argument("--tls", dest="security", action="store_const", const="tls",
                     help="implicit TLS (the default)")
    sec.add_argument("--starttls", dest="security", action="store_const", const="starttls")
    sec.add_argument("--plain", dest="security", action="store_const", const="plain",
                     help="no TLS (only on a trusted network)")
    im.add_argument("--login", metavar="L", help="login on the old server (default: ADDRESS)")
    im.add_argument("--master-user", metavar="M",
                    help="log in as master user M on behalf of each login (SASL PLAIN authzid, Dovecot master users)")
    im.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    im.add_argument("--ca-file", metavar="FILE", help="CA certificates to trust for the old server")
    im.add_argument("--insecure", action="store_true", help="do not verify the old server's certificate")
    im.add_argument("--batch", type=_positive, default=100, metavar="N", help="messages per fetch (100)")
    im.add_argument("--retries", type=_count, default=5, metavar="N",
                    help="reconnections in a row without progress before giving up (5)")
    im.add_argument("--timeout", type=_positive, default=60, metavar="S", help="seconds to wait for an answer (60)")
    im.set_defaults(handler=_imap, security=None)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return int(text)


# -- passwd-file ------------------------------------------------------------------------------


def _read_text(name: str) -> str:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_PASSWD_FILE + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(MAX_PASSWD_FILE + 1)
    except OSError as e:
        raise CLIError(f"cannot read {name}: {e.strerror or e}") from None
    if len(data) > MAX_PASSWD_FILE:
        raise CLIError(f"{name}: larger than {MAX_PASSWD_FILE // (1024 * 1024)} MB, not a passwd-file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(f"{name}: not UTF-8 text (byte {e.start})") from None


def _passwd_file(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.directory import AlreadyExists, DirectoryError
    from mailstack.mail.address import AddressError, normalize_domain
    from mailstack.migrate.passwdfile import PasswdLineError, parse_line

    default_domain = None
    if args.domain is not None:
        try:
            default_domain = normalize_domain(args.domain)
        except AddressError as e:
            raise CLIError(f"--domain {args.domain}: {e}", EXIT_USAGE) from None
    text = _read_text(args.file)
    directory = ctx.directory
    added = existing = skipped = 0

    def skip(line_no: int, why: str) -> None:
        nonlocal skipped
        skipped += 1
        print(f"mailstack: {args.file}:{line_no}: {why}; skipped", file=sys.stderr)

    for line_no, line in enumerate(text.splitlines(), 1):
        try:
            entry = parse_line(line, line_no, default_domain)
        except PasswdLineError as e:
            skip(line_no, str(e))
            continue
        if entry is None:
            continue
        try:
            if directory.get_user(entry.address) is not None:
                existing += 1  # kept as it is: a second run changes nothing
                continue
            # validated before a domain is created for it; what is stored is given on, so a
            # {PLAIN} password is hashed once, not twice
            stored = directory.passwords.import_hash(entry.password_hash)
        except DirectoryError as e:
            skip(line_no, f"{entry.address}: {e}")
            continue
        except ValueError as e:  # PasswordError
            skip(line_no, f"{entry.address}: {e}")
            continue
        domain = entry.address.rpartition("@")[2]
        created_domain = False
        try:
            if directory.get_domain(domain) is None:
                try:
                    directory.add_domain(domain)
                    created_domain = True
                except AlreadyExists:
                    pass
            clear = entry.password_hash.upper().startswith(("{PLAIN", "{CLEARTEXT"))
            user = directory.add_user(entry.address, None, entry.quota_bytes,
                                      password_hash=stored if clear else entry.password_hash)
        except AlreadyExists:
            existing += 1
            continue
        except DirectoryError as e:
            if created_domain:
                directory.remove_domain(domain)  # nothing half-done for a line that failed
            skip(line_no, f"{entry.address}: {e}")
            continue
        added += 1
        for note in entry.notes:
            print(f"mailstack: {args.file}:{line_no}: {entry.address}: {note}", file=sys.stderr)
        print(f"user {user.address} imported (quota {format_size(user.quota_bytes)})")
    print(f"{added} users imported, {existing} already there, {skipped} lines skipped")
    return EXIT_OK


# -- imap -------------------------------------------------------------------------------------


def _read_secret(from_stdin: bool, what: str) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CLIError("no terminal to prompt for the password: use --password-stdin", EXIT_USAGE)
        password = getpass.getpass(f"Password of {what}: ")
    if not password:
        raise CLIError("empty password")
    if "\x00" in password:
        raise CLIError("password refused: it holds a NUL byte")
    return password


def _accounts(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    """(line number, local address, source login); line 0 = the command line."""
    if (args.address is None) == (args.all_users is None):
        raise CLIError("give either ADDRESS or --all-users FILE", EXIT_USAGE)
    if args.address is not None:
        return [(0, args.address, args.login or args.address)]
    if args.login is not None:
        raise CLIError("--login goes with ADDRESS; with --all-users each line names its login "
                       "(use --master-user for a master login)", EXIT_USAGE)
    out = []
    for n, line in enumerate(_read_text(args.all_users).splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise CLIError(f"{args.all_users}:{n}: expected 'local-address source-login', "
                           f"got {len(fields)} fields")
        out.append((n, fields[0], fields[1]))
    if not out:
        raise CLIError(f"{args.all_users}: no accounts in it")
    return out


def _imap(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.migrate.imapcopy import ImportOptions, ImportStopped, import_account
    from mailstack.migrate.source import Security, SourceError, SourceSettings
    from mailstack.storage import Maildir, StorageError

    accounts = _accounts(args)
    if args.ca_file is not None and not Path(args.ca_file).is_file():
        raise CLIError(f"--ca-file {args.ca_file}: no such file", EXIT_USAGE)
    security: Security = args.security or "tls"
    port = args.port or (993 if security == "tls" else 143)
    directory = ctx.directory
    users = []
    for n, address, login in accounts:  # every local user checked before anything is copied
        user = directory.get_user(address)
        where = f"{args.all_users}:{n}: " if n else ""
        if user is None:
            raise CLIError(f"{where}no such local user: {address} (add it first: mailstack user add)")
        users.append((user, login))
    who = args.master_user or accounts[0][2]
    password = _read_secret(args.password_stdin, f"{who} at {args.host}")
    options = ImportOptions(batch_messages=args.batch, retries=args.retries)
    root = ctx.config.storage.maildir_root
    failed = 0
    for user, login in users:
        settings = SourceSettings(host=args.host, port=port, security=security, login=login, password=password,
                                  master_user=args.master_user, ca_file=args.ca_file, verify=not args.insecure,
                                  timeout=float(args.timeout))
        bar = ProgressBar(sys.stderr, user.address)
        started = time.monotonic()
        try:
            maildir = Maildir.for_user(root, user.domain, user.local)
            report = asyncio.run(import_account(settings, maildir, quota_bytes=user.quota_bytes,
                                                options=options, progress=bar))
        except (SourceError, ImportStopped, StorageError, OSError) as e:  # OSError: the local disk
            if len(users) == 1:
                raise CLIError(f"{user.address}: {e}") from None
            print(f"mailstack: {user.address}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{user.address}: {report.copied} messages copied ({report.bytes} bytes), "
              f"{report.already} already there, {report.folders} folders, "
              f"{time.monotonic() - started:.1f} s")
    if failed:
        raise CLIError(f"{failed} of {len(users)} accounts failed (see above); run again to finish them")
    return EXIT_OK


class ProgressBar(Progress):
    """The copier's progress on stderr: a bar redrawn in place on a terminal, else one line
    per folder and per batch (for logs and for whoever reads the pipe)."""

    WIDTH = 30

    def __init__(self, stream: TextIO, account: str) -> None:
        self.stream = stream
        self.account = account
        self.tty = stream.isatty()
        self.name = ""
        self.total = self.done = 0
        self.dirty = False

    def folder(self, name: str, total: int, done: int) -> None:
        self._end_line()
        self.name, self.total, self.done = name, total, done
        self._draw(force=True)

    def advance(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        self._draw(force=False)

    def note(self, text: str) -> None:
        self._end_line()
        print(f"mailstack: {self.account}: {text}", file=self.stream, flush=True)

    def finish(self) -> None:
        self._end_line()

    def _draw(self, force: bool) -> None:
        if self.tty:
            filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r{self.account} {self.name} [{bar}] {self.done}/{self.total}\x1b[K")
            self.stream.flush()
            self.dirty = True
        else:
            print(f"{self.account} {self.name}: {self.done}/{self.total} messages", file=self.stream, flush=True)

    def _end_line(self) -> None:
        if self.tty and self.dirty:
            self.stream.write("\n")
            self.stream.flush()
            self.dirty = False

