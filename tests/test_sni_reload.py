"""SNI (one certificate per hostname) and reload without dropping anyone (SIGHUP).

Real TLS clients (Python ssl with server_hostname, smtplib STARTTLS) read the certificate
the server presents; a real ``mailstack serve`` process gets SIGHUP with an IMAP IDLE
session open across it.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from mailstack import net
from mailstack.config import ListenAddress, TLSConfig
from tests.helpers import free_port, wait_listening
from tests.test_serve import ROOT, Server

HOST = "mx.example.test"


def tls_config(tmp_path: Path) -> TLSConfig:
    return TLSConfig(cert_file=tmp_path / "tls" / "cert.pem", key_file=tmp_path / "tls" / "key.pem")


def pair(name: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of a fresh self-signed certificate whose CN is ``name``."""
    key, cert = net._self_signed(name)
    return cert, key


def presented(port: int, server_name: str | None, tls12: bool = False) -> str:
    """The CN of the certificate a TLS client asking for ``server_name`` is shown."""
    client = net.client_context()
    if tls12:
        client.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client.wrap_socket(raw, server_hostname=server_name) as s:
            return cn(s.getpeercert(binary_form=True))


def cn(der: bytes | None) -> str:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def _listen(ctxs: net.TLSContexts, port: int) -> asyncio.Server:
    return await net.start_listener(ListenAddress("tcp", "127.0.0.1", port), asyncio.Protocol, ssl=ctxs.server)


# ---------------------------------------------------------------------------
# the store and SNI, in process


def test_sni_chooses_the_certificate_of_the_name_and_the_mail_host_by_default(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, HOST)
    net.install_certificate(tls, "mta-sts.example.test", *pair("mta-sts.example.test"))
    net.install_certificate(tls, "Autoconfig.Example.Test.", *pair("autoconfig.example.test"))
    ctxs = net.load_tls_contexts(tls, HOST)
    port = free_port()

    async def main() -> None:
        server = await _listen(ctxs, port)
        try:
            for tls12 in (False, True):
                assert await asyncio.to_thread(presented, port, "mta-sts.example.test", tls12) == "mta-sts.example.test"
                assert await asyncio.to_thread(presented, port, "AUTOCONFIG.example.test", tls12) == "autoconfig.example.test"
                assert await asyncio.to_thread(presented, port, "unknown.example.test", tls12) == HOST
                assert await asyncio.to_thread(presented, port, None, tls12) == HOST
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_the_mail_hosts_pair_in_the_store_becomes_the_default_and_reload_swaps_it(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, HOST)
    ctxs = net.load_tls_contexts(tls, HOST)
    port = free_port()

    async def main() -> None:
        server = await _listen(ctxs, port)
        try:
            def open_session() -> ssl.SSLSocket:
                held = socket.create_connection(("127.0.0.1", port), timeout=10)
                return net.client_context().wrap_socket(held, server_hostname=HOST)

            old_session = await asyncio.to_thread(open_session)
            assert cn(old_session.getpeercert(binary_form=True)) == HOST
            net.install_certificate(tls, HOST, *pair("renewed.example.test"))
            # installed, not yet reloaded: new connections still get the old one
            assert await asyncio.to_thread(presented, port, None) == HOST
            ctxs.reload(tls, HOST)
            assert await asyncio.to_thread(presented, port, None) == "renewed.example.test"
            assert await asyncio.to_thread(presented, port, HOST) == "renewed.example.test"
            # the listener is the same one: it holds the holder, not a context
            assert cn(old_session.getpeercert(binary_form=True)) == HOST
            old_session.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_install_certificate_writes_a_private_key_and_refuses_bad_input(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    folder = net.install_certificate(tls, "autoconfig.example.test", *pair("autoconfig.example.test"))
    assert folder == net.certificate_dir(tls) / "autoconfig.example.test"
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    cert_a, _ = pair("a.example.test")
    _, key_b = pair("b.example.test")
    for name, cert, key in (("../escape", *pair("x")), ("*.example.test", *pair("x")),
                            ("b.example.test", cert_a, key_b), ("c.example.test", b"junk", b"junk")):
        with pytest.raises(net.TLSError) as e:
            net.install_certificate(tls, name, cert, key)
        assert "\n" not in str(e.value)
    assert sorted(p.name for p in net.certificate_dir(tls).iterdir()) == ["autoconfig.example.test"]
    assert not (tmp_path / "escape").exists()


def test_reload_keeps_a_pair_it_cannot_read_and_refuses_a_broken_default(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, HOST)
    folder = net.install_certificate(tls, "mta-sts.example.test", *pair("mta-sts.example.test"))
    ctxs = net.load_tls_contexts(tls, HOST)
    kept = ctxs.certificates.by_name["mta-sts.example.test"]
    # a renewal caught halfway: a new key next to the old certificate
    (folder / "key.pem").write_bytes(pair("other")[1])
    ctxs.reload(tls, HOST)
    assert ctxs.certificates.by_name["mta-sts.example.test"] is kept
    assert "certificate for mta-sts.example.test not loaded" in caplog.text
    before = ctxs.certificates
    tls.cert_file.write_text("not a certificate\n")
    with pytest.raises(net.TLSError):
        ctxs.reload(tls, HOST)
    assert ctxs.certificates is before


# ---------------------------------------------------------------------------
# a real `mailstack serve` and SIGHUP


def cli(config: Path, *args: str, stdin: str = "") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")} | {"PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config), *args], input=stdin,
                   text=True, check=True, capture_output=True, cwd=ROOT, env=env, timeout=60)


def write_config(tmp_path: Path, imap: int, imaps: int, submission: int) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    path = etc / "mailstack.toml"
    path.write_text(f"""hostname = "{HOST}"
[database]
url = "sqlite:///../var/mailstack.db"
[storage]
maildir_root = "../mailboxes"
[tls]
cert_file = "../var/tls/cert.pem"
key_file = "../var/tls/key.pem"
[queue]
dir = "../var/queue"
[smtp]
listen = []
[submission]
listen = ["127.0.0.1:{submission}"]
tls_listen = []
[lmtp]
listen = ["unix:../var/lmtp.sock"]
[imap]
listen = ["127.0.0.1:{imap}"]
tls_listen = ["127.0.0.1:{imaps}"]
[pop3]
listen = []
tls_listen = []
[http]
listen = []
""")
    return path


class LineClient:
    """A plain IMAP client over a socket, line by line (IDLE needs to wait for a line)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        assert self.line().startswith(b"* OK")

    def line(self) -> bytes:
        data = self.file.readline()
        assert data, "connection closed"
        return data

    def untagged_until(self, wanted: bytes) -> None:
        """Read untagged responses (``* 1 RECENT``...) until ``wanted``; the socket timeout bounds it."""
        while (got := self.line().strip()) != wanted:
            assert got.startswith(b"* "), got

    def command(self, tag: str, text: str) -> list[bytes]:
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        lines: list[bytes] = []
        while not (lines and lines[-1].startswith(tag.encode() + b" ")):
            lines.append(self.line())
        assert lines[-1].startswith(f"{tag} OK".encode()), lines
        return lines


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, Path, dict[str, int]]]:
    ports = {"imap": free_port(), "imaps": free_port(), "submission": free_port()}
    config = write_config(tmp_path, **ports)
    cli(config, "domain", "add", "example.test")
    cli(config, "user", "add", "alice@example.test", "--password-stdin", stdin="s3cret pw\n")
    tls = TLSConfig(cert_file=tmp_path / "var/tls/cert.pem", key_file=tmp_path / "var/tls/key.pem")
    net.ensure_certificate(tls, HOST)
    net.install_certificate(tls, "localhost", *pair("localhost"))
    server = Server(tmp_path, config, ["imap", "lmtp", "submission"], env={"MAILSTACK_EXTRA_SERVICES": ""})
    try:
        server.wait_for("READY=1")
        wait_listening(ports["imaps"], None)
        yield server, config, ports
    finally:
        server.close()


def deliver(tmp_path: Path, subject: str) -> None:
    with smtplib.LMTP(str(tmp_path / "var/lmtp.sock")) as lmtp:
        lmtp.sendmail("bob@elsewhere.test", ["alice@example.test"],
                      f"From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n")


def starttls_cn(port: int) -> str:
    """SMTP STARTTLS from smtplib to "localhost": it sends SNI "localhost"."""
    with smtplib.SMTP("localhost", port, timeout=20) as smtp:
        smtp.starttls(context=net.client_context())
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        return cn(sock.getpeercert(binary_form=True))


def imap_starttls_cn(port: int) -> str:
    """IMAP STARTTLS from imaplib to "localhost" (RFC 3501 §6.2.1): SNI "localhost"."""
    with imaplib.IMAP4("localhost", port, timeout=20) as imap:
        imap.starttls(ssl_context=net.client_context())
        assert isinstance(imap.sock, ssl.SSLSocket)
        return cn(imap.sock.getpeercert(binary_form=True))


def test_sighup_renews_certificates_with_an_idle_session_open_across_it(
        tmp_path: Path, served: tuple[Server, Path, dict[str, int]]) -> None:
    server, config, ports = served
    tls = TLSConfig(cert_file=tmp_path / "var/tls/cert.pem", key_file=tmp_path / "var/tls/key.pem")
    assert presented(ports["imaps"], None) == HOST
    assert presented(ports["imaps"], "localhost") == "localhost"
    assert starttls_cn(ports["submission"]) == "localhost"
    assert imap_starttls_cn(ports["imap"]) == "localhost"

    idler = LineClient(ports["imap"])
    idler.command("a", 'LOGIN alice@example.test "s3cret pw"')
    idler.command("b", "SELECT INBOX")
    idler.sock.sendall(b"c IDLE\r\n")
    assert idler.line().startswith(b"+")

    # a renewal (what ACME does), then `systemctl reload`
    net.install_certificate(tls, HOST, *pair("renewed.example.test"))
    net.install_certificate(tls, "localhost", *pair("renewed-localhost"))
    server.signal(signal.SIGHUP)
    server.wait_for("RELOADING=1")
    server.wait_for("READY=1")

    assert presented(ports["imaps"], None) == "renewed.example.test"
    assert presented(ports["imaps"], "localhost") == "renewed-localhost"
    assert starttls_cn(ports["submission"]) == "renewed-localhost"
    assert imap_starttls_cn(ports["imap"]) == "renewed-localhost"

    deliver(tmp_path, "after the reload")
    idler.untagged_until(b"* 1 EXISTS")

    # a config that does not load: refused, the server keeps answering, the idler too
    good = config.read_text()
    config.write_text(good.replace("[imap]\n", "[imap]\nno_such_key = 1\n"))
    net.install_certificate(tls, HOST, *pair("third.example.test"))
    server.signal(signal.SIGHUP)
    server.wait_for("RELOADING=1")
    server.wait_for("READY=1")
    assert presented(ports["imaps"], None) == "renewed.example.test"  # nothing of it applied
    other = LineClient(ports["imap"])
    other.command("a", "LOGOUT")
    other.sock.close()
    deliver(tmp_path, "after the refused reload")
    idler.untagged_until(b"* 2 EXISTS")
    idler.sock.sendall(b"DONE\r\n")
    while (got := idler.line()).startswith(b"* "):
        pass
    assert got.startswith(b"c OK"), got
    idler.sock.close()

    # a good config again, with a change that waits for a restart: said so, certs applied
    config.write_text(good.replace("[imap]\n", "[imap]\nidle_timeout = 900\n"))
    server.signal(signal.SIGHUP)
    server.wait_for("RELOADING=1")
    server.wait_for("READY=1")
    assert presented(ports["imaps"], None) == "third.example.test"

    server.signal(signal.SIGTERM)
    assert server.finish() == 0
    refused = [ln for ln in server.stderr.splitlines() if "reload refused" in ln]
    assert len(refused) == 1 and "ERROR" in refused[0] and "no_such_key" in refused[0], server.stderr
    assert "Traceback" not in server.stderr
    assert "changed [imap] apply at the next restart" in server.stderr
