"""SPF (RFC 7208): is this client IP allowed to send for this domain?

A small evaluator over ``mailstack.dns.Resolver`` (never the system resolver behind the
config's back, so ``[dns] nameservers`` and the tests' loopback DNS are honoured).

``await check_host(resolver, ip, domain, sender, helo)`` -> ``SPFResult``. What is
enforced, and where:

- record selection: the TXT records that start with ``v=spf1`` (then a space or the end);
  none -> ``none``, more than one -> ``permerror`` (§4.5); NXDOMAIN for the domain ->
  ``none`` (§4.3); a malformed domain -> ``none`` (§4.3);
- mechanisms ``all``, ``include``, ``a``, ``mx``, ``ip4``, ``ip6``, ``exists`` with
  CIDR lengths (dual ``/n//m`` for ``a`` and ``mx``, §5.3, §5.4, §5.6); ``ptr`` is
  accepted and never matches (§5.5: "SHOULD NOT be used", verifiers may treat it so);
  an unknown mechanism is a ``permerror`` (§5);
- the ``redirect=`` modifier (§6.1) when no mechanism matched and there is no ``all``;
  ``exp=`` and unknown modifiers are ignored (§6); a repeated ``redirect``/``exp`` is a
  ``permerror`` (§6);
- ``include`` maps the inner result per the table of §5.2 (``none`` -> ``permerror``);
- limits (§4.6.4): at most 10 terms that cause DNS lookups (``include a mx ptr exists
  redirect``), at most 10 MX names looked up per ``mx``, at most 2 "void" lookups (NXDOMAIN
  or no answer); going over is a ``permerror``;
- macros (§7): ``%{s l o d i p v h}`` with digit and ``r`` transformers and delimiters,
  ``%% %_ %-``; ``p`` expands to ``unknown`` (no PTR validation);
- a DNS lookup that cannot be completed (timeout, SERVFAIL) is ``temperror`` (§2.6.6),
  never a guess.

The evaluator is a pure function of the resolver's answers; it holds no state between calls.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from mailstack.dns import DNSError, NXDomain, Resolver

__all__ = ["SPFResult", "SPFOutcome", "check_host", "check", "MAX_DNS_TERMS", "MAX_VOID_LOOKUPS"]

SPFOutcome = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]

MAX_DNS_TERMS = 10  # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 §4.6.4
MAX_MX_NAMES = 10  # RFC 7208 §4.6.4

_QUALIFIERS: dict[str, SPFOutcome] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*$"
)
_MACRO_RE = re.compile(r"%\{([slodipvhcrtSLODIPVHCRT])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-|%")


@dataclass(frozen=True)
class SPFResult:
    """The outcome of one check; ``domain`` is the identity's domain, ``reason`` one line."""

    result: SPFOutcome
    domain: str
    sender: str  # the identity checked (MAIL FROM, or postmaster@HELO for a null sender)
    reason: str = ""
    helo_identity: bool = False  # True: the HELO name was checked (null reverse-path)


class _Error(Exception):
    def __init__(self, result: SPFOutcome, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


class _Perm(_Error):
    def __init__(self, reason: str) -> None:
        super().__init__("permerror", reason)


class _Temp(_Error):
    def __init__(self, reason: str) -> None:
        super().__init__("temperror", reason)


@dataclass
class _State:
    resolver: Resolver
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    terms: int = 0
    voids: int = 0

    def count_term(self) -> None:
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:  # RFC 7208 §4.6.4
            raise _Perm(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def count_void(self) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:  # RFC 7208 §4.6.4
            raise _Perm(f"more than {MAX_VOID_LOOKUPS} void lookups")


def _valid_domain(domain: str) -> bool:
    return bool(_DOMAIN_RE.match(domain.rstrip(".")))


def _parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


async def check(resolver: Resolver, ip: str, sender: str, helo: str) -> SPFResult:
    """The MAIL FROM identity, or ``postmaster@HELO`` for a null sender (RFC 7208 §2.4)."""
    helo = (helo or "").strip().rstrip(".").lower()
    if sender and "@" in sender:
        local, _, domain = sender.rpartition("@")
        identity = f"{local or 'postmaster'}@{domain.lower()}"
        return await check_host(resolver, ip, domain, identity, helo)
    return await check_host(resolver, ip, helo, f"postmaster@{helo}", helo, helo_identity=True)


async def check_host(
    resolver: Resolver, ip: str, domain: str, sender: str, helo: str, *, helo_identity: bool = False
) -> SPFResult:
    """RFC 7208 §4: ``check_host(ip, domain, sender)``."""
    domain = domain.strip().rstrip(".").lower()
    h = helo_identity
    try:
        addr = _parse_ip(ip)
    except ValueError:
        return SPFResult("permerror", domain, sender, f"client address {ip!r} is not an IP address", h)
    if not _valid_domain(domain):  # RFC 7208 §4.3
        return SPFResult("none", domain, sender, f"{domain!r} is not a domain name", h)
    state = _State(resolver, addr, sender, helo)
    try:
        result, reason = await _evaluate(state, domain)
    except _Error as e:
        return SPFResult(e.result, domain, sender, e.reason, h)
    return SPFResult(result, domain, sender, reason, h)


async def _record(state: _State, domain: str) -> str | None:
    """The one ``v=spf1`` record of ``domain``; None = no record (RFC 7208 §4.5)."""
    try:
        txts = await state.resolver.txt(domain)
    except NXDomain:
        return None
    except DNSError as e:  # DNSTemporaryError and anything else that is not an answer
        raise _Temp(str(e)) from None
    records = [t for t in txts if t[:6].lower() == "v=spf1" and (len(t) == 6 or t[6] == " ")]
    if len(records) > 1:
        raise _Perm(f"{domain} has {len(records)} SPF records")
    return records[0] if records else None


async def _evaluate(state: _State, domain: str) -> tuple[SPFOutcome, str]:
    record = await _record(state, domain)
    if record is None:
        return "none", f"{domain} has no SPF record"
    terms = record[6:].split()
    redirect: str | None = None
    seen_modifiers: set[str] = set()
    mechanisms: list[tuple[str, str, str]] = []  # (qualifier, name, argument)
    # Parse everything first: a syntax error anywhere is a permerror (RFC 7208 §4.6).
    for term in terms:
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", term)
        if m:
            name, value = m.group(1).lower(), m.group(2)
            if name in ("redirect", "exp"):
                if name in seen_modifiers:  # RFC 7208 §6
                    raise _Perm(f"{domain}: {name}= appears twice")
                seen_modifiers.add(name)
                if name == "redirect":
                    redirect = value
            continue  # unknown modifiers are ignored (RFC 7208 §6)
        qualifier = "+"
        if term[0] in "+-~?":
            qualifier, term = term[0], term[1:]
        name, sep, arg = term.partition(":")
        if not sep:
            name, sep2, rest = term.partition("/")
            arg = "/" + rest if sep2 else ""
        name = name.lower()
        if name not in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
            raise _Perm(f"{domain}: unknown mechanism {term!r}")
        mechanisms.append((qualifier, name, arg))

    for qualifier, name, arg in mechanisms:
        if name == "all":  # matches always, so a redirect= after it never applies (RFC 7208 §6.1)
            return _QUALIFIERS[qualifier], f"{domain}: matched {qualifier}all"
        if await _match(state, domain, name, arg):
            return _QUALIFIERS[qualifier], f"{domain}: matched {qualifier}{name}{':' + arg if arg else ''}"
    if redirect is not None:  # RFC 7208 §6.1
        state.count_term()
        target = _expand(state, redirect, domain).lower()
        if not _valid_domain(target):
            raise _Perm(f"{domain}: redirect to invalid domain {target!r}")
        result, reason = await _evaluate(state, target)
        if result == "none":
            raise _Perm(f"{domain}: redirect target {target} has no SPF record")
        return result, reason
    return "neutral", f"{domain}: no mechanism matched"  # RFC 7208 §4.7


def _split_cidr(arg: str, domain_allowed: bool) -> tuple[str, int | None, int | None]:
    """``example.com/24//64`` -> ("example.com", 24, 64) (RFC 7208 §5.6)."""
    m = re.fullmatch(r"(.*?)(?:/(\d{1,2}))?(?://(\d{1,3}))?", arg)
    assert m is not None
    spec, v4, v6 = m.group(1), m.group(2), m.group(3)
    v4n = int(v4) if v4 is not None else None
    v6n = int(v6) if v6 is not None else None
    if v4n is not None and v4n > 32 or v6n is not None and v6n > 128:
        raise _Perm(f"CIDR length out of range in {arg!r}")
    if not domain_allowed and spec:
        raise _Perm(f"unexpected argument {arg!r}")
    return spec, v4n, v6n


def _in_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, address: str, v4: int | None, v6: int | None) -> bool:
    try:
        other = _parse_ip(address)
    except ValueError:
        return False
    if other.version != ip.version:
        return False
    length = (v4 if v4 is not None else 32) if ip.version == 4 else (v6 if v6 is not None else 128)
    return ip in ipaddress.ip_network(f"{other}/{length}", strict=False)


async def _addresses(state: _State, name: str, *, void_counts: bool = True) -> list[str]:
    try:
        found = await state.resolver.addresses(name)
    except NXDomain:
        found = []
    except DNSError as e:
        raise _Temp(str(e)) from None
    if not found and void_counts:
        state.count_void()
    return found


async def _match(state: _State, domain: str, name: str, arg: str) -> bool:
    if name == "ip4" or name == "ip6":  # RFC 7208 §5.6
        if not arg:
            raise _Perm(f"{domain}: {name} needs an address")
        try:
            net = ipaddress.ip_network(arg, strict=False)
        except ValueError:
            raise _Perm(f"{domain}: {name}:{arg} is not a network") from None
        if net.version != (4 if name == "ip4" else 6):
            raise _Perm(f"{domain}: {name}:{arg} is the wrong address family")
        return net.version == state.ip.version and state.ip in net

    state.count_term()  # include, a, mx, ptr, exists: each counts (RFC 7208 §4.6.4)
    if name == "include":  # RFC 7208 §5.2
        if not arg:
            raise _Perm(f"{domain}: include needs a domain")
        target = _expand(state, arg, domain).lower()
        if not _valid_domain(target):
            raise _Perm(f"{domain}: include of invalid domain {target!r}")
        result, reason = await _evaluate(state, target)
        if result == "pass":
            return True
        if result in ("fail", "softfail", "neutral"):
            return False
        if result == "temperror":
            raise _Temp(reason)
        raise _Perm(f"include:{target}: {'no SPF record' if result == 'none' else reason}")
    if name == "exists":  # RFC 7208 §5.7
        if not arg:
            raise _Perm(f"{domain}: exists needs a domain")
        target = _expand(state, arg, domain).lower()
        found = [a for a in await _addresses(state, target) if ":" not in a]  # A records only
        return bool(found)
    if name == "ptr":  # RFC 7208 §5.5: never matches here
        return False

    spec, v4, v6 = _split_cidr(arg, domain_allowed=True)
    target = _expand(state, spec, domain).lower() if spec else domain
    if not _valid_domain(target):
        raise _Perm(f"{domain}: {name} with invalid domain {target!r}")
    if name == "a":  # RFC 7208 §5.3
        return any(_in_network(state.ip, a, v4, v6) for a in await _addresses(state, target))
    # mx, RFC 7208 §5.4: no implicit MX here; at most 10 names
    try:
        mx = await state.resolver.mx(target)
    except NXDomain:
        state.count_void()
        return False
    except DNSError as e:
        raise _Temp(str(e)) from None
    if mx.implicit or mx.null_mx or not mx.records:
        state.count_void()
        return False
    if len(mx.records) > MAX_MX_NAMES:
        raise _Perm(f"{domain}: mx:{target} has more than {MAX_MX_NAMES} MX names")
    for record in mx.records:
        if any(_in_network(state.ip, a, v4, v6) for a in await _addresses(state, record.host, void_counts=False)):
            return True
    return False


def _expand(state: _State, spec: str, domain: str) -> str:
    """Macro expansion, RFC 7208 §7."""
    local, _, sender_domain = state.sender.rpartition("@")

    def letter_value(letter: str) -> str:
        ip = state.ip
        values = {
            "s": state.sender,
            "l": local or "postmaster",
            "o": sender_domain,
            "d": domain,
            "i": ".".join(ip.exploded.replace(":", "")) if ip.version == 6 else str(ip),
            "p": "unknown",
            "v": "in-addr" if ip.version == 4 else "ip6",
            "h": state.helo or "unknown",
            "c": str(ip),
            "r": "unknown",
            "t": "0",
        }
        return values[letter]

    def repl(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "%%":
            return "%"
        if token == "%_":
            return " "
        if token == "%-":
            return "%20"
        if token == "%":
            raise _Perm(f"bad macro in {spec!r}")
        letter, digits, reverse, delims = m.group(1), m.group(2), m.group(3), m.group(4)
        value = letter_value(letter.lower())
        # RFC 7208 §7.3 delimiters: each one splits like "."; no regex built from the record
        parts = value.translate({ord(c): "." for c in delims}).split(".") if delims else value.split(".")
        if reverse:
            parts.reverse()
        if digits:
            n = int(digits) if len(digits) <= 9 else 10**9  # int() raises past 4300 digits
            if n == 0:
                raise _Perm(f"bad macro in {spec!r}")
            parts = parts[-n:]
        out = ".".join(parts)
        if letter.isupper():  # RFC 7208 §7.3: uppercase letters are URL-escaped
            out = urllib.parse.quote(out, safe="")
        return out

    expanded = _MACRO_RE.sub(repl, spec)
    if len(expanded) > 253:  # RFC 7208 §7.3: keep the right-hand labels
        # counted down, not re-joined per label: that was quadratic in a record's labels
        labels = expanded.split(".")
        total, k = len(expanded), 0
        while k < len(labels) and total > 253:
            total -= len(labels[k]) + 1  # the label and the dot after it
            k += 1
        expanded = ".".join(labels[k:])
    return expanded
