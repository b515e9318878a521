"""MTA-STS policy discovery and cache for the outbound client (RFC 8461 §3, §5.1).

``StsCache.policy(domain)`` gives the domain's current policy or None:

1. ``_mta-sts.<domain>`` TXT (through the configured ``Resolver``) gives the policy id;
2. when the id is new (or nothing is cached), the policy is fetched from
   ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (aiohttp), the certificate checked
   against ``[queue] tls_ca_file`` (or the system's CAs) and the name ``mta-sts.<domain>``
   (RFC 8461 §3.3); the host is resolved through the same ``Resolver``, never the OS;
3. a good policy is cached in memory for its ``max_age``. When the TXT lookup or the fetch
   fails, a cached, unexpired policy stays in force (RFC 8461 §5.1: a policy must not be
   dropped because an attacker blocks its refresh); with nothing cached it is "no policy".

A fetch that fails is told to ``on_failure(domain, result_type, reason)`` (the queue
runner records it for TLS-RPT) with its RFC 8460 §4.3.2.2 result type: the policy host's
certificate failed (``sts-webpki-invalid``), the text did not parse or was not served as
``text/plain`` within ``MAX_POLICY_SIZE`` (``sts-policy-invalid``), anything else: no
answer, a refused connection, an HTTP status other than 200 (``sts-policy-fetch-error``).

Invariants: no redirect is followed (RFC 8461 §3.3); only status 200 with a
``text/plain`` body of at most ``MAX_POLICY_SIZE`` bytes is read; the fetch has a time
limit; at most ``MAX_CACHED`` domains are kept (the oldest fetched goes first). Nothing
here raises for a network or DNS problem.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from mailstack.dns import DNSError, Resolver
from mailstack.smtp.tlspolicy import MAX_POLICY_SIZE, StsError, StsPolicy, parse_sts_policy, parse_sts_record

__all__ = ["StsCache", "ViaResolver", "FetchFailure", "MAX_CACHED", "FETCH_TIMEOUT"]

log = logging.getLogger(__name__)

MAX_CACHED = 10000  # domains whose policy is kept in memory
FETCH_TIMEOUT = 30.0  # seconds for the whole HTTPS fetch (RFC 8461 §3.3 suggests about a minute at most)


@dataclass(frozen=True)
class _Cached:
    policy: StsPolicy
    expires: float


class ViaResolver(AbstractResolver):
    """aiohttp's host lookup through mailstack's ``Resolver`` (so ``[dns]`` is honoured)."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            addresses = await self._resolver.addresses(host)
        except DNSError as e:
            raise OSError(f"cannot resolve {host}: {e}") from None
        if not addresses:
            raise OSError(f"{host} has no address")
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST) for a in addresses]

    async def close(self) -> None:
        return None


FetchFailure = Callable[[str, str, str], None]  # (domain, RFC 8460 result-type, reason)


def _failure_type(error: BaseException) -> str:
    """RFC 8460 §4.3.2.2: which kind of MTA-STS policy failure ``error`` is."""
    if isinstance(error, (ssl.SSLCertVerificationError, aiohttp.ClientConnectorCertificateError)):
        return "sts-webpki-invalid"
    if isinstance(error, aiohttp.ClientSSLError) and "certificate" in str(error).lower():
        return "sts-webpki-invalid"
    if isinstance(error, StsError) and not isinstance(error, _FetchError):
        return "sts-policy-invalid"
    return "sts-policy-fetch-error"


class _FetchError(StsError):
    """The policy host answered, but not with a policy (an HTTP status other than 200)."""


class StsCache:
    """The MTA-STS policies of remote domains, fetched when their id changes."""

    def __init__(self, resolver: Resolver, ssl_context: ssl.SSLContext, *, port: int = 443,
                 timeout: float = FETCH_TIMEOUT, clock: Callable[[], float] = time.time,
                 on_failure: FetchFailure | None = None) -> None:
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.port = port
        self.timeout = timeout
        self.clock = clock
        self.on_failure = on_failure
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def cached(self, domain: str) -> StsPolicy | None:
        entry = self._cache.get(domain)
        if entry is None or entry.expires <= self.clock():
            return None
        return entry.policy

    async def policy(self, domain: str) -> StsPolicy | None:
        domain = domain.rstrip(".").lower()
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:  # one fetch per domain at a time (at worst two, after the cleanup below)
            result = await self._policy(domain)
        if not lock.locked():
            self._locks.pop(domain, None)
        return result

    async def _policy(self, domain: str) -> StsPolicy | None:
        cached = self.cached(domain)
        try:
            ident = parse_sts_record(await self.resolver.txt(f"_mta-sts.{domain}"))
        except DNSError as e:
            log.info("mta-sts: TXT lookup for %s failed (%s); %s", domain, e,
                     "keeping the cached policy" if cached else "no policy")
            return cached
        if ident is None:
            return cached  # RFC 8461 §5.1: a cached policy outlives a vanished record
        if cached is not None and cached.id == ident:
            return cached
        try:
            text = await self._fetch(domain)
            policy = parse_sts_policy(text, ident)
        except (StsError, OSError, aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:  # ValueError: bad URL, bad UTF-8
            log.info("mta-sts: policy of %s not usable (%s); %s", domain, str(e) or type(e).__name__,
                     "keeping the cached policy" if cached else "no policy")
            if self.on_failure is not None:
                self.on_failure(domain, _failure_type(e), str(e) or type(e).__name__)
            return cached
        if len(self._cache) >= MAX_CACHED and domain not in self._cache:
            self._cache.pop(next(iter(self._cache)))
        self._cache.pop(domain, None)
        self._cache[domain] = _Cached(policy, self.clock() + policy.max_age)
        log.info("mta-sts: %s policy id=%s mode=%s mx=%s max_age=%d", domain, ident, policy.mode,
                 ",".join(policy.mx) or "-", policy.max_age)
        return policy

    async def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        url = f"https://{host}:{self.port}/.well-known/mta-sts.txt" if self.port != 443 else \
            f"https://{host}/.well-known/mta-sts.txt"
        connector = aiohttp.TCPConnector(resolver=ViaResolver(self.resolver), ssl=self.ssl_context,
                                         use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.get(url, allow_redirects=False) as resp:  # RFC 8461 §3.3: no redirects
                if resp.status != 200:
                    raise _FetchError(f"HTTP {resp.status} from {host}")
                if resp.content_type != "text/plain":  # RFC 8461 §3.2
                    raise StsError(f"{host} served {resp.content_type}, not text/plain")
                body = await resp.content.read(MAX_POLICY_SIZE + 1)
                if len(body) > MAX_POLICY_SIZE:
                    raise StsError(f"policy from {host} is larger than {MAX_POLICY_SIZE} bytes")
                return body.decode("utf-8")
