"""DMARC (RFC 7489): policy discovery, identifier alignment, the evaluated result.

``await evaluate(resolver, from_domain, spf, dkim)`` -> ``DMARCResult``.

- Policy discovery (RFC 7489 §6.6.3): the TXT records of ``_dmarc.<From domain>`` that
  start with ``v=DMARC1``; when there are none, those of ``_dmarc.<organisational
  domain>``. More than one record at a name, or none at both: no policy (``none``).
  A lookup that cannot complete is ``temperror``: the caller must not treat it as a pass.
- The organisational domain (RFC 7489 §3.2) comes from the Public Suffix List of the
  maintained ``publicsuffixlist`` package, loaded once per process (``org_domain``).
- Alignment (RFC 7489 §3.1): DKIM ``d=`` and the SPF-checked domain each against the
  From domain, strict (equal) or relaxed (same organisational domain), per ``adkim`` /
  ``aspf`` (default relaxed). Only a ``pass`` can be aligned.
- Tags (RFC 7489 §6.3): ``p`` (required; an invalid or missing ``p`` makes the record
  unusable unless ``rua`` is present, in which case it is ``p=none``, §6.6.3),
  ``sp`` for subdomains when the record came from the organisational domain, ``pct``
  (sampling; the policy not applied falls one step: reject -> quarantine -> none,
  §6.6.4), ``adkim``/``aspf``. Unknown tags are ignored.

Nothing here writes headers or replies: the verdict and the header are ``authcheck``'s.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mailstack.dns import DNSError, NXDomain, Resolver

__all__ = ["DMARCRecord", "DMARCResult", "AuthenticatedId", "evaluate", "parse_record", "org_domain", "aligned"]

Policy = Literal["none", "quarantine", "reject"]
DMARCOutcome = Literal["pass", "fail", "none", "temperror", "permerror"]

_V_DMARC1 = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")
_psl_lock = threading.Lock()
_psl: object | None = None


def _public_suffix_list() -> object:
    """The PSL, parsed once per process (~100 ms; per message would cost that each time)."""
    global _psl
    if _psl is None:
        with _psl_lock:
            if _psl is None:
                from publicsuffixlist import PublicSuffixList

                _psl = PublicSuffixList()
    return _psl


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 §3.2): the public suffix plus one label.

    An unknown TLD (``.test``) counts as a one-label public suffix, so
    ``mail.remote.test`` -> ``remote.test``. A public suffix itself is its own answer.
    """
    domain = domain.strip().rstrip(".").lower()
    psl = _public_suffix_list()
    found = psl.privatesuffix(domain)  # type: ignore[attr-defined]
    return str(found) if found else domain


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict = same name; relaxed = same organisational domain."""
    a, b = a.rstrip(".").lower(), b.rstrip(".").lower()
    if a == b:
        return True
    return mode != "s" and org_domain(a) == org_domain(b)


@dataclass(frozen=True)
class DMARCRecord:
    policy: Policy
    subdomain_policy: Policy | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def parse_record(text: str) -> DMARCRecord | None:
    """A ``v=DMARC1`` record, or None when it is unusable (RFC 7489 §6.3, §6.6.3)."""
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";")]
    if not _V_DMARC1.match(parts[0] + ";"):  # v must be first, exact (§6.3)
        return None
    for part in parts[1:]:
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        if "rua" in tags:  # §6.6.3 step 6: treat as p=none
            p = "none"
        else:
            return None
    sp = tags.get("sp", "").lower()
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DMARCRecord(
        policy=p,  # type: ignore[arg-type]
        subdomain_policy=sp if sp in ("none", "quarantine", "reject") else None,  # type: ignore[arg-type]
        adkim="s" if adkim == "s" else "r",
        aspf="s" if aspf == "s" else "r",
        pct=min(100, max(0, pct)),
    )


@dataclass(frozen=True)
class AuthenticatedId:
    """One identifier that some mechanism *passed*: DKIM ``d=``, or the SPF-checked domain."""

    method: Literal["spf", "dkim"]
    domain: str


@dataclass(frozen=True)
class DMARCResult:
    result: DMARCOutcome
    from_domain: str
    policy: Policy | None = None  # the published policy that applies (p, or sp for a subdomain)
    disposition: Policy = "none"  # what should be done after pct sampling
    record_domain: str | None = None  # where the record was found
    reason: str = ""


async def _records_at(resolver: Resolver, name: str) -> list[str]:
    try:
        txts = await resolver.txt(name)
    except NXDomain:
        return []
    return [t for t in txts if _V_DMARC1.match(t)]  # §6.6.3 step 3: only v=DMARC1 records


async def discover(resolver: Resolver, from_domain: str) -> tuple[DMARCRecord, str] | None:
    """(record, where) or None; raises DNSError (temporary) when a lookup fails (§6.6.3)."""
    org = org_domain(from_domain)
    for domain in dict.fromkeys((from_domain, org)):
        found = await _records_at(resolver, f"_dmarc.{domain}")
        if len(found) > 1:
            return None  # §6.6.3 step 2: several records = no DMARC
        if found:
            record = parse_record(found[0])
            if record is not None:
                return record, domain
            if domain == from_domain and org != from_domain:
                continue
            return None
    return None


def _downgrade(policy: Policy) -> Policy:
    return {"reject": "quarantine", "quarantine": "none", "none": "none"}[policy]  # type: ignore[return-value]


async def evaluate(
    resolver: Resolver,
    from_domain: str,
    passed: Sequence[AuthenticatedId],
    *,
    sample: Callable[[], float] = random.random,
) -> DMARCResult:
    """DMARC for a message whose single From domain is ``from_domain``.

    ``passed`` lists the identifiers that passed SPF / DKIM. The outcome ``fail`` with
    ``disposition`` tells what the domain owner asks for; ``temperror`` means that the
    policy could not be looked up.
    """
    from_domain = from_domain.strip().rstrip(".").lower()
    try:
        found = await discover(resolver, from_domain)
    except DNSError as e:
        return DMARCResult("temperror", from_domain, reason=str(e))
    if found is None:
        return DMARCResult("none", from_domain, reason="no DMARC record")
    record, where = found
    policy: Policy = record.policy
    if where != from_domain and record.subdomain_policy is not None:  # §6.3 sp=
        policy = record.subdomain_policy
    for ident in passed:
        mode = record.adkim if ident.method == "dkim" else record.aspf
        if aligned(ident.domain, from_domain, mode):
            return DMARCResult("pass", from_domain, policy, "none", where,
                               reason=f"{ident.method} aligned ({ident.domain})")
    disposition = policy
    if record.pct < 100 and sample() * 100 >= record.pct:  # §6.6.4: not sampled: one step down
        disposition = _downgrade(policy)
    return DMARCResult("fail", from_domain, policy, disposition, where, reason="no aligned SPF or DKIM pass")
