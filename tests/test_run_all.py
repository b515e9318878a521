"""``benchmarks/run_all.py --quick`` runs every benchmark for real (tiny sizes) and prints
the whole table: every row label of the issue's table, each with a figure of ours, and
the header line with the date and the reference's state. The figures themselves are not
checked (a smoke run on a busy machine measures nothing)."""

from __future__ import annotations

import contextlib
import imaplib
import importlib
import poplib
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

ROWS = [
    "SMTP in, 5 KB fsynced, 1 session (msg/s)",
    "SMTP in, 5 KB fsynced, 20 sessions (msg/s)",
    "IMAP sessions, 1 client (ops/s)",
    "IMAP sessions, 4 clients (ops/s)",
    "IMAP sessions, 16 clients (ops/s)",
    "IMAP STORE+SEARCH, 1 client (ops/s)",
    "IMAP STORE+SEARCH, 4 clients (ops/s)",
    "IMAP STORE+SEARCH, 16 clients (ops/s)",
    "POP3 sessions, 1 client (ops/s)",
    "POP3 sessions, 4 clients (ops/s)",
    "POP3 sessions, 16 clients (ops/s)",
    "submission -> queue -> remote MX with DKIM, 1 conn (msg/s)",
    "submission -> queue -> remote MX with DKIM, 8 conns (msg/s)",
    "memory per IDLE connection at 12 conns (KB PSS, lower is better)",
    "imaptest stress, 20 clients 30 s (logins)",
    "IMAP sessions, argon2id users, 4 clients (ops/s)",
    "POP3 sessions, argon2id users, 4 clients (ops/s)",
]


def _run_all() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("run_all")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize(("conf", "mode"), [
    # what the reference scripts write with DOVECOT_LOGIN_PERF=1 ...
    ("service imap-login {\n  service_count = 0\n  process_min_avail = 2\n}\nservice pop3-login {\n"
     "  service_count = 0\n}\n", "performance"),
    # ... and without it (stock: one login process per connection)
    ("# stock login mode: service_count = 1 (one login process per connection)\nprotocols = imap pop3\n", "stock"),
    ("service imap-login {\n  service_count = 1\n}\n", "stock"),
    ("service imap-login {\n  # service_count = 0\n  process_min_avail = 2\n}\n", "stock"),  # commented out
    ("service pop3-login {\n  service_count = 0\n}\n", "stock"),  # IMAP's login service decides the row
])
def test_reference_login_mode_is_read_from_dovecots_config(conf: str, mode: str) -> None:
    assert _run_all().login_mode(conf) == mode


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_prints_every_row() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--no-reference",
                           "--idle", "12"], cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC \(--quick\)\. Reference: not running", out, re.M), out
    # the servers ran as deployed, the product's default worker count, and the header says how many
    assert re.search(r"^Measured .* mailstack: `mailstack serve` with \[server\] workers = 0 "
                     r"\(one per CPU core: \d+ workers?\)\.$", out, re.M), out
    assert "| measurement | mailstack | reference | ratio |" in out
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| (.+?) \| (.+?) \| .+? \| .+? \|$", out, re.M)}
    missing = [r for r in ROWS if r not in table]
    assert missing == [], out
    # every row has a figure of ours, or says which tool is missing: none failed
    failed = {r: table[r] for r in ROWS if not re.match(r"^-?[\d,.]+( |$)|^n/a: ", table[r])}
    assert failed == {}, proc.stderr[-3000:]


def _mail_loads() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("mail_loads")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _hashes(db: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        return c.execute("SELECT * FROM users ORDER BY 1").fetchall()


@pytest.mark.timeout(300)
def test_mailbox_server_is_mailstack_serve_with_workers(tmp_path: Path) -> None:
    """The IMAP/POP3 loads measure ``mailstack serve`` as deployed: a supervisor and its
    workers, figures of the whole tree; the cheap hashes of the fast rows verify without
    a rehash (no database write per login)."""
    ml = _mail_loads()
    ml.prepare(tmp_path, 1, 1, 500)
    before = _hashes(tmp_path / "mailstack.db")
    with ml.MailServer(tmp_path, workers=2) as srv:
        tree = ml.tree_pids(srv.pid)
        assert len(tree) == 3, tree  # the supervisor and 2 workers
        assert b"serve" in Path(f"/proc/{srv.pid}/cmdline").read_bytes().split(b"\0")
        assert ml.tree_pss_kb(srv.pid) > ml.tree_pss_kb(tree[-1])  # the tree, not one process
        for _ in range(3):
            with imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30) as c:
                c.login("user1@example.test", "pass")
            p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=30)
            p.user("user1@example.test")
            p.pass_("pass")
            p.quit()
    assert _hashes(tmp_path / "mailstack.db") == before


@pytest.mark.timeout(300)
def test_mailbox_server_connection_cap_is_raised_only_when_asked(tmp_path: Path) -> None:
    """``max_connections`` sets ``[imap] max_connections`` (the IDLE row needs more than the
    default 1000); shown here with a cap of 2: the third connection is refused."""
    ml = _mail_loads()
    ml.prepare(tmp_path, 1, 1, 500)
    with ml.MailServer(tmp_path, workers=1, max_connections=2) as srv:
        conns = [socket.create_connection(("127.0.0.1", srv.imap_port), timeout=30) for _ in range(3)]
        try:
            greetings = [c.makefile("rb").readline() for c in conns]
        finally:
            for c in conns:
                c.close()
    assert [g.startswith(b"* OK") for g in greetings] == [True, True, False], greetings
    assert b"BYE" in greetings[2]
