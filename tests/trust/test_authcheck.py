"""The MX's verdict: SPF + every DKIM signature + DMARC over the loopback DNS, and the header."""

from __future__ import annotations

import asyncio
import re

import authres  # type: ignore[import-untyped]
import pytest

from mailstack.dns import DNSPythonResolver
from mailstack.mail import dkim
from mailstack.mail.authcheck import Action, AuthChecker, AuthVerdict, CheckPolicy, from_domains, verify_dkim
from tests.dnsserver import TestDNS
from tests.trust.conftest import REMOTE, message, publish_remote

HOST = "mx.example.test"


def check(resolver: DNSPythonResolver, msg: bytes, *, ip: str = "127.0.0.1", mail_from: str = f"alice@{REMOTE}",
          policy: CheckPolicy | None = None, helo: str = "mx.remote.test") -> AuthVerdict:
    checker = AuthChecker(resolver, HOST, policy or CheckPolicy())
    return asyncio.run(checker.check(msg, client_ip=ip, helo=helo, mail_from=mail_from))


def parse(header: bytes) -> authres.AuthenticationResultsHeader:
    return authres.AuthenticationResultsHeader.parse(header.decode().replace("\r\n", "\n").rstrip("\n"))


def results(v: AuthVerdict) -> list[tuple[str, str]]:
    return [(r.method, r.result) for r in parse(v.header).results]


# -- the whole verdict -------------------------------------------------------------------


def test_signed_remote_mail_passes(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    v = check(resolver, dkim.sign(message(), [remote_key]))
    assert v.action is Action.ACCEPT
    assert results(v) == [("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")]
    assert v.summary == "spf=pass dkim=pass dmarc=pass"


def test_dkim_alone_passes_dmarc_from_a_forwarder(dns: TestDNS, resolver: DNSPythonResolver,
                                                  remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    # relayed by a host that SPF does not allow, with another envelope sender
    v = check(resolver, dkim.sign(message(), [remote_key]), ip="192.0.2.99", mail_from="list@forwarder.test")
    assert v.action is Action.ACCEPT
    assert results(v) == [("spf", "none"), ("dkim", "pass"), ("dmarc", "pass")]


def test_forged_from_of_reject_domain_is_refused(dns: TestDNS, resolver: DNSPythonResolver,
                                                 remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    dns.add("evil.test", "TXT", "v=spf1 +all")
    v = check(resolver, message(), ip="192.0.2.66", mail_from="x@evil.test")
    assert (v.action, v.code, v.status) == (Action.REJECT, 550, "5.7.1")
    assert "remote.test" in v.text
    assert results(v) == [("spf", "pass"), ("dkim", "none"), ("dmarc", "fail")]


def test_reject_can_be_quarantined_instead(dns: TestDNS, resolver: DNSPythonResolver,
                                           remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    v = check(resolver, message(), ip="192.0.2.66", mail_from="x@evil.test",
              policy=CheckPolicy(dmarc_reject="quarantine"))
    assert v.action is Action.JUNK


def test_quarantine_policy_goes_to_junk(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key, policy="quarantine")
    v = check(resolver, message(), ip="192.0.2.66", mail_from="x@evil.test")
    assert v.action is Action.JUNK
    assert b"dmarc=fail (p=quarantine dis=quarantine) header.from=remote.test" in v.header


def test_p_none_is_delivered(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key, policy="none")
    v = check(resolver, message(), ip="192.0.2.66", mail_from="x@evil.test")
    assert v.action is Action.ACCEPT and ("dmarc", "fail") in results(v)


def test_tampered_body_fails_dkim_and_dmarc(dns: TestDNS, resolver: DNSPythonResolver,
                                            remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    signed = dkim.sign(message(), [remote_key]).replace(b"Hello Bob.", b"Pay me now")
    v = check(resolver, signed, ip="192.0.2.66", mail_from="x@evil.test")
    assert v.action is Action.REJECT
    assert ("dkim", "fail") in results(v)


def test_second_from_domain_cannot_dodge_policy(dns: TestDNS, resolver: DNSPythonResolver,
                                                remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    dns.add("evil.test", "TXT", "v=spf1 +all")
    msg = message(from_addr="x@evil.test").replace(b"From: Alice <x@evil.test>",
                                                    b"From: x@evil.test, Alice <alice@remote.test>")
    assert from_domains(msg) == ["evil.test", "remote.test"]
    v = check(resolver, msg, ip="192.0.2.66", mail_from="x@evil.test")
    assert v.action is Action.REJECT


def test_dmarc_lookup_failure_defers(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    dns.servfail.add(f"_dmarc.{REMOTE}")
    v = check(resolver, dkim.sign(message(), [remote_key]))
    assert (v.action, v.code, v.status) == (Action.DEFER, 451, "4.4.3")


def test_unreachable_dns_defers(remote_key: dkim.DKIMKey) -> None:
    from tests.helpers import free_port

    dead = DNSPythonResolver([f"127.0.0.1:{free_port()}"], timeout=0.5)
    v = check(dead, dkim.sign(message(), [remote_key]))
    assert (v.action, v.code, v.status) == (Action.DEFER, 451, "4.4.3")


def test_key_lookup_failure_with_failing_dmarc_defers(dns: TestDNS, resolver: DNSPythonResolver,
                                                      remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    dns.servfail.add(remote_key.record_name)
    v = check(resolver, dkim.sign(message(), [remote_key]), ip="192.0.2.66", mail_from="x@other.test")
    assert v.action is Action.DEFER  # the signature might have passed: no silent reject either
    assert ("dkim", "temperror") in results(v)


def test_overall_timeout_defers(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    class Slow:
        def __getattr__(self, name: str) -> object:
            async def slow(*a: object) -> object:
                await asyncio.sleep(5)
                return []
            return slow

    v = check(Slow(), message(), policy=CheckPolicy(timeout=0.2))  # type: ignore[arg-type]
    assert (v.action, v.code, v.status, v.header) == (Action.DEFER, 451, "4.4.3", b"")


@pytest.mark.parametrize(("setting", "action", "code"), [
    ("mark", Action.ACCEPT, 250), ("junk", Action.JUNK, 250), ("reject", Action.REJECT, 550)])
def test_spf_fail_without_dmarc(dns: TestDNS, resolver: DNSPythonResolver, setting: str, action: Action,
                                code: int) -> None:
    dns.add("plain.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    v = check(resolver, message(from_addr="bob@plain.test"), ip="192.0.2.66", mail_from="bob@plain.test",
              policy=CheckPolicy(spf_fail=setting))  # type: ignore[arg-type]
    assert (v.action, v.code) == (action, code)
    assert results(v) == [("spf", "fail"), ("dkim", "none"), ("dmarc", "none")]
    if code == 550:
        assert v.status == "5.7.23"


def test_spf_temperror_without_dmarc(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.servfail.add("plain.test")
    msg = message(from_addr="bob@other.test")
    assert check(resolver, msg, mail_from="bob@plain.test").action is Action.ACCEPT  # mark: delivered, marked
    v = check(resolver, msg, mail_from="bob@plain.test", policy=CheckPolicy(spf_fail="reject"))
    assert v.action is Action.DEFER


# -- DKIM ------------------------------------------------------------------------------------


def test_every_signature_is_reported(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey,
                                     remote_ed_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    dns.add(remote_ed_key.record_name, "TXT", dkim.txt_record(remote_ed_key))
    signed = dkim.sign(message(), [remote_key, remote_ed_key])
    sigs = asyncio.run(verify_dkim(signed, resolver))
    assert [(s.result, s.domain, s.selector) for s in sigs] == [("pass", REMOTE, "sel"), ("pass", REMOTE, "ed")]
    assert all(len(s.b) == 8 for s in sigs)


def test_missing_key_is_permerror(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    sigs = asyncio.run(verify_dkim(dkim.sign(message(), [remote_key]), resolver))
    assert [s.result for s in sigs] == ["permerror"]


def test_revoked_key_is_permerror(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    dns.add(remote_key.record_name, "TXT", "v=DKIM1; k=rsa; p=")
    sigs = asyncio.run(verify_dkim(dkim.sign(message(), [remote_key]), resolver))
    assert [s.result for s in sigs] == ["permerror"]


def test_garbage_signature_is_permerror(resolver: DNSPythonResolver) -> None:
    msg = b"DKIM-Signature: v=1; a=rsa-sha256; nonsense\r\n" + message()
    sigs = asyncio.run(verify_dkim(msg, resolver))
    assert [s.result for s in sigs] == ["permerror"]


def test_unsigned_has_no_dkim_result(resolver: DNSPythonResolver) -> None:
    assert asyncio.run(verify_dkim(message(), resolver)) == ()


# -- the header (RFC 8601) ----------------------------------------------------------------


def test_header_is_rfc8601(dns: TestDNS, resolver: DNSPythonResolver, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    v = check(resolver, dkim.sign(message(), [remote_key]))
    text = v.header.decode()
    b8 = v.dkim[0].b
    assert re.fullmatch(r"[A-Za-z0-9+/]{8}", b8)
    b_value = b8 if "/" not in b8 else f'"{b8}"'  # "/" is a tspecial: quoted-string (RFC 2045)
    assert text == (
        "Authentication-Results: mx.example.test;\r\n"
        "\tspf=pass smtp.mailfrom=alice@remote.test;\r\n"
        f"\tdkim=pass header.d=remote.test header.s=sel header.b={b_value};\r\n"
        "\tdmarc=pass (p=reject dis=none) header.from=remote.test\r\n"
    )
    parsed = parse(v.header)
    assert parsed.authserv_id == HOST
    props = {(r.method, p.type, p.name): p.value for r in parsed.results for p in r.properties}
    assert props[("spf", "smtp", "mailfrom")] == "alice@remote.test"
    assert props[("dkim", "header", "d")] == REMOTE
    assert props[("dkim", "header", "b")] == v.dkim[0].b
    assert props[("dmarc", "header", "from")] == REMOTE
    assert all(len(line) < 998 for line in text.split("\r\n"))


def test_null_sender_reports_helo(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("mx.remote.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    v = check(resolver, message(), mail_from="", helo="mx.remote.test")
    assert b"spf=pass smtp.helo=mx.remote.test;" in v.header


def test_apply_strips_forged_header_and_puts_ours_on_top(dns: TestDNS, resolver: DNSPythonResolver,
                                                         remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    forged = (b"Authentication-Results: MX.Example.Test.; dkim=pass header.d=bank.test;\r\n"
              b"\tdmarc=pass header.from=bank.test\r\n"
              b"Authentication-Results: (comment) mx.example.test; spf=pass\r\n"
              b"Authentication-Results: other.host.test; spf=fail\r\n")
    signed = dkim.sign(message(extra=""), [remote_key])
    msg = forged + signed
    v = check(resolver, msg)
    assert v.action is Action.ACCEPT  # the forged fields are not signed: the signature still verifies
    out = v.apply(msg, HOST)
    assert out.startswith(v.header)
    assert out.count(b"Authentication-Results:") == 2
    assert b"Authentication-Results: other.host.test; spf=fail\r\n" in out
    assert b"bank.test" not in out
    assert out.endswith(signed)
