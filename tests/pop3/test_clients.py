"""End to end with real POP3 clients: fetchmail and getmail6 against the real server.

Both clients run over plain POP3 from loopback, over STLS on the plain port and over
implicit TLS, with the server's self-signed certificate given to them as the CA.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_tool

from .conftest import PASSWORD, POP3Server

ALICE = "alice@example.test"
pytestmark = pytest.mark.slow


def msg(i: int) -> bytes:
    return b"From: x@example.org\nSubject: message %d\nMessage-ID: <m%d@example.org>\n\nbody %d\n.dot\n" % (i, i, i)


def fill(srv: POP3Server, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        srv.deliver(ALICE, msg(i))


def inbox_count(srv: POP3Server) -> int:
    return len(srv.maildir(ALICE).folder("INBOX").sync().messages)


# -- fetchmail --------------------------------------------------------------------


def run_fetchmail(
    srv: POP3Server, work: Path, options: str, *, tls: str = "plain", uidl: bool = True
) -> tuple[int, str, int]:
    """(exit status, output, messages delivered so far to the mbox) of one fetchmail run."""
    exe = require_tool("fetchmail")
    work.mkdir(exist_ok=True)
    out = work / "mbox"
    out.touch()
    port = srv.tls_port if tls == "implicit" else srv.port
    ssl_opts = "sslproto ''"  # fetchmail would otherwise upgrade to STLS on its own
    if tls == "implicit":
        ssl_opts = f'ssl sslcertck sslcertfile "{srv.cert_file}"'
    elif tls == "stls":
        ssl_opts = f'sslproto "TLS1.2+" sslcertck sslcertfile "{srv.cert_file}"'
    rc = work / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll localhost with proto POP3 port {port} {'uidl' if uidl else ''} timeout 20\n"
        f'  user "{ALICE}" there with password "{PASSWORD}" is "{os.environ.get("USER", "root")}" here\n'
        f"  options {options} {ssl_opts}\n"
        f"  mda \"/bin/sh -c 'cat >> {out}; echo ==END== >> {out}'\"\n"
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(work), "FETCHMAILHOME": str(work)}
    p = subprocess.run(
        [exe, "-f", str(rc), "-i", str(work / "fetchids"), "-v", "--nosyslog"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    return p.returncode, p.stdout + p.stderr, out.read_text().count("==END==")


@pytest.mark.parametrize("tls", ["plain", "stls", "implicit"])
def test_fetchmail_keep_twice_fetches_nothing_new(pop3: POP3Server, tmp_path: Path, tls: str) -> None:
    fill(pop3, 3)
    status, log, got = run_fetchmail(pop3, tmp_path / "fm", "keep", tls=tls)
    assert status == 0, log
    assert got == 3, log
    status, log, got = run_fetchmail(pop3, tmp_path / "fm", "keep", tls=tls)
    assert status == 1, log  # 1 = no new mail
    assert got == 3, log
    assert inbox_count(pop3) == 3
    fill(pop3, 1, start=3)  # only the new one comes next time
    status, log, got = run_fetchmail(pop3, tmp_path / "fm", "keep", tls=tls)
    assert status == 0 and got == 4, log
    if tls != "plain":
        assert "TLS" in log or "SSL" in log, log
    mbox = (tmp_path / "fm" / "mbox").read_text()
    assert mbox.count("\n.dot\n") == 4  # dot-stuffing undone by the client


def test_fetchmail_download_and_delete(pop3: POP3Server, tmp_path: Path) -> None:
    fill(pop3, 5)
    status, log, got = run_fetchmail(pop3, tmp_path / "fm", "nokeep fetchall", uidl=False)
    assert status == 0 and got == 5, log
    assert inbox_count(pop3) == 0


# -- getmail6 ---------------------------------------------------------------------


def run_getmail(srv: POP3Server, work: Path, *, delete: bool, tls: bool = False) -> tuple[int, str, int]:
    exe = require_tool("getmail")
    work.mkdir(exist_ok=True)
    dest = work / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    if tls:
        retriever = (
            "type = SimplePOP3SSLRetriever\n"
            f"server = 127.0.0.1\nport = {srv.tls_port}\n"
            f"ca_certs = {srv.cert_file}\nssl_cert_hostname = localhost\n"
        )
    else:
        retriever = f"type = SimplePOP3Retriever\nserver = 127.0.0.1\nport = {srv.port}\n"
    rc = work / "getmailrc"
    rc.write_text(
        "[retriever]\n" + retriever + f"username = {ALICE}\npassword = {PASSWORD}\n\n"
        # MDA_external rather than Maildir: getmail refuses Maildir delivery as root
        "[destination]\ntype = MDA_external\npath = /bin/sh\n"
        f"arguments = (\"-c\", \"cat > {dest}/new/msg.$$\")\nallow_root_commands = true\n\n"
        f"[options]\nread_all = false\ndelete = {'true' if delete else 'false'}\nverbose = 2\n"
    )
    p = subprocess.run(
        [exe, "--getmaildir", str(work), "--rcfile", str(rc)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(work)},
    )
    return p.returncode, p.stdout + p.stderr, len(os.listdir(dest / "new")) + len(os.listdir(dest / "cur"))


@pytest.mark.parametrize("tls", [False, True])
def test_getmail_leave_on_server(pop3: POP3Server, tmp_path: Path, tls: bool) -> None:
    fill(pop3, 3)
    status, log, got = run_getmail(pop3, tmp_path / "gm", delete=False, tls=tls)
    assert status == 0 and got == 3, log
    status, log, got = run_getmail(pop3, tmp_path / "gm", delete=False, tls=tls)
    assert status == 0 and got == 3, log  # nothing downloaded twice
    assert inbox_count(pop3) == 3
    fill(pop3, 2, start=3)
    status, log, got = run_getmail(pop3, tmp_path / "gm", delete=False, tls=tls)
    assert status == 0 and got == 5, log
    data = sorted((tmp_path / "gm" / "Maildir" / "new").iterdir())[0].read_bytes()
    assert b"\n.dot\n" in data and b"\r\n" not in data


def test_getmail_delete(pop3: POP3Server, tmp_path: Path) -> None:
    fill(pop3, 4)
    status, log, got = run_getmail(pop3, tmp_path / "gm", delete=True)
    assert status == 0 and got == 4, log
    assert inbox_count(pop3) == 0
