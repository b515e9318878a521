"""SPF (RFC 7208) over the loopback DNS: each mechanism, the limits, the errors."""

from __future__ import annotations

import asyncio

import pytest

from mailstack.dns import DNSPythonResolver
from mailstack.mail.spf import MAX_DNS_TERMS, check, check_host
from tests.dnsserver import TestDNS

D = "spf.test"


def run(resolver: DNSPythonResolver, ip: str, sender: str = f"user@{D}", helo: str = "client.test") -> str:
    return asyncio.run(check(resolver, ip, sender, helo)).result


# (record(s) at spf.test, client IP, expected) -- one row per rule, RFC 7208 section in the comment
TABLE = [
    (["v=spf1 -all"], "192.0.2.1", "fail"),                      # §5.1 all
    (["v=spf1 ~all"], "192.0.2.1", "softfail"),                  # §4.6.2 qualifiers
    (["v=spf1 ?all"], "192.0.2.1", "neutral"),
    (["v=spf1 +all"], "192.0.2.1", "pass"),
    (["v=spf1"], "192.0.2.1", "neutral"),                        # §4.7 default result
    (["v=spf1 ip4:192.0.2.0/24 -all"], "192.0.2.77", "pass"),    # §5.6 ip4 with CIDR
    (["v=spf1 ip4:192.0.2.0/24 -all"], "198.51.100.1", "fail"),
    (["v=spf1 ip4:192.0.2.5 -all"], "192.0.2.5", "pass"),        # no CIDR = /32
    (["v=spf1 ip6:2001:db8::/32 -all"], "2001:db8::1", "pass"),  # §5.6 ip6
    (["v=spf1 ip6:2001:db8::/32 -all"], "192.0.2.1", "fail"),    # other family never matches
    (["v=spf1 ip4:192.0.2.1 -all"], "::ffff:192.0.2.1", "pass"),  # IPv4-mapped client
    (["v=spf1 a -all"], "192.0.2.10", "pass"),                   # §5.3 a (the domain's A)
    (["v=spf1 a:host.spf.test -all"], "192.0.2.20", "pass"),
    (["v=spf1 a:host.spf.test/24 -all"], "192.0.2.99", "pass"),  # §5.6 dual CIDR, v4 part
    (["v=spf1 a//64 -all"], "2001:db8:1::99", "pass"),           # v6 part
    (["v=spf1 mx -all"], "192.0.2.30", "pass"),                  # §5.4 mx
    (["v=spf1 mx -all"], "192.0.2.31", "fail"),
    (["v=spf1 include:inc.test -all"], "198.51.100.5", "pass"),  # §5.2 include: pass matches
    (["v=spf1 include:incfail.test ~all"], "198.51.100.5", "softfail"),  # inner fail = no match
    (["v=spf1 include:nospf.test -all"], "192.0.2.1", "permerror"),  # inner none = permerror
    (["v=spf1 redirect=inc.test"], "198.51.100.5", "pass"),      # §6.1 redirect
    (["v=spf1 redirect=inc.test"], "192.0.2.1", "fail"),
    (["v=spf1 ip4:192.0.2.1 redirect=inc.test"], "192.0.2.1", "pass"),
    (["v=spf1 -all redirect=inc.test"], "198.51.100.5", "fail"),  # all wins over redirect
    (["v=spf1 redirect=nospf.test"], "192.0.2.1", "permerror"),  # redirect to none = permerror
    (["v=spf1 exists:%{i}.ex.test -all"], "192.0.2.40", "pass"),  # §5.7 exists + §7 macros
    (["v=spf1 exists:%{i}.ex.test -all"], "192.0.2.41", "fail"),
    (["v=spf1 exists:%{ir}.%{v}.ex.test -all"], "192.0.2.42", "pass"),  # r transformer
    (["v=spf1 exists:%{l}.users.ex.test -all"], "192.0.2.1", "pass"),  # local part
    (["v=spf1 ptr -all"], "192.0.2.1", "fail"),                  # §5.5 ptr never matches here
    (["v=spf1 foo:bar -all"], "192.0.2.1", "permerror"),         # §5 unknown mechanism
    (["v=spf1 ip4:300.1.1.1 -all"], "192.0.2.1", "permerror"),   # bad ip4
    (["v=spf1 ip4:192.0.2.1 unknown=mod -all"], "192.0.2.1", "pass"),  # §6 unknown modifier ignored
    (["v=spf1 redirect=a.test redirect=b.test"], "192.0.2.1", "permerror"),  # §6 twice
    (["v=spf1 -all", "v=spf1 +all"], "192.0.2.1", "permerror"),  # §4.5 two records
    (["something else", "v=spf1 ip4:192.0.2.1 -all"], "192.0.2.1", "pass"),  # other TXT ignored
    (["v=spf10 +all"], "192.0.2.1", "none"),                     # §4.5 not "v=spf1"
    ([], "192.0.2.1", "none"),                                   # no record at all
    (["v=spf1 a:void1.test a:void2.test a:void3.test -all"], "192.0.2.1", "permerror"),  # §4.6.4 voids
]


def zone(dns: TestDNS) -> None:
    dns.add(D, "A", "192.0.2.10")
    dns.add(D, "AAAA", "2001:db8:1::1")
    dns.add(D, "MX", "10 mx1.spf.test")
    dns.add("mx1.spf.test", "A", "192.0.2.30")
    dns.add("host.spf.test", "A", "192.0.2.20")
    dns.add("inc.test", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    dns.add("incfail.test", "TXT", "v=spf1 -all")
    dns.add("nospf.test", "A", "192.0.2.1")
    dns.add("192.0.2.40.ex.test", "A", "127.0.0.2")
    dns.add("42.2.0.192.in-addr.ex.test", "A", "127.0.0.2")
    dns.add("user.users.ex.test", "A", "127.0.0.2")


@pytest.mark.parametrize(("records", "ip", "expected"), TABLE)
def test_table(dns: TestDNS, resolver: DNSPythonResolver, records: list[str], ip: str, expected: str) -> None:
    zone(dns)
    for r in records:
        dns.add(D, "TXT", r)
    assert run(resolver, ip) == expected


def test_nxdomain_is_none(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    assert run(resolver, "192.0.2.1", "a@does-not-exist.test") == "none"  # §4.3


def test_malformed_domain_is_none(resolver: DNSPythonResolver) -> None:
    assert run(resolver, "192.0.2.1", "a@nodots") == "none"


def test_null_sender_checks_helo(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add("client.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    r = asyncio.run(check(resolver, "192.0.2.1", "", "client.test"))
    assert (r.result, r.domain, r.sender, r.helo_identity) == ("pass", "client.test", "postmaster@client.test", True)


def test_lookup_limit(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    # a chain of includes: the 11th DNS-querying term is a permerror (§4.6.4)
    for i in range(MAX_DNS_TERMS + 2):
        dns.add(f"chain{i}.test", "TXT", f"v=spf1 include:chain{i + 1}.test -all")
    dns.add(D, "TXT", "v=spf1 include:chain0.test -all")
    r = asyncio.run(check(resolver, "192.0.2.1", f"u@{D}", "h.test"))
    assert r.result == "permerror" and "DNS-querying" in r.reason


def test_ten_lookups_are_allowed(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    for i in range(9):
        dns.add(f"chain{i}.test", "TXT", f"v=spf1 include:chain{i + 1}.test")
    dns.add("chain9.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns.add(D, "TXT", "v=spf1 include:chain0.test -all")
    assert run(resolver, "192.0.2.1") == "pass"


def test_include_loop_is_permerror(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add(D, "TXT", f"v=spf1 include:{D} -all")
    assert run(resolver, "192.0.2.1") == "permerror"


def test_servfail_is_temperror(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.servfail.add(D)
    r = asyncio.run(check(resolver, "192.0.2.1", f"u@{D}", "h.test"))
    assert r.result == "temperror"


def test_servfail_inside_include_is_temperror(dns: TestDNS, resolver: DNSPythonResolver) -> None:
    dns.add(D, "TXT", "v=spf1 include:broken.test -all")
    dns.servfail.add("broken.test")
    assert run(resolver, "192.0.2.1") == "temperror"


def test_unreachable_dns_is_temperror() -> None:
    from tests.helpers import free_port

    dead = DNSPythonResolver([f"127.0.0.1:{free_port()}"], timeout=0.5)
    assert run(dead, "192.0.2.1") == "temperror"


def test_bad_client_ip() -> None:
    r = asyncio.run(check_host(DNSPythonResolver(["127.0.0.1:9"], timeout=0.2), "not-an-ip", D, f"u@{D}", "h"))
    assert r.result == "permerror"
