"""The DNS resolver interface, and its dnspython implementation.

Everything in mailstack that looks a name up (outbound MX selection, DKIM verification,
``mailstack dns check``) goes through a ``Resolver`` so that tests can point it at a
loopback DNS and nothing reads ``/etc/resolv.conf`` behind the config's back.

Invariants:
- three outcomes are kept apart, because mail routing depends on them: a name that does
  not exist (``NXDomain``, permanent), a name that exists without records of the type
  asked (an empty answer, *not* an error: RFC 2308 §2.2 NODATA), and a lookup that could
  not be completed (``DNSTemporaryError``: timeout, SERVFAIL, no server reachable);
- ``[dns] nameservers`` is honoured exactly ("IP" or "IP:PORT", IPv6 as "[::1]:53"); an
  empty list means the system resolver (``/etc/resolv.conf``);
- MX answers come back sorted by preference (RFC 5321 §5.1), hosts of equal preference
  shuffled, and a null MX (RFC 7505 §3: one record, preference 0, exchange ".") is
  reported as such, never as a host named ".";
- with ``cache_size`` (the queue runner asks for one) answers are kept for their own TTL
  and no longer, in dnspython's ``LRUCache`` (RFC 1035 §3.2.1, RFC 2308 for the negative
  answers it keeps); a failed lookup is never cached. Without it every call asks the
  server (the MX checks, ``mailstack dns check``: they must see a record just published);
- a TLSA answer is ``secure`` only when it carries the AD bit (RFC 4035 §3.2.3) *and* came
  from a resolver listed in ``[dns] trusted_resolvers`` (a validating resolver on a
  trusted path, RFC 7672 §2.1.1, RFC 6698 §4.1); from any other server the bit means
  nothing and the answer is reported as not secure.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.nameserver
import dns.rdatatype
import dns.resolver

__all__ = [
    "DNSError",
    "DNSTemporaryError",
    "NXDomain",
    "MXRecord",
    "MXResult",
    "SRVRecord",
    "TLSARecord",
    "TLSAAnswer",
    "TLSAResolver",
    "Resolver",
    "DNSPythonResolver",
    "parse_nameserver",
    "resolver_from_config",
]


class DNSError(Exception):
    """Base of resolver errors; ``str()`` is one line."""


class DNSTemporaryError(DNSError):
    """The lookup could not be completed (timeout, SERVFAIL, no server): try again later."""


class NXDomain(DNSError):
    """The name does not exist (RCODE 3): a permanent answer."""


@dataclass(frozen=True)
class MXRecord:
    preference: int
    host: str  # lower case, no trailing dot


@dataclass(frozen=True)
class MXResult:
    """Where mail for a domain goes.

    ``null_mx``: the domain accepts no mail (RFC 7505). ``implicit``: there was no MX
    record, and ``records`` is the domain itself (RFC 5321 §5.1 "implicit MX").
    """

    domain: str
    records: tuple[MXRecord, ...]
    null_mx: bool = False
    implicit: bool = False


@dataclass(frozen=True)
class SRVRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass(frozen=True)
class TLSAAnswer:
    """TLSA records, and whether a trusted validating resolver vouched for them (AD bit)."""

    records: tuple[TLSARecord, ...]
    secure: bool


class TLSAResolver(Protocol):
    """DANE lookups (RFC 7672): kept apart from ``Resolver``, which every test fake implements."""

    async def tlsa(self, name: str) -> TLSAAnswer: ...

    async def address_secure(self, host: str) -> bool: ...


class Resolver(Protocol):
    """What the rest of mailstack needs from DNS. Empty result = NODATA."""

    async def mx(self, domain: str) -> MXResult: ...

    async def addresses(self, host: str) -> list[str]: ...

    async def txt(self, name: str) -> list[str]: ...

    async def srv(self, name: str) -> list[SRVRecord]: ...

    async def cname(self, name: str) -> list[str]: ...


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"127.0.0.1:5353"`` -> ("127.0.0.1", 5353); ``"::1"``/``"[::1]:53"``; default port 53."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


def _name(host: str) -> str:
    return host.rstrip(".").lower()


class DNSPythonResolver:
    """``Resolver`` over ``dns.asyncresolver`` (TCP fallback for truncated answers built in)."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0, *, cache_size: int = 0,
                 trusted: Sequence[str] = ()) -> None:
        self._trusted = {parse_nameserver(t) for t in trusted}
        if nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(h, port=p) for h, p in map(parse_nameserver, nameservers)]
        else:
            r = dns.asyncresolver.Resolver()
        r.lifetime = timeout
        r.timeout = min(timeout, 2.0)
        if cache_size:
            r.cache = dns.resolver.LRUCache(cache_size)  # each answer for its TTL
        if self._trusted:
            r.flags = dns.flags.RD | dns.flags.AD  # RFC 6840 §5.7: ask for the AD bit
        self._r = r

    async def _query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        return list(await self._answer(name, rdtype) or [])

    async def _answer(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        try:
            return await self._r.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise NXDomain(f"{name}: no such domain") from None
        except dns.resolver.NoAnswer:
            return None  # NODATA
        except dns.resolver.NoNameservers as e:
            raise DNSTemporaryError(f"{name} {rdtype}: no name server answered ({_short(e)})") from None
        except dns.exception.Timeout:
            raise DNSTemporaryError(f"{name} {rdtype}: DNS timeout") from None
        except dns.exception.DNSException as e:
            raise DNSTemporaryError(f"{name} {rdtype}: {_short(e)}") from None

    async def tlsa(self, name: str) -> TLSAAnswer:
        """``_25._tcp.<mx>`` TLSA records; NODATA is an empty, non-secure answer."""
        answer = await self._answer(_name(name), "TLSA")
        if answer is None:
            return TLSAAnswer((), False)
        records = tuple(TLSARecord(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
                        for r in answer)
        ad = bool(answer.response.flags & dns.flags.AD)
        return TLSAAnswer(records, ad and (answer.nameserver, answer.port) in self._trusted)

    async def address_secure(self, host: str) -> bool:
        """Whether a trusted validating resolver vouches (AD bit) for ``host``'s address
        records: RFC 7672 §2.2's "secure" MX host. Any failure is "not known secure"."""
        if not self._trusted:
            return False
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._answer(_name(host), rdtype)
            except DNSError:
                continue
            if answer is not None:
                ad = bool(answer.response.flags & dns.flags.AD)
                return ad and (answer.nameserver, answer.port) in self._trusted
        return False

    async def mx(self, domain: str) -> MXResult:
        domain = _name(domain)
        rdatas = await self._query(domain, "MX")
        if not rdatas:
            # RFC 5321 §5.1: no MX -> the domain itself is the implicit MX, if it has an address.
            return MXResult(domain, (MXRecord(0, domain),), implicit=True)
        records = [MXRecord(int(r.preference), _name(r.exchange.to_text())) for r in rdatas]  # type: ignore[attr-defined]
        # RFC 7505 §3: a single MX with preference 0 and exchange "." says "no mail here".
        if any(r.host == "" for r in records):
            if len(records) == 1 and records[0].preference == 0:
                return MXResult(domain, (), null_mx=True)
            records = [r for r in records if r.host]  # RFC 7505 §3: a null MX among others is ignored
        return MXResult(domain, tuple(sort_mx(records)))

    async def addresses(self, host: str) -> list[str]:
        """IPv4 first, then IPv6 (the usual deliverability choice); [] = NODATA for both."""
        host = _name(host)
        out: list[str] = []
        errors: list[DNSError] = []
        nx = 0
        for rdtype in ("A", "AAAA"):
            try:
                out.extend(r.to_text() for r in await self._query(host, rdtype))
            except NXDomain:
                nx += 1
            except DNSTemporaryError as e:
                errors.append(e)
        if out:
            return out
        if errors:
            raise errors[0]
        if nx:
            raise NXDomain(f"{host}: no such domain")
        return []

    async def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in await self._query(_name(name), "TXT")]  # type: ignore[attr-defined]

    async def srv(self, name: str) -> list[SRVRecord]:
        return [
            SRVRecord(int(r.priority), int(r.weight), int(r.port), _name(r.target.to_text()))  # type: ignore[attr-defined]
            for r in await self._query(_name(name), "SRV")
        ]

    async def cname(self, name: str) -> list[str]:
        return [_name(r.target.to_text()) for r in await self._query(_name(name), "CNAME")]  # type: ignore[attr-defined]


def sort_mx(records: Sequence[MXRecord], rng: random.Random | None = None) -> list[MXRecord]:
    """Preference order, equal preferences shuffled (RFC 5321 §5.1), duplicates dropped."""
    rand = rng.random if rng is not None else random.random
    seen: set[str] = set()
    unique = [r for r in records if not (r.host in seen or seen.add(r.host))]  # type: ignore[func-returns-value]
    keyed = [(r.preference, rand(), r) for r in unique]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in keyed]


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def resolver_from_config(dns_config: object, *, cache_size: int = 0) -> DNSPythonResolver:
    """The resolver for ``[dns]`` (``nameservers``, ``timeout``); ``cache_size``: see the module docstring."""
    return DNSPythonResolver(tuple(getattr(dns_config, "nameservers", ())), float(getattr(dns_config, "timeout", 5.0)),
                             cache_size=cache_size, trusted=tuple(getattr(dns_config, "trusted_resolvers", ())))
