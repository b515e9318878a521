"""The resolver's answer cache (mailstack.dns, ``cache_size``): each answer kept for its own
TTL, no longer; failures never kept; off unless asked for (the MX checks see new records)."""

from __future__ import annotations

import asyncio

import pytest

from mailstack.dns import DNSPythonResolver, DNSTemporaryError
from mailstack.smtp.queue_runner import DNS_CACHE_SIZE
from tests.dnsserver import TestDNS


def _asked(dns: TestDNS, name: str, rtype: str) -> int:
    return sum(1 for q in dns.queries if q == (name, rtype))


def test_answers_are_kept_for_their_ttl(dns: TestDNS) -> None:
    dns.add("short.test", "MX", "10 mx1.short.test")
    dns.ttls["short.test"] = 1
    dns.add("long.test", "MX", "10 mx1.long.test")
    r = DNSPythonResolver([dns.address], timeout=2.0, cache_size=DNS_CACHE_SIZE)

    async def run() -> None:
        assert [m.host for m in (await r.mx("short.test")).records] == ["mx1.short.test"]
        assert [m.host for m in (await r.mx("long.test")).records] == ["mx1.long.test"]
        dns.remove("short.test", "MX")
        dns.add("short.test", "MX", "10 mx2.short.test")
        dns.remove("long.test", "MX")
        dns.add("long.test", "MX", "10 mx2.long.test")
        assert [m.host for m in (await r.mx("short.test")).records] == ["mx1.short.test"]  # cached
        await asyncio.sleep(1.2)  # past the 1 s TTL of short.test, well within long.test's 60 s
        assert [m.host for m in (await r.mx("short.test")).records] == ["mx2.short.test"]
        assert [m.host for m in (await r.mx("long.test")).records] == ["mx1.long.test"]

    asyncio.run(run())
    assert _asked(dns, "short.test", "MX") == 2 and _asked(dns, "long.test", "MX") == 1


def test_failures_are_not_cached_and_no_cache_by_default(dns: TestDNS) -> None:
    dns.add("flaky.test", "A", "192.0.2.1")
    dns.servfail.add("flaky.test")
    cached = DNSPythonResolver([dns.address], timeout=2.0, cache_size=100)
    plain = DNSPythonResolver([dns.address], timeout=2.0)

    async def run() -> None:
        with pytest.raises(DNSTemporaryError):
            await cached.addresses("flaky.test")
        dns.servfail.discard("flaky.test")
        assert await cached.addresses("flaky.test") == ["192.0.2.1"]  # the failure was not kept
        before = len(dns.queries)
        await plain.addresses("flaky.test")
        await plain.addresses("flaky.test")
        assert len(dns.queries) - before == 4  # A and AAAA, twice: nothing cached

    asyncio.run(run())
