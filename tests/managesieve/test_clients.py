"""Real ManageSieve clients against the real service: sievelib's ``managesieve.Client``
(Python) and Debian's ``sieve-connect`` (Perl), over STARTTLS; and a script uploaded this
way is the one delivery runs (LMTP, the real MDA)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sievelib.managesieve import Client

from mailstack import net
from mailstack.managesieve.server import start
from tests.helpers import free_port, require_tool, running_service
from tests.managesieve.conftest import PASSWORD, USERS, SieveServer
from tests.smtp.conftest import MXServer
from tests.smtp.conftest import make_server as make_mx

ALICE = USERS[0]
FILTER = 'require ["fileinto", "mailbox"];\r\nif header :contains "subject" "invoice" {\r\n  fileinto :create "Bills";\r\n}\r\n'


@pytest.fixture
def client(sieve: SieveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    # sievelib verifies the server against the default CAs: make ours the default
    monkeypatch.setenv("SSL_CERT_FILE", str(sieve.config.tls.cert_file))
    c = Client("127.0.0.1", sieve.port)
    assert c.connect(ALICE, PASSWORD, starttls=True, authmech="PLAIN")
    yield c
    c.logout()
    c.sock.close()


def test_sievelib_round_trip(sieve: SieveServer, client: Client) -> None:
    assert client.get_implementation() == "mailstack"
    assert {"fileinto", "regex", "vacation", "imap4flags"} <= set(client.get_sieve_capabilities())
    assert client.havespace("main", len(FILTER))
    assert client.putscript("main", FILTER)
    assert client.checkscript("keep;")
    assert not client.checkscript('require "fileinto";\n\nfrobnicate;')
    assert client.errmsg.startswith(b"line 3: error:")
    assert not client.putscript("broken", "keep")
    assert client.errmsg.startswith(b"line 1: error:")
    assert client.setactive("main")
    assert client.listscripts() == ("main", [])
    assert client.getscript("main").splitlines() == FILTER.splitlines()  # sievelib rejoins lines with LF
    assert (sieve.home(ALICE) / "sieve" / "main.sieve").read_bytes() == FILTER.encode()
    assert client.renamescript("main", "filters")
    assert client.listscripts() == ("filters", [])
    assert os.readlink(sieve.home(ALICE) / ".dovecot.sieve") == "sieve/filters.sieve"
    assert not client.deletescript("filters")
    assert client.errcode == b"ACTIVE"
    assert client.setactive("")
    assert client.deletescript("filters")
    assert not client.getscript("filters")
    assert client.errcode == b"NONEXISTENT"
    assert client.listscripts() == (None, [])


def test_sievelib_refuses_nothing_it_should_not(sieve: SieveServer, client: Client) -> None:
    assert not client.putscript("../escape", "keep;")
    assert not (sieve.config.storage.maildir_root / "example.test" / "escape.sieve").exists()
    assert not client.havespace("big", 2 * 1024 * 1024)
    assert client.errcode == b"QUOTA/MAXSIZE"


def _sieve_connect(server: SieveServer, *args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("sieve-connect")
    r, w = os.pipe()
    os.write(w, PASSWORD.encode() + b"\n")
    os.close(w)
    try:
        return subprocess.run(
            [tool, "--server", "127.0.0.1", "--port", str(server.port), "--user", ALICE,
             "--passwordfd", str(r), "--tlscafile", str(server.config.tls.cert_file),
             "--tlshostname", "mx.example.test", *args],
            pass_fds=(r,), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        os.close(r)


def test_sieve_connect(sieve: SieveServer, tmp_path: Path) -> None:
    local = tmp_path / "filter.sieve"
    local.write_text(FILTER.replace("\r\n", "\n"))
    up = _sieve_connect(sieve, "--upload", "--localsieve", str(local), "--remotesieve", "filter")
    assert up.returncode == 0, up.stderr
    assert (sieve.home(ALICE) / "sieve" / "filter.sieve").read_bytes() == local.read_bytes()
    act = _sieve_connect(sieve, "--activate", "--remotesieve", "filter")
    assert act.returncode == 0, act.stderr
    listed = _sieve_connect(sieve, "--list")
    assert listed.returncode == 0 and '"filter" ACTIVE' in listed.stdout.replace("  ", " "), listed.stdout
    back = tmp_path / "back.sieve"
    down = _sieve_connect(sieve, "--download", "--remotesieve", "filter", "--localsieve", str(back))
    assert down.returncode == 0 and back.read_text().replace("\r\n", "\n") == local.read_text()
    bad = tmp_path / "bad.sieve"
    bad.write_text('require "regex";\nif header :regex "subject" "(" { discard; }\n')
    refused = _sieve_connect(sieve, "--upload", "--localsieve", str(bad), "--remotesieve", "bad")
    assert refused.returncode != 0 and "line 2" in refused.stdout + refused.stderr
    assert not (sieve.home(ALICE) / "sieve" / "bad.sieve").exists()
    deact = _sieve_connect(sieve, "--deactivate")
    assert deact.returncode == 0 and not os.path.lexists(sieve.home(ALICE) / ".dovecot.sieve")


@pytest.fixture
def mx_with_managesieve(tmp_path: Path) -> Iterator[tuple[MXServer, Any, int]]:
    port = free_port()
    mx = make_mx(tmp_path, sieve={"managesieve_listen": [f"127.0.0.1:{port}"]})
    try:
        with running_service(start, mx.config, mx.directory, net.ConnectionLimits(100, 50)) as (_loop, service):
            yield mx, service, port
    finally:
        mx.close()


def test_script_set_active_over_managesieve_files_the_next_delivery(
        mx_with_managesieve: tuple[MXServer, Any, int], monkeypatch: pytest.MonkeyPatch) -> None:
    mx, _service, port = mx_with_managesieve
    monkeypatch.setenv("SSL_CERT_FILE", str(mx.config.tls.cert_file))
    c = Client("127.0.0.1", port)
    assert c.connect("alice@example.test", "secret", starttls=True, authmech="PLAIN")
    try:
        assert c.putscript("main", FILTER) and c.setactive("main")
    finally:
        c.logout()
        c.sock.close()
    msg = b"From: s@example.org\r\nTo: alice@example.test\r\nSubject: Invoice 7\r\n\r\nPay.\r\n"
    with mx.lmtp_client() as lmtp:
        assert lmtp.sendmail("s@example.org", ["alice@example.test"], msg) == {}
    assert mx.messages("alice") == []
    assert [b"Subject: Invoice 7" in m for m in mx.messages("alice", "Bills")] == [True]
