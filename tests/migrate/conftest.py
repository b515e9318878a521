"""Fixtures for `mailstack import`: a private Dovecot (Debian's, its own config on loopback
ports, mail in a temp Maildir) as the old server, and a mailstack config in a temp folder.

Dovecot is populated over IMAP only (APPEND with flags, keywords and INTERNALDATE), as a
real old server would have been by its users' clients.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, require_root, require_tool, wait_listening

VMAIL = 31000  # Dovecot refuses to store mail as root: a bare uid, as tests/imap_server does
SOURCE_USERS = {"alice@old.test": "alice-old-pw", "bob@old.test": "bob-old-pw", "carol@old.test": "carol ümlaut"}
MASTER = ("migrator", "master-secret")


class Dovecot:
    """A private Dovecot: plain IMAP on `port`, implicit TLS on `tls_port` (self-signed
    `cert`), users from SOURCE_USERS, a master user MASTER (SASL PLAIN with an authzid)."""

    def __init__(self, binary: str, top: Path) -> None:
        self.binary = binary
        self.top = top
        self.mail = top / "mail"
        self.mail.mkdir()
        os.chown(self.mail, VMAIL, VMAIL)
        self.conf_dir = top / "dovecot"
        self.conf_dir.mkdir()
        self.conf = self.conf_dir / "dovecot.conf"
        self.cert = self.conf_dir / "cert.pem"
        self.key = self.conf_dir / "key.pem"
        _self_signed(self.cert, self.key)
        (self.conf_dir / "users").write_text(
            "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in SOURCE_USERS.items()))
        (self.conf_dir / "masters").write_text(f"{MASTER[0]}:{{PLAIN}}{MASTER[1]}\n")
        self.port = self.tls_port = 0
        self.running = False

    def start(self) -> None:
        assert not self.running
        c = self.conf_dir
        self.port, self.tls_port = free_port(), free_port()
        while self.tls_port == self.port:
            self.tls_port = free_port()
        self.conf.write_text(f"""instance_name = mailstack-import-dovecot-{self.port}
base_dir = {c}/run
state_dir = {c}/state
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {c}/dovecot.log
mail_location = maildir:{self.mail}/%d/%n
first_valid_uid = {VMAIL}
last_valid_uid = {VMAIL}
first_valid_gid = {VMAIL}
last_valid_gid = {VMAIL}
passdb {{
  driver = passwd-file
  master = yes
  args = scheme=PLAIN {c}/masters
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {c}/users
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
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
""")
        subprocess.run([self.binary, "-c", str(self.conf)], check=True, timeout=30)
        self.running = True
        wait_listening(self.port)
        wait_listening(self.tls_port)

    def _master_pid(self) -> int | None:
        try:
            return int((self.conf_dir / "run" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        pid = self._master_pid()
        subprocess.run([self.binary, "-c", str(self.conf), "stop"], timeout=30, capture_output=True)
        if pid is not None:
            try:
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Dovecot dies at once, master and children (as on a crash or a pulled cable)."""
        pid = self._master_pid()
        self.running = False
        if pid is None:
            return
        for victim in [pid, *_descendants(pid)]:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # a killed master may linger as a zombie of whoever adopted it: Dovecot would take
        # it for a running one on the next start
        (self.conf_dir / "run" / "master.pid").unlink(missing_ok=True)

    def kick(self, user: str) -> None:
        """Drop the user's IMAP connections (doveadm kick), Dovecot keeps running."""
        subprocess.run(["doveadm", "-c", str(self.conf), "kick", user], capture_output=True, timeout=30)


def _self_signed(cert: Path, key: Path) -> None:
    """A certificate for localhost and 127.0.0.1 (the old server's; the importer trusts it
    with --ca-file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (read from /proc), so a kill names each by its id."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    binary = require_tool("dovecot")
    require_tool("doveadm")
    require_root("needs root to run a private Dovecot with its own uid")
    top = Path(tempfile.mkdtemp(prefix="ms-import-dovecot-"))
    top.chmod(0o755)
    d = Dovecot(binary, top)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(top, ignore_errors=True)
