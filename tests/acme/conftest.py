"""Fixtures for ACME: Let's Encrypt's test CA pebble (the Debian package) resolving through
the tests' loopback DNS, validating http-01 on our ``http`` service's test port and
tls-alpn-01 on its https test port."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.auth.conftest import serve_config
from tests.dnsserver import TestDNS
from tests.helpers import free_port, require_tool, wait_listening

HOST = "mx.example.test"
MTA_STS = "mta-sts.example.test"  # a second certified name, with its own certificate


@dataclass(frozen=True)
class Pebble:
    directory_url: str
    ca_file: Path  # the CA of pebble's own HTTPS API
    http_port: int  # where pebble checks http-01: our http service listens there
    tls_port: int  # where pebble checks tls-alpn-01: our http service's tls_listen


def _api_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and, signed by it, pebble's API certificate for 127.0.0.1."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ACME API CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "api-ca.pem", folder / "api-cert.pem", folder / "api-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def dns() -> Iterator[TestDNS]:
    with TestDNS() as d:
        d.add(HOST, "A", "127.0.0.1")
        d.add(MTA_STS, "A", "127.0.0.1")
        yield d


@pytest.fixture
def pebble(tmp_path: Path, dns: TestDNS) -> Iterator[Pebble]:
    exe = require_tool("pebble")
    ca_file, cert, key = _api_certificate(tmp_path / "pebble")
    api, mgmt, http_port, tls_port = free_port(), free_port(), free_port(), free_port()
    conf = tmp_path / "pebble" / "pebble.json"
    conf.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{api}", "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(cert), "privateKey": str(key), "httpPort": http_port, "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    with (tmp_path / "pebble.log").open("ab") as log:
        proc = subprocess.Popen([exe, "-config", str(conf), "-dnsserver", dns.address], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(api, proc)
        yield Pebble(f"https://127.0.0.1:{api}/dir", ca_file, http_port, tls_port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def acme_config(tmp_path: Path, pebble: Pebble, imap_tls_port: int, directory_url: str | None = None,
                hostnames: tuple[str, ...] = (HOST,), tls_alpn: bool = False) -> Path:
    """serve_config's file with ``[http]`` on pebble's http-01 port (``tls_alpn``: only an
    https listener, on pebble's tls-alpn-01 port), IMAP on implicit TLS and ``[acme]``
    pointing at pebble (or ``directory_url``), certifying ``hostnames``."""
    conf = serve_config(tmp_path, {})
    http = (f'listen = []\ntls_listen = ["127.0.0.1:{pebble.tls_port}"]\n' if tls_alpn
            else f'listen = ["127.0.0.1:{pebble.http_port}"]\n')
    names = ", ".join(f'"{h}"' for h in hostnames)
    with conf.open("a") as f:
        f.write(f'[http]\n{http}'
                f'[imap]\nlisten = []\ntls_listen = ["127.0.0.1:{imap_tls_port}"]\n'
                f'[acme]\ndirectory_url = "{directory_url or pebble.directory_url}"\n'
                f'email = "postmaster@example.test"\nhostnames = [{names}]\nca_file = "{pebble.ca_file}"\n')
    return conf
