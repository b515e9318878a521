"""tls-alpn-01 (RFC 8737): pebble validates through the https listener of a running serve
that has no plain http listener; a handshake offering ALPN ``acme-tls/1`` for a name with a
pending challenge gets the acmeIdentifier certificate, every other handshake the real one;
and the ClientHello parser behind it, on real and on broken hellos."""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from mailstack.acme import alpn, client, renewal
from mailstack.config import ConfigError, load_config
from tests.acme.conftest import HOST, MTA_STS, Pebble, acme_config
from tests.acme.test_acme import cli, stop
from tests.auth.conftest import serve_process
from tests.helpers import free_port

ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def handshake(port: int, sni: str, protocols: list[str] | None) -> tuple[x509.Certificate, str | None]:
    """The certificate served and the ALPN protocol negotiated."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if protocols:
        ctx.set_alpn_protocols(protocols)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
        chosen = tls.selected_alpn_protocol()
    assert der is not None
    return x509.load_der_x509_certificate(der), chosen


def served_everywhere(port: int, sni: str, expected: x509.Certificate, deadline: float) -> None:
    """Wait until every worker serves ``expected``: with ``[server] workers`` > 1 a
    certificate renewed on disk reaches the others at the supervisor's next check, and the
    kernel picks the worker of each connection, so several handshakes in a row must agree."""
    agreed = 0
    while agreed < 8:
        assert time.monotonic() < deadline, f"{sni}: the renewed certificate is not served everywhere"
        if handshake(port, sni, None)[0] == expected:
            agreed += 1
        else:
            agreed = 0
            time.sleep(0.2)


def https_get(port: int, path: str) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=10, context=ctx) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.close()
        return e.code


def test_pebble_validates_tls_alpn_01_on_the_https_listener(tmp_path: Path, pebble: Pebble) -> None:
    imap_tls = free_port()
    conf = acme_config(tmp_path, pebble, imap_tls, hostnames=(HOST, MTA_STS), tls_alpn=True)
    config = load_config(conf)
    assert client.challenge_types(config) == ("tls-alpn-01",)  # no [http] listen: auto picks it
    proc = serve_process(conf, {"http": pebble.tls_port, "imap": imap_tls}, stderr=subprocess.DEVNULL)
    try:
        # serve's renewal loop orders each name; pebble can only validate over tls-alpn-01
        deadline = time.monotonic() + 60
        for name in (HOST, MTA_STS):
            path = renewal.certificate_path(config, name)
            while not path.exists() or "Pebble" not in x509.load_pem_x509_certificate(
                    path.read_bytes()).issuer.rfc4514_string():
                assert time.monotonic() < deadline, f"{name}: no certificate over tls-alpn-01"
                time.sleep(0.2)
        real = x509.load_pem_x509_certificate(renewal.certificate_path(config, HOST).read_bytes())
        served_everywhere(pebble.tls_port, HOST, real, deadline + 30)  # swapped in by the renewal
        assert list(alpn.challenge_dir(config).iterdir()) == []  # challenge certificates removed

        done = cli(conf, "cert", "renew", "--force", HOST)  # the CLI answers the same way
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{HOST}: renewed")
        renewed = x509.load_pem_x509_certificate(renewal.certificate_path(config, HOST).read_bytes())
        served_everywhere(pebble.tls_port, HOST, renewed, time.monotonic() + 40)

        # a challenge pending for HOST: only a handshake offering acme-tls/1 sees it
        alpn.write(config, HOST, "tok3n.thumbpr1nt")
        cert, chosen = handshake(pebble.tls_port, HOST, ["acme-tls/1"])
        assert chosen == "acme-tls/1"
        ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
        assert ext.critical
        assert isinstance(ext.value, x509.UnrecognizedExtension)
        assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok3n.thumbpr1nt").digest()
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.DNSName) == [HOST]

        served_real = handshake(pebble.tls_port, HOST, None)[0]
        assert served_real == renewed and "Pebble" in served_real.issuer.rfc4514_string()
        with pytest.raises(x509.ExtensionNotFound):
            served_real.extensions.get_extension_for_oid(ACME_IDENTIFIER)
        assert handshake(pebble.tls_port, HOST, ["h2", "http/1.1"]) == (served_real, None)
        # acme-tls/1 for a name without a pending challenge: the real certificate, no acme-tls/1
        sts, chosen = handshake(pebble.tls_port, MTA_STS, ["acme-tls/1"])
        assert chosen is None and "Pebble" in sts.issuer.rfc4514_string()
        assert https_get(pebble.tls_port, "/.well-known/acme-challenge/none-such-token-here") == 404  # HTTPS as usual
        # the other TLS listeners never answer a challenge
        assert handshake(imap_tls, HOST, ["acme-tls/1"])[1] is None
        alpn.remove(config, HOST)
        assert handshake(pebble.tls_port, HOST, ["acme-tls/1"]) == (served_real, None)
        assert proc.poll() is None
    finally:
        stop(proc)


def _client_hello(protocols: list[str] | None, sni: str = HOST) -> bytes:
    """A real ClientHello handshake message, as OpenSSL's client writes it."""
    ctx = ssl.create_default_context()
    if protocols:
        ctx.set_alpn_protocols(protocols)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    record = outgoing.read()
    assert record[0] == 22  # a handshake record; its body is the ClientHello message
    return record[5:5 + int.from_bytes(record[3:5], "big")]


def test_offered_alpn_reads_real_hellos_and_survives_broken_ones() -> None:
    hello = _client_hello(["acme-tls/1"])
    assert alpn.offered_alpn(hello) == ("acme-tls/1",)
    assert alpn.offered_alpn(_client_hello(["h2", "http/1.1"])) == ("h2", "http/1.1")
    assert alpn.offered_alpn(_client_hello(None)) == ()
    rng = random.Random(8737)
    for cut in range(len(hello)):
        assert alpn.offered_alpn(hello[:cut]) in ((), ("acme-tls/1",))  # truncated: never raises
    for _ in range(2000):
        broken = bytearray(hello)
        for _ in range(rng.randint(1, 8)):
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        assert isinstance(alpn.offered_alpn(bytes(broken)), tuple)
    assert alpn.offered_alpn(b"") == () and alpn.offered_alpn(b"\x02" + hello[1:]) == ()


def test_challenge_certificates_are_0600_and_stay_inside_their_folder(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text('hostname = "mx.example.test"\n')
    config = load_config(conf)
    alpn.write(config, "MX.Example.Test.", "a.b")
    path = alpn.challenge_dir(config) / "mx.example.test.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    for bad in ("../../etc/passwd", "a/b", ""):
        with pytest.raises(ValueError):
            alpn.write(config, bad, "a.b")
        alpn.remove(config, bad)  # nothing to remove, nothing raised
    assert [p.name for p in alpn.challenge_dir(config).iterdir()] == ["mx.example.test.pem"]
    answer = alpn.Answerer(config)
    assert answer("../mx.example.test", _client_hello(["acme-tls/1"])) is None
    assert answer("mx.example.test", _client_hello(["http/1.1"])) is None
    assert answer("mx.example.test", _client_hello(["acme-tls/1"])) is not None


def test_the_challenge_key_is_checked(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text('hostname = "mx.example.test"\n[acme]\nchallenge = "dns-01"\n')
    with pytest.raises(ConfigError, match=r"\[acme\] challenge: 'dns-01' is not one of"):
        load_config(conf)
    conf.write_text('hostname = "mx.example.test"\n[http]\nlisten = []\n')
    with pytest.raises(client.ACMEError, match="no \\[http\\] listen or tls_listen"):
        client.challenge_types(load_config(conf))
    conf.write_text('hostname = "mx.example.test"\n[http]\nlisten = ["127.0.0.1:8080"]\ntls_listen = ["127.0.0.1:8443"]\n')
    assert client.challenge_types(load_config(conf)) == ("http-01", "tls-alpn-01")
    conf.write_text('hostname = "mx.example.test"\n[acme]\nchallenge = "tls-alpn-01"\n')
    assert client.challenge_types(load_config(conf)) == ("tls-alpn-01",)
