"""A Maildir written by Dovecot (Debian's dovecot-imapd, run with its own config on a
loopback port) is served by mailstack with the same UIDVALIDITY, UIDs, flags, keywords
and folders (docs/on-disk.md: either server can take over the other's mail)."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, require_tool, require_root

from .conftest import make_server, message

VMAIL = 31000  # Dovecot refuses to store mail as root: a bare uid, as reference-up.sh does


def _wait_port(port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"dovecot did not listen on {port}")


def _uid_flags(c: imaplib.IMAP4) -> list[tuple[int, set[str]]]:
    out = []
    for line in c.uid("FETCH", "1:*", "(FLAGS)")[1]:
        assert isinstance(line, bytes)
        uid = int(re.search(rb"UID (\d+)", line).group(1))  # type: ignore[union-attr]
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).decode().split())  # type: ignore[union-attr]
        out.append((uid, flags - {"\\Recent"}))
    return sorted(out)


@pytest.fixture
def dovecot_store() -> Iterator[tuple[Path, Path, int]]:
    binary = require_tool("dovecot")
    require_root("needs root to run a private Dovecot with its own uid")
    top = Path(tempfile.mkdtemp(prefix="ms-dovecot-"))
    top.chmod(0o755)
    mail = top / "mailboxes"
    mail.mkdir()
    os.chown(mail, VMAIL, VMAIL)
    conf_dir = top / "dovecot"
    conf_dir.mkdir()
    (conf_dir / "users").write_text("alice@example.test:{PLAIN}secret::::::\n")
    port = free_port()
    conf = conf_dir / "dovecot.conf"
    conf.write_text(f"""instance_name = mailstack-test-dovecot-{port}
base_dir = {conf_dir}/run
state_dir = {conf_dir}/state
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {conf_dir}/dovecot.log
mail_location = maildir:{mail}/%d/%n
first_valid_uid = {VMAIL}
last_valid_uid = {VMAIL}
first_valid_gid = {VMAIL}
last_valid_gid = {VMAIL}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {conf_dir}/users
}}
userdb {{
  driver = static
  args = uid={VMAIL} gid={VMAIL} home={mail}/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
    subprocess.run([binary, "-c", str(conf)], check=True, timeout=30)
    pidfile = conf_dir / "run" / "master.pid"
    try:
        _wait_port(port)
        yield top, mail, port
    finally:
        subprocess.run([binary, "-c", str(conf), "stop"], timeout=30)
        if pidfile.exists():
            try:
                pid = int(pidfile.read_text().split()[0])
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(top, ignore_errors=True)


def test_dovecot_maildir_keeps_uidvalidity_uids_flags(dovecot_store: tuple[Path, Path, int], tmp_path: Path) -> None:
    top, mail, port = dovecot_store
    d = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    d.login("alice@example.test", "secret")
    for i in range(4):
        assert d.append("INBOX", "(\\Seen)" if i % 2 else None, None, message(f"dovecot {i}"))[0] == "OK"
    assert d.create("Work.Deep")[0] == "OK"
    assert d.append("Work.Deep", "(\\Flagged $Important)", None, message("deep"))[0] == "OK"
    d.select("INBOX")
    d.uid("STORE", "2", "+FLAGS", "(\\Answered $Forwarded)")
    d.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
    d.expunge()  # UID 3 gone: UIDs now have a hole, as real mailboxes do
    d.select("INBOX")
    validity = d.response("UIDVALIDITY")[1]
    before = _uid_flags(d)
    d.select("Work.Deep")
    deep_validity = d.response("UIDVALIDITY")[1]
    deep_before = _uid_flags(d)
    d.logout()
    assert [u for u, _ in before] == [1, 2, 4]

    gen = make_server(tmp_path, storage={"maildir_root": str(mail)})
    imap = next(gen)
    try:
        c = imap.client()
        c.select("INBOX")
        assert c.response("UIDVALIDITY")[1] == validity
        assert _uid_flags(c) == before
        assert c.uid("FETCH", "4", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1] == b"Subject: dovecot 3\r\n\r\n"
        c.select("Work.Deep")
        assert c.response("UIDVALIDITY")[1] == deep_validity
        assert _uid_flags(c) == deep_before
        assert "$Important" in deep_before[0][1]
        # our own APPEND continues Dovecot's UID sequence
        typ, data = c.append("INBOX", None, None, message("mailstack"))
        assert typ == "OK" and c.response("APPENDUID")[1] == [validity[0] + b" 5"]
        c.logout()
    finally:
        gen.close()
