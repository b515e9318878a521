"""`mailstack import imap` against a real Dovecot populated over IMAP, the copy read back
over mailstack's own IMAP server and compared message by message: bytes, flags, keywords,
INTERNALDATE, folders (hierarchy, non-ASCII names), subscriptions. Second runs copy
nothing; a Dovecot killed mid-import leaves a copy that a rerun completes without
duplicates; a dropped connection is retried by itself.
"""

from __future__ import annotations

import imaplib
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailstack.migrate.wire import parse_internaldate
from mailstack.storage import mutf7
from tests.helpers import free_port
from tests.imap_server.conftest import IMAPServer, make_server

from .conftest import MASTER, SOURCE_USERS, Dovecot

SCRIPT = Path(sys.executable).parent / "mailstack"
ALICE_OLD = "alice@old.test"
FOLDERS = ["Work", "Work.Projects", "Work.Projects.2024", "Ärger", "Ärger.Ünter", "Spaß & Co"]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[IMAPServer]:
    """mailstack's IMAP server over a temp store (users alice and bob, password `secret`),
    and a config file for the CLI pointing at the same database and Maildirs."""
    for server in make_server(tmp_path):
        cfg = tmp_path / "mailstack.toml"
        cfg.write_text(f'hostname = "mx.example.test"\n[database]\nurl = "{server.config.database.url}"\n'
                       f'[storage]\nmaildir_root = "{server.config.storage.maildir_root}"\n')
        server.extra["config"] = cfg
        yield server


def run_import(server: IMAPServer, *args: str, password: str = SOURCE_USERS[ALICE_OLD],
               ok: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_CONFIG"}
    r = subprocess.run([str(SCRIPT), "--config", str(server.extra["config"]), "import", "imap", *args],
                       input=password + "\n", capture_output=True, text=True, timeout=300, env=env, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    if ok is not None:
        assert r.returncode == ok, (r.returncode, r.stdout, r.stderr)
    return r


def plain_args(d: Dovecot, address: str = "alice@example.test", login: str = ALICE_OLD) -> list[str]:
    return [address, "--host", "127.0.0.1", "--port", str(d.port), "--plain", "--login", login, "--password-stdin"]


def source(d: Dovecot, user: str = ALICE_OLD) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", d.port, timeout=30)
    password = SOURCE_USERS[user]
    c.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())  # UTF-8 passwords too
    return c


def msg(n: int, folder: str, size: int = 0, extra: bytes = b"") -> bytes:
    body = (f"Line {n} of {folder}\r\n".encode() + b"x" * size + b"\r\n") if size else b"Hello \xc3\xa9t\xc3\xa9\r\n"
    return (f"From: Old <old@old.test>\r\nTo: alice@old.test\r\nSubject: {folder} #{n}\r\n"
            f"Message-ID: <{n}.{abs(hash(folder))}@old.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0100\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n").encode() \
        + extra + b"\r\n" + body


def populate(d: Dovecot) -> None:
    """Folders with hierarchy and non-ASCII names, flags, keywords, INTERNALDATEs, a twin."""
    c = source(d)
    for name in FOLDERS:
        assert c.create('"' + mutf7.encode(name) + '"')[0] == "OK"
    c.subscribe('"Work.Projects"')
    c.subscribe('"' + mutf7.encode("Ärger") + '"')
    flag_sets = ["(\\Seen)", "(\\Seen \\Answered $Forwarded)", "(\\Flagged Important)", "()", "(\\Draft \\Seen)",
                 "(\\Deleted)", "($Label1 $Label2 \\Seen)"]
    dates = ['"01-Jan-2001 00:00:01 +0000"', '"31-Dec-2019 23:59:59 -0800"', '"15-Jun-2024 12:30:00 +0200"']
    for fi, name in enumerate(["INBOX", *FOLDERS]):
        for n in range(4 + fi):
            flags = flag_sets[(n + fi) % len(flag_sets)]
            date = dates[(n + fi) % len(dates)]
            r = c.append('"' + mutf7.encode(name) + '"', flags, date, msg(n, name))
            assert r[0] == "OK", r
    twin = msg(99, "twins")
    for _ in range(2):  # the same message twice: both are copied, and both only once
        assert c.append("INBOX", "(\\Seen)", dates[0], twin)[0] == "OK"
    c.logout()


def folder_contents(c: imaplib.IMAP4, name: str) -> list[tuple[bytes, frozenset[str], float]]:
    typ, _ = c.select('"' + mutf7.encode(name) + '"', readonly=True)
    assert typ == "OK", name
    typ, data = c.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
    assert typ == "OK"
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, body = item
        flags = re.search(rb"FLAGS \(([^)]*)\)", head)
        date = re.search(rb'INTERNALDATE "([^"]+)"', head)
        assert flags is not None and date is not None, head
        out.append((body, frozenset(flags.group(1).decode().split()) - {"\\Recent"}, _utc(date.group(1).decode())))
    return out


def _utc(internaldate: str) -> float:
    """INTERNALDATE as an instant: servers may print it in another zone."""
    when = parse_internaldate(internaldate)
    assert when is not None, internaldate
    return when.timestamp()


def folder_names(c: imaplib.IMAP4, command: str = "LIST") -> set[str]:
    typ, data = c.list('""', "*") if command == "LIST" else c.lsub('""', "*")
    assert typ == "OK"
    names = set()
    for line in data:
        if not isinstance(line, bytes):
            continue
        m = re.match(rb'\(([^)]*)\) (?:"."|NIL) "?(.*?)"?$', line)
        assert m is not None, line
        if b"\\Noselect" not in m.group(1):
            names.add(mutf7.decode(m.group(2).decode()))
    return names


def assert_same_account(d: Dovecot, local: IMAPServer, source_user: str = ALICE_OLD,
                        local_user: str = "alice@example.test") -> int:
    old = source(d, source_user)
    new = local.client(local_user)
    count = 0
    try:
        old_names = folder_names(old)
        assert old_names <= folder_names(new)
        assert folder_names(old, "LSUB") <= folder_names(new, "LSUB")
        for name in sorted(old_names):
            want, got = folder_contents(old, name), folder_contents(new, name)
            assert got == want, name  # same bytes, flags and keywords, INTERNALDATE, order
            count += len(want)
    finally:
        old.logout()
        new.logout()
    return count


def test_whole_account_copied_then_nothing_new(dovecot: Dovecot, local: IMAPServer) -> None:
    populate(dovecot)
    r = run_import(local, *plain_args(dovecot))
    assert "messages copied" in r.stdout
    assert "INBOX" in r.stderr  # progress on stderr
    total = assert_same_account(dovecot, local)
    assert total == sum(4 + i for i in range(len(FOLDERS) + 1)) + 2
    assert f"{total} messages copied" in r.stdout

    again = run_import(local, *plain_args(dovecot))
    assert "0 messages copied" in again.stdout, again.stdout
    assert assert_same_account(dovecot, local) == total

    # something new on the old server: only that is copied
    c = source(dovecot)
    c.append('"Work.Projects"', "(\\Flagged)", None, msg(500, "late"))
    c.logout()
    third = run_import(local, *plain_args(dovecot))
    assert "1 messages copied" in third.stdout, third.stdout
    assert assert_same_account(dovecot, local) == total + 1


def test_copied_message_without_its_state_row_is_not_copied_again(dovecot: Dovecot, local: IMAPServer) -> None:
    """A crash between the append and the state row: the rerun finds the message by its
    Message-ID, INTERNALDATE and size, not by its UID."""
    populate(dovecot)
    run_import(local, *plain_args(dovecot))
    state = local.maildir().root / "mailstack-import.sqlite"
    with sqlite3.connect(state) as db:
        assert db.execute("DELETE FROM copied WHERE folder = ?", (b"INBOX",)).rowcount > 2
    r = run_import(local, *plain_args(dovecot))
    assert "0 messages copied" in r.stdout, r.stdout
    assert_same_account(dovecot, local)


def test_tls_starttls_and_certificates(dovecot: Dovecot, local: IMAPServer) -> None:
    c = source(dovecot)
    c.append("INBOX", "(\\Seen)", None, msg(1, "tls"))
    c.logout()
    base = ["alice@example.test", "--host", "127.0.0.1", "--login", ALICE_OLD, "--password-stdin"]
    bad = run_import(local, *base, "--port", str(dovecot.tls_port), "--tls", ok=1)
    assert "certificate" in bad.stderr.lower() and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    run_import(local, *base, "--port", str(dovecot.tls_port), "--tls", "--ca-file", str(dovecot.cert))
    r = run_import(local, *base, "--port", str(dovecot.port), "--starttls", "--ca-file", str(dovecot.cert))
    assert "0 messages copied" in r.stdout
    r = run_import(local, *base, "--port", str(dovecot.port), "--starttls", "--insecure")
    assert "0 messages copied" in r.stdout
    assert_same_account(dovecot, local)


def test_refusals_are_one_line(dovecot: Dovecot, local: IMAPServer) -> None:
    wrong = run_import(local, *plain_args(dovecot), password="not-it", ok=1)
    assert "login" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    closed = run_import(local, "alice@example.test", "--host", "127.0.0.1", "--port", str(free_port()), "--plain",
                        "--password-stdin", ok=1)
    assert "cannot connect" in closed.stderr and len(closed.stderr.strip().splitlines()) == 1, closed.stderr
    nobody = run_import(local, *plain_args(dovecot, address="nobody@example.test"), ok=1)
    assert "no such local user" in nobody.stderr
    both = run_import(local, "alice@example.test", "--all-users", "/dev/null", "--host", "x", ok=2)
    assert "either" in both.stderr
    neither = run_import(local, "--host", "x", ok=2)
    assert "either" in neither.stderr
    assert not (local.maildir().root / "mailstack-import.sqlite").exists()


def test_all_users_with_a_master_user(dovecot: Dovecot, local: IMAPServer) -> None:
    local.directory.add_user("carol@example.test", "secret")
    for user in ("bob@old.test", "carol@old.test"):
        c = source(dovecot, user)
        c.create("Sub")
        for n in range(3):
            c.append("Sub" if n else "INBOX", "(\\Seen)", None, msg(n, user))
        c.logout()
    users = local.tmp / "users.txt"
    users.write_text("# local  source\nbob@example.test bob@old.test\n\ncarol@example.test carol@old.test\n")
    args = ["--all-users", str(users), "--host", "127.0.0.1", "--port", str(dovecot.port), "--plain",
            "--master-user", MASTER[0], "--password-stdin"]
    r = run_import(local, *args, password=MASTER[1])
    assert r.stdout.count("3 messages copied") == 2, r.stdout
    assert_same_account(dovecot, local, "bob@old.test", "bob@example.test")
    assert_same_account(dovecot, local, "carol@old.test", "carol@example.test")
    again = run_import(local, *args, password=MASTER[1])
    assert again.stdout.count("0 messages copied") == 2, again.stdout


def _big_inbox(d: Dovecot, count: int) -> None:
    c = source(d)
    for n in range(count):
        assert c.append("INBOX", "(\\Seen)" if n % 3 else None, None, msg(n, "big", size=20000))[0] == "OK"
    c.logout()


def _import_interrupted(dovecot: Dovecot, local: IMAPServer, total: int, at: int, interrupt: Callable[[], None],
                        *extra: str) -> tuple[subprocess.Popen[str], list[str], str, str]:
    """``import imap`` in batches of 5 as a process; ``interrupt()`` once its progress shows
    ``at`` of ``total`` INBOX messages copied; then (process, progress lines, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_CONFIG"}
    proc = subprocess.Popen([str(SCRIPT), "--config", str(local.extra["config"]), "import", "imap",
                             *plain_args(dovecot), "--batch", "5", *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(SOURCE_USERS[ALICE_OLD] + "\n")
    proc.stdin.close()
    proc.stdin = None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        m = re.search(rf"INBOX: (\d+)/{total}", line)
        if m and int(m.group(1)) >= at:
            interrupt()
            break
    out, err = proc.communicate(timeout=120)
    return proc, seen, out, err


def test_dovecot_killed_mid_import_rerun_completes_without_duplicates(dovecot: Dovecot, local: IMAPServer) -> None:
    _big_inbox(dovecot, 150)
    proc, seen, out, err = _import_interrupted(dovecot, local, 150, 30, dovecot.kill, "--retries", "0")
    assert proc.returncode == 1, (out, "".join(seen) + err)
    assert "Traceback" not in err
    partial = local.maildir().folder("INBOX").sync().messages
    assert 30 <= len(partial) < 150, len(partial)

    dovecot.start()  # the old server is back (on new ports)
    r = run_import(local, *plain_args(dovecot))
    assert f"{150 - len(partial)} messages copied" in r.stdout, r.stdout
    assert assert_same_account(dovecot, local) == 150


def test_dropped_connection_is_retried(dovecot: Dovecot, local: IMAPServer) -> None:
    _big_inbox(dovecot, 120)
    proc, seen, out, err = _import_interrupted(dovecot, local, 120, 20, lambda: dovecot.kick(ALICE_OLD))
    assert proc.returncode == 0, (out, "".join(seen) + err)
    assert "reconnecting" in err, err
    assert "120 messages copied" in out or "messages copied" in out
    assert assert_same_account(dovecot, local) == 120


def test_quota_is_honoured_and_a_non_ascii_password_logs_in(dovecot: Dovecot, local: IMAPServer) -> None:
    c = source(dovecot, "carol@old.test")
    for n in range(80):  # ~1.6 MB; bob's quota is 1 MB
        assert c.append("INBOX", None, None, msg(n, "carol", size=20000))[0] == "OK"
    c.logout()
    args = plain_args(dovecot, address="bob@example.test", login="carol@old.test")
    r = run_import(local, *args, password=SOURCE_USERS["carol@old.test"], ok=1)  # SASL PLAIN carries UTF-8
    assert "over quota" in r.stderr and len(r.stderr.strip().splitlines()) >= 1, r.stderr
    copied = len(local.maildir("bob@example.test").folder("INBOX").sync().messages)
    assert 0 < copied < 80
    used, _ = local.maildir("bob@example.test").quota_usage()
    assert used <= 1024 * 1024
    local.directory.set_quota("bob@example.test", None)
    again = run_import(local, *args, password=SOURCE_USERS["carol@old.test"])
    assert f"{80 - copied} messages copied" in again.stdout, again.stdout
    assert assert_same_account(dovecot, local, "carol@old.test", "bob@example.test") == 80
