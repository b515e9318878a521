"""ACME against pebble: ``mailstack cert renew`` with http-01 answered by a running serve,
``cert status --json``, the listeners serving pebble's certificate after a restart (the
SNI/reload work is not on this branch: a restart stands in for the reload), the renewal
loop of ``serve``, and a failed order that leaves the installed pair alone."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from mailstack.acme import renewal, store
from mailstack.config import ConfigError, load_config
from tests.acme.conftest import HOST, Pebble, acme_config
from tests.auth.conftest import serve_process
from tests.helpers import free_port


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailstack", "--config", str(conf), *args],
                          capture_output=True, text=True, timeout=120)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def served_issuer(port: int) -> str:
    """The issuer of the certificate a TLS client sees on 127.0.0.1:``port``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def issuer_of(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).issuer.rfc4514_string()


def test_cert_renew_with_http01_then_status_and_the_listener_serves_it(tmp_path: Path, pebble: Pebble) -> None:
    imap_tls = free_port()
    conf = acme_config(tmp_path, pebble, imap_tls)
    config = load_config(conf)
    services = {"http": pebble.http_port, "imap": imap_tls}
    proc = serve_process(conf, services, stderr=subprocess.DEVNULL)
    try:
        assert "Pebble" not in served_issuer(imap_tls)  # the self-signed pair of the first start
        # the http service answers http-01 from the store any process writes to
        token = "T0k3n_-" + "a" * 20
        store.write_challenge(config, token, f"{token}.thumbprint")
        url = f"http://127.0.0.1:{pebble.http_port}/.well-known/acme-challenge/"
        with urllib.request.urlopen(url + token, timeout=10) as r:
            assert r.read() == f"{token}.thumbprint".encode()
        store.remove_challenge(config, token)
        for missing in (token, "..%2F..%2Fetc%2Fpasswd", "short"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url + missing, timeout=10)
            assert e.value.code == 404
            e.value.close()

        done = cli(conf, "cert", "renew", "--force")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{HOST}: renewed")
        assert "Pebble" in issuer_of(config.tls.cert_file)
        # the mail host's own pair in the SNI store is the same one (the default served)
        own = renewal.certificate_path(config, HOST)
        assert own.read_bytes() == config.tls.cert_file.read_bytes()
        assert (own.parent / "key.pem").stat().st_mode & 0o777 == 0o600
        assert config.tls.key_file.stat().st_mode & 0o777 == 0o600
        assert store.account_key_path(config).stat().st_mode & 0o777 == 0o600
        assert list(store.challenge_dir(config).iterdir()) == []  # answers removed after the order

        status = cli(conf, "cert", "status", "--json")
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)
        assert [r["hostname"] for r in rows] == [HOST]
        assert "Pebble" in rows[0]["issuer"] and rows[0]["error"] is None
        assert rows[0]["days_left"] > 0
        assert datetime.fromisoformat(rows[0]["not_after"]) > datetime.now(timezone.utc)

        again = cli(conf, "cert", "renew")  # fresh: a third of the lifetime is far away
        assert again.returncode == 0 and again.stdout.startswith(f"{HOST}: not due"), again
    finally:
        stop(proc)
    proc = serve_process(conf, services, stderr=subprocess.DEVNULL)
    try:
        assert "Pebble" in served_issuer(imap_tls)
    finally:
        stop(proc)


def test_serve_replaces_the_self_signed_certificate_by_itself(tmp_path: Path, pebble: Pebble) -> None:
    imap_tls = free_port()
    conf = acme_config(tmp_path, pebble, imap_tls)
    config = load_config(conf)
    proc = serve_process(conf, {"http": pebble.http_port, "imap": imap_tls}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "Pebble" not in issuer_of(config.tls.cert_file):
            assert time.monotonic() < deadline, "serve's renewal task did not install a certificate"
            time.sleep(0.2)
        # swapped into the running listeners at once (the renewal's reload hook), no restart
        while "Pebble" not in served_issuer(imap_tls):
            assert time.monotonic() < deadline, "the renewed certificate was not served without a restart"
            time.sleep(0.2)
        assert proc.poll() is None
    finally:
        stop(proc)


def test_a_failed_order_leaves_the_installed_pair_and_says_why(tmp_path: Path, pebble: Pebble) -> None:
    imap_tls = free_port()
    conf = acme_config(tmp_path, pebble, imap_tls)
    config = load_config(conf)
    proc = serve_process(conf, {"imap": imap_tls}, stderr=subprocess.DEVNULL)  # no http: http-01 cannot pass
    try:
        before = config.tls.cert_file.read_bytes(), config.tls.key_file.read_bytes()
        done = cli(conf, "cert", "renew")
        assert done.returncode == 1
        assert done.stderr.startswith("mailstack: renewal failed, the installed certificate stays: ")
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert (config.tls.cert_file.read_bytes(), config.tls.key_file.read_bytes()) == before
        assert list(store.challenge_dir(config).iterdir()) == []
        assert "Pebble" not in served_issuer(imap_tls)  # still serving the old one
    finally:
        stop(proc)
    (tmp_path / "other").mkdir()
    unreachable = acme_config(tmp_path / "other", pebble, imap_tls, f"https://127.0.0.1:{free_port()}/dir")
    done = cli(unreachable, "cert", "renew")
    assert done.returncode == 1 and "ConnectionError" in done.stderr and "Traceback" not in done.stderr


def test_cert_renew_without_a_ca_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text('hostname = "mx.example.test"\n')
    done = cli(conf, "cert", "renew")
    assert done.returncode == 1 and "[acme] directory_url is not set" in done.stderr


def test_bad_acme_keys_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    for text, message in (('directory_url = "ftp:/x"', "[acme] directory_url"),
                          ('hostnames = ["bad host"]', "[acme] hostnames[0]"),
                          ('email = "nobody"', "[acme] email")):
        conf.write_text(f"[acme]\n{text}\n")
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(conf)


def _times(days_total: int, days_left: float, names: tuple[str, ...] = (HOST,),
           self_signed: bool = False) -> tuple[renewal.CertTimes, datetime]:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    end = now + timedelta(days=days_left)
    return renewal.CertTimes(names, end - timedelta(days=days_total), end, self_signed), now


def test_due_at_a_third_of_the_lifetime_left() -> None:
    assert renewal.due(*_times(90, 31)[:1], [HOST], _times(90, 31)[1]) is None
    cert, now = _times(90, 30)
    assert renewal.due(cert, [HOST], now) is not None  # Let's Encrypt's 90 days: at 30 left
    cert, now = _times(6, 2.5)  # short-lived certificates: at two days left of six
    assert renewal.due(cert, [HOST], now) is None
    cert, now = _times(6, 2)
    assert renewal.due(cert, [HOST], now) is not None
    cert, now = _times(90, 80, self_signed=True)
    assert renewal.due(cert, [HOST], now) == "the certificate is self-signed"
    cert, now = _times(90, 80, names=("other.example.test",))
    assert "does not name mx.example.test" in (renewal.due(cert, [HOST], now) or "")
    assert renewal.due(None, [HOST], now) == "no readable certificate"


def test_backoff_doubles_up_to_a_day() -> None:
    waits = [renewal.backoff(n) for n in range(1, 12)]
    assert waits[:4] == [600, 1200, 2400, 4800]
    assert waits[-1] == 86400 and all(a <= b for a, b in zip(waits, waits[1:]))
    assert renewal.backoff(10_000) == 86400


def test_default_hostnames_are_the_host_and_each_domains_service_names(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text('hostname = "MX.example.test"\n')
    names = renewal.hostnames(load_config(conf), ["b.test", "a.test"])
    assert names == ["mx.example.test", "mta-sts.a.test", "autoconfig.a.test", "mta-sts.b.test", "autoconfig.b.test"]


def test_a_ca_that_never_answers_does_not_hold_up_a_stop(tmp_path: Path, pebble: Pebble) -> None:
    """The renewal order runs in a daemon thread: a stop does not wait for the CA (the
    ``acme`` library's own timeout is 45 s per request)."""
    with socket.socket() as silent:  # accepts connections (backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        imap_tls = free_port()
        conf = acme_config(tmp_path, pebble, imap_tls, f"https://127.0.0.1:{silent.getsockname()[1]}/dir")
        config = load_config(conf)
        proc = serve_process(conf, {"http": pebble.http_port, "imap": imap_tls}, stderr=subprocess.DEVNULL)
        before = config.tls.cert_file.read_bytes()
        time.sleep(1)  # the renewal task is waiting for the silent CA now
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert time.monotonic() - started < 20
        assert config.tls.cert_file.read_bytes() == before
