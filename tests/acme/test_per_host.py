"""One ACME certificate per host name: an order each, installed in the SNI store under its
name (the mail host's also as the ``[tls]`` default), served by SNI on every TLS listener,
listed by ``cert status``, renewed per host (``cert renew HOST``), and a host that fails
never blocks the others or takes their certificates away. Against pebble."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509

from mailstack.acme import renewal
from mailstack.config import load_config
from tests.acme.conftest import HOST, MTA_STS, Pebble, acme_config
from tests.acme.test_acme import cli, stop
from tests.auth.conftest import serve_process
from tests.helpers import free_port

GONE = "gone.example.test"  # certified, but no DNS record: every validation of it fails


def served(port: int, sni: str) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in san.get_values_for_type(x509.DNSName)]


def pem_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def wait_served(port: int, sni: str, want: x509.Certificate, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while served(port, sni) != want:
        assert proc.poll() is None
        assert time.monotonic() < deadline, f"{sni}: its own certificate is not served"
        time.sleep(0.2)


def test_each_host_gets_its_own_certificate_served_by_sni(tmp_path: Path, pebble: Pebble) -> None:
    imap_tls = free_port()
    conf = acme_config(tmp_path, pebble, imap_tls, hostnames=(HOST, MTA_STS))
    config = load_config(conf)
    proc = serve_process(conf, {"http": pebble.http_port, "imap": imap_tls}, stderr=subprocess.DEVNULL)
    try:
        done = cli(conf, "cert", "renew", "--force")
        assert done.returncode == 0, done.stderr
        # (serve's own renewal loop may have ordered first: then the reason is "forced")
        assert [line.split(" (")[0] for line in done.stdout.splitlines()] == [f"{HOST}: renewed", f"{MTA_STS}: renewed"]
        mx, sts = pem_cert(renewal.certificate_path(config, HOST)), pem_cert(renewal.certificate_path(config, MTA_STS))
        assert dns_names(mx) == [HOST] and dns_names(sts) == [MTA_STS]  # one order, one name each
        assert "Pebble" in mx.issuer.rfc4514_string() and "Pebble" in sts.issuer.rfc4514_string()
        assert pem_cert(config.tls.cert_file) == mx  # the mail host's is the default pair too
        for name in (HOST, MTA_STS):
            assert (renewal.certificate_path(config, name).parent / "key.pem").stat().st_mode & 0o777 == 0o600

        proc.send_signal(signal.SIGHUP)  # the CLI's new pairs: served after a reload
        wait_served(imap_tls, MTA_STS, sts, proc)
        wait_served(imap_tls, HOST, mx, proc)
        assert served(imap_tls, "other.example.test") == mx  # an unknown name: the default

        status = cli(conf, "cert", "status", "--json")
        assert status.returncode == 0, status.stderr
        rows = {r["hostname"]: r for r in json.loads(status.stdout)}
        assert list(rows) == [HOST, MTA_STS]
        for name, cert in ((HOST, mx), (MTA_STS, sts)):
            assert rows[name]["error"] is None and "Pebble" in rows[name]["issuer"]
            assert rows[name]["not_after"] == cert.not_valid_after_utc.isoformat()

        only = cli(conf, "cert", "renew", "--force", MTA_STS)  # one host: the other is not touched
        assert only.returncode == 0, only.stderr
        assert only.stdout.splitlines() == [f"{MTA_STS}: renewed (forced)"]
        assert pem_cert(renewal.certificate_path(config, HOST)) == mx
        assert pem_cert(renewal.certificate_path(config, MTA_STS)) != sts

        unknown = cli(conf, "cert", "renew", "nothere.example.test")
        assert unknown.returncode == 1 and "nothere.example.test: not certified here" in unknown.stderr
        assert "Traceback" not in unknown.stderr
    finally:
        stop(proc)


def test_a_failing_host_never_blocks_the_others_nor_loses_its_certificate(tmp_path: Path, pebble: Pebble) -> None:
    imap_tls = free_port()
    conf = acme_config(tmp_path, pebble, imap_tls, hostnames=(GONE, HOST, MTA_STS))
    config = load_config(conf)
    proc = serve_process(conf, {"http": pebble.http_port, "imap": imap_tls}, stderr=subprocess.DEVNULL)
    try:
        # serve's own renewal loop: the failing host comes first, the others are still served
        deadline = time.monotonic() + 60
        for name in (HOST, MTA_STS):
            path = renewal.certificate_path(config, name)
            while not path.exists() or "Pebble" not in pem_cert(path).issuer.rfc4514_string():
                assert time.monotonic() < deadline, f"{name} was not certified while {GONE} fails"
                time.sleep(0.2)
            wait_served(imap_tls, name, pem_cert(path), proc)  # swapped in by the renewal's reload
        assert not renewal.certificate_path(config, GONE).exists()

        # a pair of the failing host is kept when its renewal fails
        gone_dir = renewal.certificate_path(config, GONE).parent
        gone_dir.mkdir(parents=True)
        mx_dir = renewal.certificate_path(config, HOST).parent
        for f in ("cert.pem", "key.pem"):
            (gone_dir / f).write_bytes((mx_dir / f).read_bytes())  # names HOST only: due for GONE
        before = (gone_dir / "cert.pem").read_bytes(), (gone_dir / "key.pem").read_bytes()
        done = cli(conf, "cert", "renew")
        assert done.returncode == 1
        assert done.stdout.splitlines() == [f"{HOST}: not due, good for more than a third of its lifetime "
                                            "(--force to renew)", f"{MTA_STS}: not due, good for more than "
                                            "a third of its lifetime (--force to renew)"]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr
        assert lines[0].startswith(f"mailstack: renewal failed, the installed certificate stays: {GONE}: ")
        assert ((gone_dir / "cert.pem").read_bytes(), (gone_dir / "key.pem").read_bytes()) == before
        assert proc.poll() is None
    finally:
        stop(proc)


def test_the_schedule_backs_off_per_host() -> None:
    s = renewal.Schedule()
    hosts = ["a.test", "b.test"]
    assert s.due_hosts(hosts, 0.0) == hosts  # never seen: now
    assert s.failed("a.test", 0.0) == renewal.BACKOFF_FIRST
    s.succeeded("b.test", 0.0)
    assert s.due_hosts(hosts, 1.0) == []
    assert s.sleep(hosts, 1.0) == renewal.BACKOFF_FIRST - 1.0  # the failed host's retry comes first
    assert s.due_hosts(hosts, renewal.BACKOFF_FIRST) == ["a.test"]
    assert s.failed("a.test", renewal.BACKOFF_FIRST) == renewal.backoff(2)  # doubling, a.test alone
    assert s.failures == {"a.test": 2}
    assert s.next_at["b.test"] == renewal.CHECK_INTERVAL  # b.test keeps its daily check
    s.succeeded("a.test", 5000.0)
    assert s.failures == {} and s.next_at["a.test"] == 5000.0 + renewal.CHECK_INTERVAL
    assert s.sleep(["new.test"], 10.0) == 1.0  # a name just added is checked at once
