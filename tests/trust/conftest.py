"""Fixtures for the trust checks: a loopback DNS, a resolver on it, signing keys.

``dns`` is one ``tests.dnsserver.TestDNS`` per session, emptied before each test;
``resolver`` is a ``DNSPythonResolver`` pointed at it (short timeout, so a missing
answer fails fast). ``remote_key`` is an RSA DKIM key of ``remote.test`` (selector
``sel``), made once per session; ``publish_remote(dns)`` puts the usual records of a
well-run remote domain in the zone: SPF allowing 127.0.0.0/8, its DKIM key, and a
DMARC ``p=reject`` record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.dns import DNSPythonResolver
from mailstack.mail import dkim
from tests.dnsserver import TestDNS

REMOTE = "remote.test"


@pytest.fixture(scope="session")
def dns_server() -> Iterator[TestDNS]:
    with TestDNS() as server:
        yield server


@pytest.fixture
def dns(dns_server: TestDNS) -> Iterator[TestDNS]:
    dns_server.clear()
    yield dns_server
    dns_server.clear()


@pytest.fixture
def resolver(dns: TestDNS) -> DNSPythonResolver:
    return DNSPythonResolver([dns.address], timeout=2.0)


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dkim")


@pytest.fixture(scope="session")
def remote_key(key_dir: Path) -> dkim.DKIMKey:
    return dkim.generate_key(key_dir, REMOTE, "sel", "rsa")


@pytest.fixture(scope="session")
def remote_ed_key(key_dir: Path) -> dkim.DKIMKey:
    return dkim.generate_key(key_dir, REMOTE, "ed", "ed25519")


def publish_remote(dns: TestDNS, key: dkim.DKIMKey, policy: str = "reject") -> None:
    dns.add(REMOTE, "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    dns.add(REMOTE, "MX", f"10 mx.{REMOTE}")
    dns.add(f"mx.{REMOTE}", "A", "127.0.0.23")
    dns.add(key.record_name, "TXT", dkim.txt_record(key))
    dns.add(f"_dmarc.{REMOTE}", "TXT", f"v=DMARC1; p={policy}; rua=mailto:dmarc@{REMOTE}")


def message(from_addr: str = f"alice@{REMOTE}", to: str = "bob@example.test", extra: str = "",
            body: str = "Hello Bob.\r\n") -> bytes:
    return (
        f"From: Alice <{from_addr}>\r\nTo: {to}\r\nSubject: test\r\n"
        f"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@{REMOTE}>\r\n{extra}\r\n{body}"
    ).encode()
