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
import signal
import subprocess
from collections import Counter
from pathlib import Path

from tests.auth.conftest import (ALICE, BOB, PASSWORD, imap_login, outcome, pop3_login, serve_config, serve_process,
                                 smtp_auth)
from tests.helpers import free_port, require_tool

FILTER = Path(__file__).resolve().parents[2] / "config" / "fail2ban" / "filter.d" / "mailstack.conf"
JAIL = FILTER.parents[1] / "jail.d" / "mailstack.conf"
CRAFTED = "x client=203.0.113.66 from=- to=- size=- status=auth_failed"


def test_filter_bans_exactly_the_failing_clients(tmp_path: Path) -> None:
    fail2ban_regex = require_tool("fail2ban-regex")
    log = tmp_path / "mailstack.log"
    ports = {"imap": free_port(), "pop3": free_port(), "submission": free_port()}
    conf = serve_config(tmp_path, ports, {"max_failures": 100})
    with log.open("wb") as out:
        proc = serve_process(conf, ports, stderr=out)
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
