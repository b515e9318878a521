"""The shipped fail2ban filter (config/fail2ban/) against lines a real server wrote.

``mailstack serve imap pop3 submission`` runs as its own process with its stderr in a
file, as a log file or the journal holds it; failed logins come from known loopback
addresses over all three protocols, one of them with a user name crafted to look like
another client's log line, plus right logins. Debian's ``fail2ban-regex`` then reads the
file with our filter: it must find exactly the failing addresses, as many times as they
failed, and never the address named inside the crafted user name.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mailstack.directory import Directory, Passwords
from tests.auth.conftest import ALICE, BOB, PASSWORD, imap_login, outcome, pop3_login, smtp_auth
from tests.helpers import free_port, require_tool

FILTER = Path(__file__).resolve().parents[2] / "config" / "fail2ban" / "filter.d" / "mailstack.conf"
JAIL = FILTER.parents[1] / "jail.d" / "mailstack.conf"
CRAFTED = "x client=203.0.113.66 from=- to=- size=- status=auth_failed"


def _serve(tmp_path: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"imap": free_port(), "pop3": free_port(), "submission": free_port()}
    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "mailstack.toml"
    conf.write_text(f"""hostname = "mx.example.test"
[database]
url = "sqlite:///../var/mailstack.db"
[storage]
maildir_root = "../mailboxes"
[tls]
cert_file = "../var/tls/cert.pem"
key_file = "../var/tls/key.pem"
[queue]
dir = "../var/queue"
[auth]
max_failures = 100
[imap]
listen = ["127.0.0.1:{ports['imap']}"]
[pop3]
listen = ["127.0.0.1:{ports['pop3']}"]
[submission]
listen = ["127.0.0.1:{ports['submission']}"]
""")
    d = Directory(f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}", passwords=Passwords.fast())
    d.migrate()
    d.add_domain("example.test")
    d.add_user(ALICE, PASSWORD)
    d.add_user(BOB, PASSWORD)
    d.close()
    env = {**os.environ, "MAILSTACK_STOP_GRACE": "1"}
    env.pop("JOURNAL_STREAM", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(conf), "serve",
                                 "imap", "pop3", "submission"], env=env, stdout=subprocess.DEVNULL, stderr=out)
    for port in ports.values():
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
    return proc, ports


def test_filter_bans_exactly_the_failing_clients(tmp_path: Path) -> None:
    fail2ban_regex = require_tool("fail2ban-regex")
    log = tmp_path / "mailstack.log"
    proc, ports = _serve(tmp_path, log)
    try:
        attempts = [  # (protocol, client address, user, password, expected outcome)
            ("imap", "127.0.0.21", ALICE, "wrong", "failed"),
            ("imap", "127.0.0.21", "nobody@example.test", "wrong", "failed"),
            ("pop3", "127.0.0.21", BOB, "wrong", "failed"),
            ("submission", "127.0.0.22", ALICE, "wrong", "failed"),
            ("pop3", "127.0.0.23", CRAFTED, "wrong", "failed"),
            ("imap", "127.0.0.24", ALICE, PASSWORD, "ok"),
            ("submission", "127.0.0.24", BOB, PASSWORD, "ok"),
            ("pop3", "127.0.0.24", ALICE, PASSWORD, "ok"),
        ]
        login = {"imap": imap_login, "pop3": pop3_login, "submission": smtp_auth}
        for service, source, user, password, expected in attempts:
            reply = asyncio.run(login[service](ports[service], source, user, password))
            assert outcome(service, reply) == expected, (service, user, reply)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.count("event=auth ") == len(attempts), text

    result = subprocess.run([fail2ban_regex, "-o", "ip", str(log), str(FILTER)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    banned = Counter(line.strip() for line in result.stdout.splitlines() if line.strip())
    assert banned == {"127.0.0.21": 3, "127.0.0.22": 1, "127.0.0.23": 1}, result.stdout


def test_jail_names_the_filter_and_every_mail_port() -> None:
    jail = configparser.ConfigParser()
    jail.read(JAIL)
    assert jail["mailstack"]["filter"] == "mailstack" and jail.getboolean("mailstack", "enabled")
    ports = set(jail["mailstack"]["port"].split(","))
    assert {"smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s"} <= ports
