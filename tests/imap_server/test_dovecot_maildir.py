"""A Maildir written by Dovecot (Debian's dovecot-imapd and dovecot-pop3d, run with their
own config on loopback ports) is served by mailstack with the same UIDVALIDITY, UIDs, flags,
keywords and folders, and the same POP3 UIDLs byte for byte, Dovecot's own answers being
the reference (docs/on-disk.md: either server can take over the other's mail)."""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
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

from tests.pop3.conftest import POP3Server
from tests.pop3.conftest import make_server as make_pop3_server

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


class PrivateDovecot:
    """Debian's Dovecot with its own config, IMAP and POP3 on loopback ports; restartable
    with other settings over the same Maildir root (as an admin changing dovecot.conf)."""

    def __init__(self, binary: str, top: Path) -> None:
        self.binary = binary
        self.top = top
        self.mail = top / "mailboxes"
        self.mail.mkdir()
        os.chown(self.mail, VMAIL, VMAIL)
        self.conf_dir = top / "dovecot"
        self.conf_dir.mkdir()
        (self.conf_dir / "users").write_text("alice@example.test:{PLAIN}secret::::::\n")
        self.conf = self.conf_dir / "dovecot.conf"
        self.port = self.pop3_port = 0
        self.running = False

    def start(self, extra: str = "") -> None:
        """Start Dovecot; extra: settings lines added to the config (e.g. pop3_uidl_format)."""
        assert not self.running
        conf_dir = self.conf_dir
        self.port, self.pop3_port = free_port(), free_port()
        self.conf.write_text(f"""instance_name = mailstack-test-dovecot-{self.port}
base_dir = {conf_dir}/run
state_dir = {conf_dir}/state
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {conf_dir}/dovecot.log
mail_location = maildir:{self.mail}/%d/%n
first_valid_uid = {VMAIL}
last_valid_uid = {VMAIL}
first_valid_gid = {VMAIL}
last_valid_gid = {VMAIL}
{extra}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {conf_dir}/users
}}
userdb {{
  driver = static
  args = uid={VMAIL} gid={VMAIL} home={self.mail}/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
""")
        subprocess.run([self.binary, "-c", str(self.conf)], check=True, timeout=30)
        self.running = True
        _wait_port(self.port)
        _wait_port(self.pop3_port)

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        pidfile = self.conf_dir / "run" / "master.pid"
        pid = None
        try:
            pid = int(pidfile.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            pass
        subprocess.run([self.binary, "-c", str(self.conf), "stop"], timeout=30)
        if pid is not None:
            try:
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def imap(self) -> imaplib.IMAP4:
        d = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        d.login("alice@example.test", "secret")
        return d

    def pop3(self) -> poplib.POP3:
        c = poplib.POP3("127.0.0.1", self.pop3_port, timeout=10)
        c.user("alice@example.test")
        c.pass_("secret")
        return c


@pytest.fixture
def dovecot() -> Iterator[PrivateDovecot]:
    binary = require_tool("dovecot")
    require_root("needs root to run a private Dovecot with its own uid")
    top = Path(tempfile.mkdtemp(prefix="ms-dovecot-"))
    top.chmod(0o755)
    d = PrivateDovecot(binary, top)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def dovecot_store(dovecot: PrivateDovecot) -> tuple[Path, Path, int]:
    dovecot.start()
    return dovecot.top, dovecot.mail, dovecot.port


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


def _uidls(c: poplib.POP3) -> list[bytes]:
    """The UIDL listing's lines exactly as the server sent them (poplib strips only CRLF)."""
    resp, lines, _ = c.uidl()
    assert resp.startswith(b"+OK")
    return lines


@contextlib.contextmanager
def _mailstack_pop3(tmp_path: Path, mail: Path) -> Iterator[POP3Server]:
    """mailstack's POP3 service over the Maildir root mail (stopped on exit)."""
    yield from make_pop3_server(tmp_path, storage={"maildir_root": str(mail)})


def _mailstack_uidls(tmp_path: Path, mail: Path, dele: tuple[int, ...] = ()) -> list[bytes]:
    """mailstack's POP3 over the same Maildir root: UIDL (each message alone too), then
    DELE and QUIT (UPDATE) for the numbers in dele."""
    with _mailstack_pop3(tmp_path, mail) as srv:
        c = srv.client("alice@example.test")
        listing = _uidls(c)
        for line in listing:
            assert c.uidl(int(line.split()[0])) == b"+OK " + line
        for n in dele:
            c.dele(n)
        c.quit()
    return listing


def test_pop3_uidls_are_dovecots_byte_for_byte(dovecot: PrivateDovecot, tmp_path: Path) -> None:
    """Default pop3_uidl_format: mailstack lists exactly what Dovecot's POP3 answered."""
    dovecot.start()
    d = dovecot.imap()
    for i in range(12):  # UIDs up to 12 (0xc): hex letters whatever the UIDVALIDITY is
        assert d.append("INBOX", None, None, message(f"pop {i}"))[0] == "OK"
    d.select("INBOX")
    d.uid("STORE", "3,5:9", "+FLAGS", "(\\Deleted)")
    d.expunge()
    d.logout()
    c = dovecot.pop3()
    theirs = _uidls(c)
    assert [c.uidl(n) for n in (1, 5)] == [b"+OK " + theirs[0], b"+OK " + theirs[4]]
    c.quit()
    dovecot.stop()
    assert len(theirs) == 6
    assert any(ch in b"abcdef" for line in theirs for ch in line.split()[1])  # case matters here
    assert not re.search(rb"[A-F]", b"".join(theirs))  # Dovecot's %X is lower-case
    assert _mailstack_uidls(tmp_path, dovecot.mail) == theirs


def _p_fields(uidlist: Path) -> list[str]:
    """The values of the records' P fields, in record order ("" for an empty P)."""
    out = []
    for line in uidlist.read_text().splitlines()[1:]:
        fields, _, _ = line.partition(" :")
        out += [f[1:] for f in fields.split()[1:] if f.startswith("P")]
    return out


def test_saved_pop3_uidls_served_and_kept(dovecot: PrivateDovecot, tmp_path: Path) -> None:
    """Dovecot's pop3_save_uidl = yes left `P` fields (a non-default pop3_uidl_format in its
    past): mailstack serves them byte for byte, and keeps them when it rewrites the uidlist,
    so Dovecot taking the Maildir back still answers the same."""
    uidlist = dovecot.mail / "example.test" / "alice" / "dovecot-uidlist"
    # 1. Courier v0 UIDLs (%f, the base name): Dovecot saves these as an empty P.
    dovecot.start("pop3_save_uidl = yes\npop3_uidl_format = %f\n")
    d = dovecot.imap()
    for i in range(2):
        assert d.append("INBOX", None, None, message(f"courier0 {i}"))[0] == "OK"
    d.logout()
    c = dovecot.pop3()
    first = _uidls(c)
    c.quit()
    dovecot.stop()
    # 2. Courier v2 UIDLs (%v-%u) for the next two; the first two keep theirs.
    dovecot.start("pop3_save_uidl = yes\npop3_uidl_format = %v-%u\n")
    d = dovecot.imap()
    for i in range(2):
        assert d.append("INBOX", None, None, message(f"courier2 {i}"))[0] == "OK"
    d.select("INBOX")
    validity = int(d.response("UIDVALIDITY")[1][0])
    d.logout()
    c = dovecot.pop3()
    second = _uidls(c)
    c.quit()
    dovecot.stop()
    assert second[:2] == first and second[2:] == [f"3 {validity}-3".encode(), f"4 {validity}-4".encode()]
    # 3. Back to Dovecot's defaults, one more message without a saved UIDL.
    dovecot.start()
    d = dovecot.imap()
    assert d.append("INBOX", None, None, message("default"))[0] == "OK"
    d.logout()
    c = dovecot.pop3()
    theirs = _uidls(c)
    c.quit()
    dovecot.stop()
    assert theirs[:4] == second and theirs[4] == f"5 {5:08x}{validity:08x}".encode()
    assert _p_fields(uidlist) == ["", "", f"{validity}-3", f"{validity}-4"]

    # mailstack serves the same bytes; then it rewrites the uidlist twice (UPDATE removes
    # message 5, a delivery adds UID 6).
    assert _mailstack_uidls(tmp_path, dovecot.mail, dele=(5,)) == theirs
    local = tmp_path / "second"
    local.mkdir()
    with _mailstack_pop3(local, dovecot.mail) as srv:
        srv.deliver("alice@example.test", message("mailstack"))
        c = srv.client("alice@example.test")
        ours = _uidls(c)
        c.quit()
    assert ours == theirs[:4] + [f"5 {6:08x}{validity:08x}".encode()]
    assert _p_fields(uidlist) == ["", "", f"{validity}-3", f"{validity}-4"]

    # Dovecot takes the Maildir back (files given to its user, as docs/operations.md says).
    for dirpath, _, files in os.walk(dovecot.mail):
        os.chown(dirpath, VMAIL, VMAIL)
        for f in files:
            os.chown(os.path.join(dirpath, f), VMAIL, VMAIL)
    dovecot.start()
    c = dovecot.pop3()
    assert _uidls(c) == ours
    c.quit()
