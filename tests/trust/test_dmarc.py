"""DMARC (RFC 7489): record parsing, organisational domain, alignment, discovery."""

from __future__ import annotations

import asyncio

import pytest

from mailstack.dns import DNSPythonResolver
from mailstack.mail.dmarc import AuthenticatedId, DMARCRecord, aligned, evaluate, org_domain, parse_record
from tests.dnsserver import TestDNS


@pytest.mark.parametrize(("domain", "org"), [
    ("example.com", "example.com"),
    ("mail.example.com", "example.com"),
    ("a.b.example.co.uk", "example.co.uk"),
    ("mail.remote.test", "remote.test"),      # unknown TLD: one-label public suffix
    ("com", "com"),
    ("Mail.Example.COM.", "example.com"),
])
def test_org_domain(domain: str, org: str) -> None:
    assert org_domain(domain) == org


@pytest.mark.parametrize(("a", "b", "mode", "ok"), [
    ("example.com", "example.com", "s", True),
    ("mail.example.com", "example.com", "r", True),   # §3.1.1 relaxed
    ("mail.example.com", "example.com", "s", False),  # strict
    ("example.org", "example.com", "r", False),
    ("a.example.co.uk", "b.example.co.uk", "r", True),
    ("x.co.uk", "y.co.uk", "r", False),
])
def test_alignment(a: str, b: str, mode: str, ok: bool) -> None:
    assert aligned(a, b, mode) is ok


@pytest.mark.parametrize(("text", "record"), [
    ("v=DMARC1; p=reject", DMARCRecord("reject")),
    ("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=50", DMARCRecord("quarantine", "none", "s", "s", 50)),
    ("v=DMARC1; p=bogus; rua=mailto:x@y", DMARCRecord("none")),  # §6.6.3: bad p with rua = none
    ("v=DMARC1; p=bogus", None),
    ("v=DMARC1", None),
    ("p=reject; v=DMARC1", None),  # v must come first
    ("v=DMARC2; p=reject", None),
    ("v=DMARC1; p=REJECT; pct=500", DMARCRecord("reject", pct=100)),
])
def test_parse_record(text: str, record: DMARCRecord | None) -> None:
    assert parse_record(text) == record


def ev(resolver: DNSPythonResolver, domain: str, *passed: AuthenticatedId, sample: float = 0.0) -> object:
    return asyncio.run(evaluate(resolver, domain, list(passed), sample=lambda: sample))


def test_pass_by_dkim_relaxed(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=reject")
    r = ev(resolver, "remote.test", AuthenticatedId("dkim", "mail.remote.test"))
    assert (r.result, r.policy) == ("pass", "reject")  # type: ignore[attr-defined]


def test_strict_dkim_does_not_align_subdomain(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=reject; adkim=s")
    r = ev(resolver, "remote.test", AuthenticatedId("dkim", "mail.remote.test"))
    assert (r.result, r.disposition) == ("fail", "reject")  # type: ignore[attr-defined]


def test_pass_by_spf(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=reject")
    assert ev(resolver, "remote.test", AuthenticatedId("spf", "bounces.remote.test")).result == "pass"  # type: ignore[attr-defined]


def test_unaligned_pass_fails(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=quarantine")
    r = ev(resolver, "remote.test", AuthenticatedId("spf", "evil.test"), AuthenticatedId("dkim", "evil.test"))
    assert (r.result, r.disposition) == ("fail", "quarantine")  # type: ignore[attr-defined]


def test_org_domain_fallback_and_sp(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=none; sp=reject")
    r = ev(resolver, "news.remote.test")
    assert (r.result, r.policy, r.record_domain) == ("fail", "reject", "remote.test")  # type: ignore[attr-defined]


def test_own_record_beats_org(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=reject")
    dns.add("_dmarc.news.remote.test", "TXT", "v=DMARC1; p=none")
    r = ev(resolver, "news.remote.test")
    assert (r.result, r.disposition) == ("fail", "none")  # type: ignore[attr-defined]


def test_no_record_is_none(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    assert ev(resolver, "nothing.test").result == "none"  # type: ignore[attr-defined]


def test_two_records_is_none(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=reject")
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=none")
    assert ev(resolver, "remote.test").result == "none"  # type: ignore[attr-defined]


def test_pct_sampling_downgrades(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("_dmarc.remote.test", "TXT", "v=DMARC1; p=reject; pct=10")
    assert ev(resolver, "remote.test", sample=0.05).disposition == "reject"  # type: ignore[attr-defined]
    assert ev(resolver, "remote.test", sample=0.5).disposition == "quarantine"  # type: ignore[attr-defined]


def test_servfail_is_temperror(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.servfail.add("_dmarc.remote.test")
    assert ev(resolver, "remote.test").result == "temperror"  # type: ignore[attr-defined]


def test_psl_loaded_once() -> None:
    from mailstack.mail import dmarc

    org_domain("a.example.com")
    first = dmarc._psl
    org_domain("b.example.org")
    assert dmarc._psl is first is not None
