"""Outbound transport security against real peers: MTA-STS (RFC 8461) and DANE (RFC 7672).

The remote MX is the aiosmtpd sink on 127.0.0.23 (``tests.outbound.conftest``), here with
STARTTLS and a certificate from a test CA; the MTA-STS policy is served over real HTTPS
(``http.server`` + ``ssl``) at ``mta-sts.remote.test`` on 127.0.0.23; TLSA records and
the AD bit come from the loopback DNS (``tests.dnsserver``).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstack.config import Config
from mailstack.dns import TLSARecord, resolver_from_config
from mailstack.net import client_context
from mailstack.queue import QueueStore
from mailstack.smtp.queue_runner import QueueRunner
from mailstack.smtp.tlspolicy import (Requirement, StsError, StsPolicy, decide, parse_sts_policy, parse_sts_record,
                                      tlsa_matches)
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import REMOTE_IP, Remote, make_config

MSG = b"From: <alice@example.test>\r\nTo: <x@remote.test>\r\nSubject: sts\r\n\r\nHi.\r\n"
POLICY_ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmax_age: 86400\r\n"


# ---------------------------------------------------------------------------
# a test CA and its certificates


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes
    cert_der: bytes
    spki_der: bytes


class TestCA:
    __test__ = False

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailstack test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, dns_name: str, *, self_signed: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(subject if self_signed else self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
                .sign(key if self_signed else self.key, hashes.SHA256()))
        return Issued(cert.public_bytes(serialization.Encoding.PEM),
                      key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()),
                      cert.public_bytes(serialization.Encoding.DER),
                      key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))


def server_context(tmp: Path, issued: Issued, name: str) -> ssl.SSLContext:
    (tmp / f"{name}.crt").write_bytes(issued.cert_pem)
    (tmp / f"{name}.key").write_bytes(issued.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
    return ctx


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


# ---------------------------------------------------------------------------
# the policy host: real HTTPS on 127.0.0.23


class PolicyServer:
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.body: str | None = POLICY_ENFORCE
        self.content_type = "text/plain"
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests += 1
                if self.path != "/.well-known/mta-sts.txt" or owner.body is None:
                    self.send_error(404)
                    return
                data = owner.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port(REMOTE_IP)
        self.httpd = ThreadingHTTPServer((REMOTE_IP, self.port), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def policy_server(tmp_path: Path, ca: TestCA, dns: TestDNS) -> Iterator[PolicyServer]:
    server = PolicyServer(server_context(tmp_path, ca.issue("mta-sts.remote.test"), "sts"))
    dns.add("mta-sts.remote.test", "A", REMOTE_IP)
    yield server
    server.stop()


def secure_config(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, policy: PolicyServer,
                  **dns_extra: Any) -> Config:
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    return make_config(tmp_path, dns, remote.port,
                       queue={"tls_ca_file": str(tmp_path / "ca.pem"), "mta_sts_port": policy.port},
                       dns=dns_extra)


def restart_with_cert(remote: Remote, tmp: Path, issued: Issued) -> None:
    remote.stop()
    remote.start(tls_context=server_context(tmp, issued, "mx"))


def run_queue(cfg: Config, runner: QueueRunner | None = None) -> QueueRunner:
    runner = runner or QueueRunner(cfg, QueueStore(cfg.queue.dir), resolver_from_config(cfg.dns),
                                   client_tls=client_context())  # as the queue service gets it
    asyncio.run(runner.run_once())
    return runner


def due_now(store: QueueStore) -> None:
    for env_id in store.list():
        env, _ = store.load(env_id)
        store.save(QueueStore.updated(env, next_attempt=0))


def maillog(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mailstack.maillog"]


# ---------------------------------------------------------------------------
# MTA-STS end to end


def test_enforce_refuses_an_mx_with_a_bad_certificate_and_none_accepts_it(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, policy_server: PolicyServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))  # not from the CA
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=20260101")
    run_queue(cfg)
    assert remote.messages == []  # RFC 8461 §4.2: no delivery without a valid certificate
    assert len(store.list()) == 1  # kept, not bounced
    (line,) = maillog(caplog)
    assert "event=deferred" in line and "4.7.5" in line and "tls=mta-sts" in line
    assert policy_server.requests == 1
    # the same MX with no policy at all: opportunistic TLS, delivered
    dns.remove("_mta-sts.remote.test")
    due_now(store)
    caplog.clear()
    cfg2 = make_config(tmp_path, dns, remote.port, queue={"tls_ca_file": str(tmp_path / "ca.pem"),
                                                          "mta_sts_port": policy_server.port})
    run_queue(cfg2)
    assert len(remote.messages) == 1 and remote.messages[0].tls
    assert store.list() == []
    (line,) = maillog(caplog)
    assert "event=delivered" in line and "tls=opportunistic" in line


def test_mode_none_policy_delivers_to_a_bad_certificate(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA,
                                                        policy_server: PolicyServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    restart_with_cert(remote, tmp_path, ca.issue("wrong-name.test"))
    policy_server.body = "version: STSv1\nmode: none\nmax_age: 86400\n"
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=1")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert len(remote.messages) == 1
    assert "tls=opportunistic" in maillog(caplog)[0]


def test_enforce_with_a_valid_certificate_delivers_over_verified_tls(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, policy_server: PolicyServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test"))
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=a1")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert len(remote.messages) == 1 and remote.messages[0].tls
    (line,) = maillog(caplog)
    assert "event=delivered" in line and "tls=mta-sts" in line


def test_enforce_skips_an_mx_the_policy_does_not_list(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA,
                                                      policy_server: PolicyServer) -> None:
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test"))
    policy_server.body = POLICY_ENFORCE.replace("mx.remote.test", "*.elsewhere.test")
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=a2")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    store = QueueStore(cfg.queue.dir)
    qid = store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert remote.messages == []
    env, _ = store.load(qid)
    assert "MTA-STS" in str(env.extra.get("last_error"))


def test_testing_mode_reports_and_delivers(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA,
                                          policy_server: PolicyServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
    policy_server.body = POLICY_ENFORCE.replace("enforce", "testing")
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=t1")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert len(remote.messages) == 1  # RFC 8461 §5: testing never stops mail
    assert any("MTA-STS testing" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert "tls=opportunistic" in maillog(caplog)[0]


def test_a_cached_policy_outlives_its_policy_host(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA,
                                                  policy_server: PolicyServer) -> None:
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=c1")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    runner = run_queue(cfg)
    assert remote.messages == [] and policy_server.requests == 1
    # an attacker blocks the policy host and strips the TXT record: the cached policy holds
    policy_server.body = None
    dns.remove("_mta-sts.remote.test")
    due_now(store)
    run_queue(cfg, runner)
    assert remote.messages == []
    assert policy_server.requests == 1  # same id or no record: not fetched again


def test_policy_from_a_host_with_an_untrusted_certificate_is_not_used(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    other = TestCA()  # the policy host's certificate is not from the configured CA
    server = PolicyServer(server_context(tmp_path, other.issue("mta-sts.remote.test"), "sts"))
    try:
        dns.add("mta-sts.remote.test", "A", REMOTE_IP)
        dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=u1")
        restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
        cfg = secure_config(tmp_path, dns, remote, ca, server)
        QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
        run_queue(cfg)
    finally:
        server.stop()
    assert len(remote.messages) == 1  # RFC 8461 §3.3: an unauthenticated policy is no policy
    assert "tls=opportunistic" in maillog(caplog)[0]


# ---------------------------------------------------------------------------
# DANE


def test_dane_tlsa_with_the_ad_bit_is_enforced_and_without_it_ignored(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    mx_cert = ca.issue("mx.remote.test", self_signed=True)  # DANE-EE does not need a CA
    restart_with_cert(remote, tmp_path, mx_cert)
    cfg = make_config(tmp_path, dns, remote.port, dns={"trusted_resolvers": [dns.address]})
    store = QueueStore(cfg.queue.dir)
    name = f"_{remote.port}._tcp.mx.remote.test"
    good = hashlib.sha256(mx_cert.spki_der).hexdigest()
    # 1. a matching DANE-EE record, validated: delivered, tls=dane
    dns.add(name, "TLSA", f"3 1 1 {good}")
    dns.secure.add(name)
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert len(remote.messages) == 1
    assert "tls=dane" in maillog(caplog)[-1]
    # 2. a record that does not match, validated: no delivery
    dns.remove(name)
    dns.add(name, "TLSA", "3 1 1 " + "00" * 32)
    qid = store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert len(remote.messages) == 1
    assert "matches no DANE TLSA record" in str(store.load(qid)[0].extra.get("last_error"))
    assert "tls=dane" in maillog(caplog)[-1] and "event=deferred" in maillog(caplog)[-1]
    # 3. the same wrong record without the AD bit: not DNSSEC-validated, so not used
    dns.secure.clear()
    due_now(store)
    run_queue(cfg)
    assert len(remote.messages) == 2
    assert "tls=opportunistic" in maillog(caplog)[-1]


def test_ad_bit_from_an_untrusted_resolver_is_ignored(tmp_path: Path, dns: TestDNS, remote: Remote,
                                                      ca: TestCA) -> None:
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
    cfg = make_config(tmp_path, dns, remote.port, dns={"trusted_resolvers": ["127.0.0.1:1"]})
    name = f"_{remote.port}._tcp.mx.remote.test"
    dns.add(name, "TLSA", "3 1 1 " + "00" * 32)
    dns.secure.add(name)
    resolver = resolver_from_config(cfg.dns)
    answer = asyncio.run(resolver.tlsa(name))
    assert answer.records and not answer.secure
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert len(remote.messages) == 1


# ---------------------------------------------------------------------------
# the I/O-free rules


@pytest.mark.parametrize("records,expected", [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),  # other TXT records are ignored
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # RFC 8461 §3.1: two records = no policy
    (["v=STSv1; id=has-dash"], None),  # id is 1*32 alphanumerics
    (["v=STSv1;"], None),
    ([], None),
])
def test_sts_record(records: list[str], expected: str | None) -> None:
    assert parse_sts_record(records) == expected


def test_sts_policy_parse_and_mx_patterns() -> None:
    p = parse_sts_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
                         "max_age: 999999999\r\n")
    assert p.mode == "enforce" and p.max_age == 31557600  # capped, RFC 8461 §3.2
    assert p.allows("mail.example.com") and p.allows("MX1.example.net.")
    assert not p.allows("a.b.example.net") and not p.allows("example.net") and not p.allows("x.example.com")
    for bad in ("mode: enforce\nmx: a\nmax_age: 1\n", "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n", "version: STSv1\nmode: enforce\nmx: a\nmax_age: x\n",
                "garbage"):
        with pytest.raises(StsError):
            parse_sts_policy(bad)


def test_decide_table() -> None:
    ok = dict(starttls_offered=True, tls_ok=True, verified=True, host="mx")
    assert decide(Requirement.NONE, **{**ok, "starttls_offered": False, "tls_ok": False}).tls == "none"  # type: ignore[arg-type]
    assert decide(Requirement.STS_ENFORCE, **ok).deliver  # type: ignore[arg-type]
    assert not decide(Requirement.STS_ENFORCE, **{**ok, "starttls_offered": False}).deliver  # type: ignore[arg-type]
    assert not decide(Requirement.STS_ENFORCE, **ok, host_allowed=False).deliver  # type: ignore[arg-type]
    assert decide(Requirement.STS_TESTING, **{**ok, "verified": False}).deliver  # type: ignore[arg-type]
    assert not decide(Requirement.DANE, **{**ok, "verified": False}).deliver  # type: ignore[arg-type]
    assert decide(Requirement.DANE_UNAUTHENTICATED, **{**ok, "verified": False}).deliver  # type: ignore[arg-type]
    assert not decide(Requirement.DANE_UNAUTHENTICATED, **{**ok, "tls_ok": False}).deliver  # type: ignore[arg-type]


def test_tlsa_matching(ca: TestCA) -> None:
    c = ca.issue("mx.example.test")
    assert tlsa_matches([TLSARecord(3, 0, 1, hashlib.sha256(c.cert_der).digest())], c.cert_der, c.spki_der)
    assert tlsa_matches([TLSARecord(3, 1, 2, hashlib.sha512(c.spki_der).digest())], c.cert_der, c.spki_der)
    assert tlsa_matches([TLSARecord(3, 1, 0, c.spki_der)], c.cert_der, c.spki_der)
    assert not tlsa_matches([TLSARecord(2, 1, 1, hashlib.sha256(c.spki_der).digest())], c.cert_der, c.spki_der)
    assert not tlsa_matches([TLSARecord(3, 1, 1, b"\0" * 32)], c.cert_der, c.spki_der)
    assert StsPolicy("enforce", ("mx.example.test",), 1).allows("mx.example.test")


# ---------------------------------------------------------------------------
# REQUIRETLS (RFC 8689) on the sending side


class RequireTLSSink:
    """The aiosmtpd sink on 127.0.0.23, taught REQUIRETLS: offered after STARTTLS, and
    recorded when a MAIL command carries it (aiosmtpd itself refuses unknown parameters)."""

    def __init__(self, remote: Remote, ctx: ssl.SSLContext) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        seen: list[bool] = []
        self.seen = seen

        class Server(SMTP):
            def _getparams(self, params: Any) -> Any:
                result = super()._getparams(params)
                if result is not None and result.pop("REQUIRETLS", None) is not None:
                    seen.append(True)
                return result

        class Handler(type(remote.handler)):  # type: ignore[misc]
            async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                                  responses: list[str]) -> list[str]:
                session.host_name = hostname
                if session.ssl is not None:
                    responses.insert(len(responses) - 1, "250-REQUIRETLS")
                return responses

        class Ctl(Controller):
            def factory(self) -> Any:
                return Server(self.handler, **self.SMTP_kwargs)

        remote.stop()
        handler = Handler()
        remote.handler = handler
        remote.controller = Ctl(handler, hostname=remote.host, port=remote.port, ready_timeout=5,
                                server_hostname="mx.remote.test", ident="sink", tls_context=ctx)
        remote.controller.start()


def enqueue_requiretls(cfg: Config) -> tuple[QueueStore, str]:
    store = QueueStore(cfg.queue.dir)
    return store, store.enqueue("alice@example.test", ["x@remote.test"], MSG, extra={"requiretls": True})


def test_requiretls_goes_only_to_an_authenticated_mx_that_offers_it(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, policy_server: PolicyServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=r1")
    policy_server.body = POLICY_ENFORCE.replace("enforce", "testing")  # testing is enough to name the MX
    sink = RequireTLSSink(remote, server_context(tmp_path, ca.issue("mx.remote.test"), "mx"))
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    store, qid = enqueue_requiretls(cfg)
    run_queue(cfg)
    assert len(remote.messages) == 1 and remote.messages[0].tls
    assert sink.seen == [True]  # MAIL FROM:<...> REQUIRETLS went out
    assert store.list() == []
    assert "tls=mta-sts" in maillog(caplog)[-1]


def test_requiretls_bounces_when_the_mx_lacks_it_or_nothing_authenticates_it(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, policy_server: PolicyServer) -> None:
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test"))  # valid, but no REQUIRETLS offered
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=r2")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    store, qid = enqueue_requiretls(cfg)
    run_queue(cfg)
    assert remote.messages == []
    (dsn_id,) = store.list()  # the message bounced: only the DSN to alice is left
    env, data = store.load(dsn_id)
    assert env.sender == "" and b"Status: 5.7.30" in data
    store.remove(dsn_id)
    # no MTA-STS policy and no DANE: nothing vouches for the MX, so it must not go at all
    dns.remove("_mta-sts.remote.test")
    cfg2 = make_config(tmp_path, dns, remote.port, queue={"mta_sts_port": policy_server.port})
    store, qid = enqueue_requiretls(cfg2)
    run_queue(cfg2)
    assert remote.messages == []
    (dsn_id,) = store.list()
    assert b"Status: 5.7.10" in store.load(dsn_id)[1]


# ---------------------------------------------------------------------------
# TLS-RPT (RFC 8460)


def test_tls_report_is_mailed_to_the_rua_and_parses(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA,
                                                    policy_server: PolicyServer) -> None:
    import email
    import gzip
    import json

    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=rpt1")
    dns.add("_smtp._tls.remote.test", "TXT", "v=TLSRPTv1; rua=mailto:tls-reports@reports.test,https://x.test/r")
    dns.add("reports.test", "MX", "10 mx.remote.test")  # the same sink, no policy there
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    runner = run_queue(cfg)  # refused under enforce: one failed session recorded
    assert remote.messages == []
    tomorrow = datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=1)
    assert asyncio.run(runner.send_tls_reports(before=tomorrow)) == 1
    assert asyncio.run(runner.send_tls_reports(before=tomorrow)) == 0  # never twice
    for qid in store.list():
        if store.load(qid)[0].recipients != ("tls-reports@reports.test",):
            store.remove(qid)
    run_queue(cfg, runner)
    (got,) = remote.messages
    assert got.recipients == ["tls-reports@reports.test"]
    msg = email.message_from_bytes(got.data)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "remote.test" and msg["TLS-Report-Submitter"] == "mx.example.test"
    (part,) = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    report = json.loads(gzip.decompress(payload))
    (policy,) = report["policies"]
    assert policy["policy"]["policy-type"] == "sts" and policy["policy"]["policy-domain"] == "remote.test"
    assert "mode: enforce" in policy["policy"]["policy-string"]
    assert policy["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    (detail,) = policy["failure-details"]
    assert detail["result-type"] == "certificate-not-trusted"
    assert detail["receiving-mx-hostname"] == "mx.remote.test" and detail["receiving-ip"] == REMOTE_IP
    assert report["date-range"]["start-datetime"].endswith("T00:00:00Z")


@pytest.mark.parametrize("content_type,body", [
    ("text/html", POLICY_ENFORCE),  # RFC 8461 §3.2: text/plain only
    ("text/plain", POLICY_ENFORCE + "x" * (70 * 1024)),  # over MAX_POLICY_SIZE
    ("text/plain", "version: STSv1\nmode: enforce\nmax_age: 1\n"),  # no mx
    ("text/plain", None),  # 404
])
def test_an_unusable_policy_is_no_policy(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA,
                                         policy_server: PolicyServer, content_type: str, body: str | None) -> None:
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
    policy_server.content_type, policy_server.body = content_type, body
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=bad1")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    assert len(remote.messages) == 1 and policy_server.requests == 1


def test_an_unreadable_ca_file_is_a_clear_start_error(tmp_path: Path, dns: TestDNS, remote: Remote) -> None:
    from mailstack.service import ServiceError

    cfg = make_config(tmp_path, dns, remote.port, queue={"tls_ca_file": str(tmp_path / "missing.pem")})
    with pytest.raises(ServiceError, match=r"\[queue\] tls_ca_file: cannot load .*missing.pem"):
        QueueRunner(cfg, QueueStore(cfg.queue.dir), resolver_from_config(cfg.dns))


@pytest.mark.parametrize("section,value,message", [
    ("dns", {"trusted_resolvers": ["not-an-ip"]}, r"\[dns\] trusted_resolvers\[0\]"),
    ("queue", {"mta_sts_port": 0}, r"\[queue\] mta_sts_port"),
    ("queue", {"tls_reports": "yes"}, r"\[queue\] tls_reports"),
])
def test_bad_transport_security_keys_are_refused(tmp_path: Path, dns: TestDNS, section: str, value: dict[str, Any],
                                                 message: str) -> None:
    from mailstack.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, dns, 25, **{section: value})
