"""TLS-RPT (RFC 8460) beyond the mailed report: ``https:`` destinations, and policies that
could not be had reported as failures (RFC 8460 §4.3.2).

Real peers: the MTA-STS policy host and the report collector are ``http.server`` over
TLS on 127.0.0.23 with certificates from a test CA (``[queue] tls_ca_file``), found
through the loopback DNS; the MX is the aiosmtpd sink of ``tests.outbound.conftest``.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mailstack.queue import QueueStore
from mailstack.smtp.queue_runner import QueueRunner
from mailstack.smtp.tlsrpt import Attempt, build_report
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import REMOTE_IP, Remote, make_config
from tests.outbound.test_transport_security import (MSG, PolicyServer, TestCA, ca,  # noqa: F401 - fixtures
                                                    policy_server, restart_with_cert, run_queue, secure_config,
                                                    server_context)

TOMORROW = datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=1)
TODAY = datetime.datetime.now(datetime.timezone.utc).date().isoformat()


class Collector:
    """An https report collector: records each POST (path, Content-Type, body)."""

    def __init__(self, ctx: Any, status: int = 200) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        self.status = status
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.posts.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

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
def collector(tmp_path: Path, ca: TestCA, dns: TestDNS) -> Iterator[Collector]:  # noqa: F811
    c = Collector(server_context(tmp_path, ca.issue("reports.test"), "collector"))
    dns.add("reports.test", "A", REMOTE_IP)
    yield c
    c.stop()


def recorded(runner: QueueRunner) -> list[Attempt]:
    assert runner.tls_results is not None
    return runner.tls_results.lines(TODAY)


def test_report_is_posted_to_an_https_rua(tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA,  # noqa: F811
                                          policy_server: PolicyServer, collector: Collector) -> None:  # noqa: F811
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test"))
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=h1")
    dns.add("_smtp._tls.remote.test", "TXT", f"v=TLSRPTv1; rua=https://reports.test:{collector.port}/tlsrpt")
    cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    runner = run_queue(cfg)
    assert len(remote.messages) == 1  # one successful session under enforce
    assert asyncio.run(runner.send_tls_reports(before=TOMORROW)) == 1
    ((path, ctype, body),) = collector.posts
    assert path == "/tlsrpt" and ctype == "application/tlsrpt+gzip"  # RFC 8460 §3
    report = json.loads(gzip.decompress(body))
    (policy,) = report["policies"]
    assert policy["policy"]["policy-domain"] == "remote.test" and policy["policy"]["policy-type"] == "sts"
    assert policy["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}
    assert QueueStore(cfg.queue.dir).list() == []  # nothing mailed
    assert asyncio.run(runner.send_tls_reports(before=TOMORROW)) == 0  # never twice


def test_an_https_rua_with_an_untrusted_certificate_gets_nothing(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, policy_server: PolicyServer,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    other = Collector(server_context(tmp_path, TestCA().issue("reports.test"), "other"))
    try:
        dns.add("reports.test", "A", REMOTE_IP)
        restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test"))
        dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=h2")
        dns.add("_smtp._tls.remote.test", "TXT", f"v=TLSRPTv1; rua=https://reports.test:{other.port}/r")
        cfg = secure_config(tmp_path, dns, remote, ca, policy_server)
        QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
        runner = run_queue(cfg)
        assert asyncio.run(runner.send_tls_reports(before=TOMORROW)) == 0
    finally:
        other.stop()
    assert other.posts == []  # the handshake failed before any data went out
    assert any("tlsrpt: report for remote.test" in r.getMessage() and "failed" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("setup,expected", [
    ("404", "sts-policy-fetch-error"),
    ("garbage", "sts-policy-invalid"),
    ("text/html", "sts-policy-invalid"),
    ("untrusted", "sts-webpki-invalid"),
])
def test_a_policy_that_cannot_be_had_is_reported_as_a_failure(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, setup: str, expected: str) -> None:  # noqa: F811
    issuer = TestCA() if setup == "untrusted" else ca
    server = PolicyServer(server_context(tmp_path, issuer.issue("mta-sts.remote.test"), "sts"))
    try:
        server.body = {"404": None, "garbage": "this is no policy\n"}.get(setup, server.body)
        if setup == "text/html":
            server.content_type = "text/html"
        dns.add("mta-sts.remote.test", "A", REMOTE_IP)
        dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=f1")
        cfg = secure_config(tmp_path, dns, remote, ca, server)
        QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
        runner = run_queue(cfg)
    finally:
        server.stop()
    assert len(remote.messages) == 1  # RFC 8461 §3.2, §3.3: no usable policy is no policy
    (attempt,) = recorded(runner)
    assert attempt.domain == "remote.test" and attempt.policy_type == "sts" and attempt.result == expected
    report = build_report("remote.test", recorded(runner), org="o", contact="c",
                          day=datetime.date.today(), report_id="r")
    (policy,) = report["policies"]
    assert "policy-string" not in policy["policy"]
    (detail,) = policy["failure-details"]
    assert detail["result-type"] == expected and "receiving-ip" not in detail
    assert detail["failure-reason-code"]


def test_dane_tlsa_invalid_and_dnssec_invalid_are_reported(tmp_path: Path, dns: TestDNS, remote: Remote,
                                                           ca: TestCA) -> None:  # noqa: F811
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
    cfg = make_config(tmp_path, dns, remote.port, dns={"trusted_resolvers": [dns.address]})
    name = f"_{remote.port}._tcp.mx.remote.test"
    # a validated RRset with only records unusable for SMTP (PKIX-EE, RFC 7672 §3.1.3)
    dns.add(name, "TLSA", "1 1 1 " + "00" * 32)
    dns.secure.add(name)
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    runner = run_queue(cfg)
    assert len(remote.messages) == 1  # RFC 7672 §2.2: TLS, unauthenticated, still delivers
    (attempt,) = recorded(runner)
    assert (attempt.policy_type, attempt.result, attempt.mx_host) == ("tlsa", "tlsa-invalid", "mx.remote.test")
    # the validating resolver fails the TLSA lookup (as for a bogus signature)
    dns.servfail.add(name)
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg, runner)
    assert [a.result for a in recorded(runner)] == ["tlsa-invalid", "dnssec-invalid"]


def test_a_failed_tlsa_lookup_skips_a_secure_mx_only(tmp_path: Path, dns: TestDNS, remote: Remote,
                                                     ca: TestCA) -> None:  # noqa: F811
    """RFC 7672 §2.2: when the validating resolver fails the TLSA lookup of an MX host whose
    address records are DNSSEC-validated, that host is skipped (someone may be hiding its
    records); for a host not known secure the failure counts as no TLSA."""
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))
    cfg = make_config(tmp_path, dns, remote.port, dns={"trusted_resolvers": [dns.address]})
    dns.servfail.add(f"_{remote.port}._tcp.mx.remote.test")
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    runner = run_queue(cfg)
    assert len(remote.messages) == 1 and store.list() == []  # unsigned host: delivered
    dns.secure.add("mx.remote.test")  # now its A record comes with the AD bit
    store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg, runner)
    assert len(remote.messages) == 1  # skipped, not sent in the clear or unauthenticated
    (queued,) = store.list()
    env = store.envelope(queued)
    assert env.attempts == 1 and "4.7.5" in json.dumps(env.extra) + str(env.reason)
