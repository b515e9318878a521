"""SPF + DKIM + DMARC on a message arriving at the MX: one verdict and one A-R header.

``AuthChecker(resolver, authserv_id, policy).check(message, client_ip=..., helo=...,
mail_from=...)`` -> ``AuthVerdict``. It is used by the MX only: mail from our own users
(submission, authenticated) and LMTP never comes here.

What it does:

- SPF (``mailstack.mail.spf``) on MAIL FROM (or the HELO name for a null sender) and
  every DKIM signature (at most ``MAX_SIGNATURES``; RFC 6376 §6.1: each one on its own,
  keys fetched through our resolver, never dkimpy's DNS code) run concurrently;
- DMARC (``mailstack.mail.dmarc``) for every distinct From: domain (a message with
  several From: domains gets the strictest outcome, so a second From: cannot dodge a
  policy); a message without any From: address gets no DMARC result (``none``); the
  From: domains are read by ``mailstack.mail.author.from_domains``, the one reading of
  From: that submission and DKIM signing use too (``From :`` is a From field);
- the ``Authentication-Results:`` field (``mailstack.mail.authresults``) with our
  hostname as authserv-id, to be put on top after forged ones are removed
  (``AuthVerdict.apply``).

The policy (RFC 7489 §6.6.2/§6.7; the choices in ``CheckPolicy``):

=====================================  ==========================================
DMARC ``fail``, disposition reject     ``550 5.7.1`` (or Junk, ``dmarc_reject``)
DMARC ``fail``, disposition quarantine delivered into the Junk folder
DMARC ``fail``, disposition none       delivered
DMARC ``temperror`` (policy unknown)   ``451 4.4.3``
DMARC ``fail`` while SPF or a DKIM     ``451 4.4.3``: the missing answer might
signature had ``temperror``            have passed (never a silent pass/fail)
no DMARC policy, SPF ``fail``          ``spf_fail``: mark (deliver), junk, reject
                                       (``550 5.7.23``, RFC 7372 §3.2)
no DMARC policy, SPF ``temperror``     delivered when ``spf_fail`` is mark, else 451
all the lookups over ``timeout``       ``451 4.4.3``
=====================================  ==========================================

Invariants: a DNS failure never turns into a pass; nothing raises to the caller for a
malformed message or record (they become ``permerror``/``none``); the PSL is loaded once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dkim as dkimpy  # type: ignore[import-untyped]

from mailstack.dns import DNSError, NXDomain, Resolver
from mailstack.mail import dmarc as dmarc_mod
from mailstack.mail.arc import verify_arc
from mailstack.mail import headers
from mailstack.mail import spf as spf_mod
from mailstack.mail.authresults import ResInfo, format_header, strip_forged
from mailstack.mail.author import from_domains

__all__ = [
    "Action",
    "AuthChecker",
    "AuthVerdict",
    "CheckPolicy",
    "DKIMSignature",
    "from_domains",
    "verify_dkim",
]

log = logging.getLogger(__name__)

MAX_SIGNATURES = 8  # DKIM signatures verified per message; more are reported as "policy"

DKIMOutcome = Literal["pass", "fail", "neutral", "policy", "temperror", "permerror"]


class Action(enum.Enum):
    ACCEPT = "accept"
    JUNK = "junk"  # deliver into the recipients' Junk folder
    REJECT = "reject"  # 5xx at the end of DATA
    DEFER = "defer"  # 4xx at the end of DATA


@dataclass(frozen=True)
class CheckPolicy:
    """What to do with the results (``[checks]``)."""

    dmarc_reject: Literal["reject", "quarantine"] = "reject"
    spf_fail: Literal["mark", "junk", "reject"] = "mark"
    timeout: float = 30.0

    @classmethod
    def from_config(cls, section: Any) -> CheckPolicy:
        return cls(dmarc_reject=section.dmarc_reject, spf_fail=section.spf_fail, timeout=float(section.timeout))


@dataclass(frozen=True)
class DKIMSignature:
    result: DKIMOutcome
    domain: str = ""  # d=
    selector: str = ""  # s=
    b: str = ""  # the first 8 characters of b= (RFC 6008 §4)
    reason: str = ""


@dataclass(frozen=True)
class AuthVerdict:
    action: Action
    header: bytes  # the Authentication-Results field, CRLF-terminated ("" when deferred by timeout)
    code: int = 250
    status: str = "2.0.0"
    text: str = ""
    spf: spf_mod.SPFResult | None = None
    dkim: tuple[DKIMSignature, ...] = ()
    dmarc: dmarc_mod.DMARCResult | None = None
    summary: str = ""  # one line for the mail log: "spf=pass dkim=pass dmarc=pass"

    def apply(self, message: bytes, authserv_id: str) -> bytes:
        """Our header on top of ``message`` without forged ones (RFC 8601 §5)."""
        stripped, removed = strip_forged(message, authserv_id)
        if removed:
            log.info("removed %d Authentication-Results field(s) claiming %s", removed, authserv_id)
        return self.header + stripped


# ---------------------------------------------------------------------------
# DKIM


def _sig_tags(raw: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for t in re.sub(rb"\s+", b"", raw).split(b";"):
        k, sep, v = t.partition(b"=")
        if sep and k not in out:
            out[k.lower()] = v
    return out


async def verify_dkim(message: bytes, resolver: Resolver) -> tuple[DKIMSignature, ...]:
    """Every DKIM-Signature of ``message`` (RFC 6376 §6.1), in header order."""

    def parse() -> tuple[Any, list[tuple[DKIMSignature | None, dict[bytes, bytes]]]]:
        try:
            d = dkimpy.DKIM(message, minkey=1024)
        except dkimpy.DKIMException as e:
            raw = [f for f in headers.raw_fields(headers.header_block(message)) if f.key == "dkim-signature"]
            return None, [(DKIMSignature("permerror", reason=f"message: {e}"), {}) for _ in raw]
        sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
        out: list[tuple[DKIMSignature | None, dict[bytes, bytes]]] = []
        for idx, raw in enumerate(sigs):
            tags = _sig_tags(raw)
            dom = tags.get(b"d", b"").decode("ascii", "replace").lower()
            sel = tags.get(b"s", b"").decode("ascii", "replace")
            b8 = tags.get(b"b", b"")[:8].decode("ascii", "replace")
            if idx >= MAX_SIGNATURES:
                out.append((DKIMSignature("policy", dom, sel, b8, "too many signatures"), tags))
                continue
            try:
                d.verify_headerprep(idx)
            except dkimpy.DKIMException as e:  # RFC 6376 §6.1.1: unusable signature = PERMFAIL
                out.append((DKIMSignature("permerror", dom, sel, b8, _short(e)), tags))
                continue
            out.append((None, tags))
        return d, out

    if not headers.has_field(message, "DKIM-Signature"):
        return ()  # unsigned: no thread hop, no parse
    d, parsed = await asyncio.to_thread(parse)
    if not parsed:
        return ()

    async def key(tags: dict[bytes, bytes]) -> tuple[str, str | DKIMSignature]:
        name = (tags.get(b"s", b"") + b"._domainkey." + tags.get(b"d", b"")).decode("ascii", "replace").lower()
        dom = tags.get(b"d", b"").decode("ascii", "replace").lower()
        sel = tags.get(b"s", b"").decode("ascii", "replace")
        b8 = tags.get(b"b", b"")[:8].decode("ascii", "replace")
        try:
            txts = await resolver.txt(name)
        except NXDomain:
            return name, DKIMSignature("permerror", dom, sel, b8, "no key")
        except DNSError as e:
            return name, DKIMSignature("temperror", dom, sel, b8, _short(e))
        records = [t for t in txts if "p=" in t]
        if len(records) != 1:  # RFC 6376 §3.6.2.2: one record expected
            return name, DKIMSignature("permerror", dom, sel, b8, "no key" if not records else "several keys")
        return name, records[0]

    pending = [i for i, (res, _) in enumerate(parsed) if res is None]
    keys = await asyncio.gather(*(key(parsed[i][1]) for i in pending))

    def run() -> list[DKIMSignature]:
        results: list[DKIMSignature] = []
        for i, (name, found) in zip(pending, keys):
            tags = parsed[i][1]
            dom = tags.get(b"d", b"").decode("ascii", "replace").lower()
            sel = tags.get(b"s", b"").decode("ascii", "replace")
            b8 = tags.get(b"b", b"")[:8].decode("ascii", "replace")
            if isinstance(found, DKIMSignature):
                results.append(found)
                continue
            record = found
            try:
                dkimpy.evaluate_pk(name.encode(), record.encode())
            except (dkimpy.DKIMException, ValueError, KeyError) as e:  # RFC 6376 §6.1.2: PERMFAIL
                results.append(DKIMSignature("permerror", dom, sel, b8, f"key: {_short(e)}"))
                continue

            def dnsfunc(qname: bytes, timeout: int = 5, _n: str = name, _r: str = record) -> bytes:
                return _r.encode() if qname.rstrip(b".").lower().decode("ascii", "replace") == _n else b""

            try:
                ok = bool(d.verify(idx=i, dnsfunc=dnsfunc))
                results.append(DKIMSignature("pass" if ok else "fail", dom, sel, b8,
                                             "" if ok else "signature did not verify"))
            except dkimpy.ValidationError as e:  # body hash mismatch, expired, ...
                results.append(DKIMSignature("fail", dom, sel, b8, _short(e)))
            except (dkimpy.DKIMException, ValueError, KeyError, TypeError) as e:
                results.append(DKIMSignature("permerror", dom, sel, b8, _short(e)))
        return results

    verified = iter(await asyncio.to_thread(run) if pending else [])
    return tuple(res if res is not None else next(verified) for res, _ in parsed)


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


# ---------------------------------------------------------------------------
# the checker

_SEVERITY = {"none": 0, "quarantine": 1, "reject": 2}


@dataclass
class AuthChecker:
    """Runs the checks for the MX; one per service, shared by its connections."""

    resolver: Resolver
    authserv_id: str
    policy: CheckPolicy = field(default_factory=CheckPolicy)

    async def check(self, message: bytes, *, client_ip: str, helo: str | None, mail_from: str) -> AuthVerdict:
        try:
            async with asyncio.timeout(self.policy.timeout):
                return await self._check(message, client_ip, helo or "", mail_from)
        except TimeoutError:
            log.warning("authentication checks took over %gs; deferring", self.policy.timeout)
            return AuthVerdict(Action.DEFER, b"", 451, "4.4.3", "DNS lookups timed out, try again later",
                               summary="timeout")

    async def _check(self, message: bytes, client_ip: str, helo: str, mail_from: str) -> AuthVerdict:
        spf_task = spf_mod.check(self.resolver, client_ip, mail_from, helo)
        spf, sigs, arc = await asyncio.gather(spf_task, verify_dkim(message, self.resolver),
                                              verify_arc(message, self.resolver))

        passed: list[dmarc_mod.AuthenticatedId] = []
        if spf.result == "pass":
            passed.append(dmarc_mod.AuthenticatedId("spf", spf.domain))
        passed.extend(dmarc_mod.AuthenticatedId("dkim", s.domain) for s in sigs if s.result == "pass" and s.domain)

        domains = from_domains(message)
        dmarc_results = await asyncio.gather(*(dmarc_mod.evaluate(self.resolver, d, passed) for d in domains))
        dm = _worst(dmarc_results) if dmarc_results else None

        infos = _resinfos(spf, sigs, dm, domains)
        if arc is not None:  # RFC 8617 §5.2: the chain as we received it, for our seal's cv=
            infos.append(ResInfo("arc", arc))
        header = format_header(self.authserv_id, infos)
        summary = " ".join(
            [f"spf={spf.result}"] + ([f"dkim={s.result}" for s in sigs] or ["dkim=none"])
            + [f"dmarc={dm.result if dm else 'none'}"] + ([f"arc={arc}"] if arc else [])
            + ([f"dmarc_policy={dm.disposition}"] if dm and dm.result == "fail" else [])
        )
        dns_unsure = spf.result == "temperror" or any(s.result == "temperror" for s in sigs)

        def verdict(action: Action, code: int = 250, status: str = "2.0.0", text: str = "") -> AuthVerdict:
            return AuthVerdict(action, header, code, status, text, spf, sigs, dm, summary)

        defer = (451, "4.4.3", "Temporary DNS failure while checking the sender, try again later")
        if dm is not None and dm.result == "temperror":
            return verdict(Action.DEFER, *defer)
        if dm is not None and dm.result == "fail":
            if dm.disposition == "none":
                return verdict(Action.ACCEPT)
            if dns_unsure:  # the answer we could not get might have aligned
                return verdict(Action.DEFER, *defer)
            if dm.disposition == "reject" and self.policy.dmarc_reject == "reject":
                # RFC 7489 §6.7 / §7.3: reject during the SMTP transaction
                return verdict(Action.REJECT, 550, "5.7.1",
                               f"Message rejected: it fails the DMARC policy of {dm.from_domain}")
            return verdict(Action.JUNK)
        if dm is not None and dm.result == "pass":
            return verdict(Action.ACCEPT)
        # no DMARC policy: SPF alone (RFC 7208 §8.4)
        if self.policy.spf_fail != "mark":
            if spf.result == "temperror":
                return verdict(Action.DEFER, *defer)
            if spf.result == "fail":
                if self.policy.spf_fail == "reject":
                    return verdict(Action.REJECT, 550, "5.7.23",  # RFC 7372 §3.2
                                   f"SPF check failed: {spf.domain} does not allow {client_ip} to send its mail")
                return verdict(Action.JUNK)
        return verdict(Action.ACCEPT)


def _worst(results: Sequence[dmarc_mod.DMARCResult]) -> dmarc_mod.DMARCResult:
    def rank(r: dmarc_mod.DMARCResult) -> tuple[int, int]:
        if r.result == "temperror":
            return (4, 0)
        if r.result == "fail":
            return (3, _SEVERITY[r.disposition])
        if r.result == "permerror":
            return (2, 0)
        if r.result == "none":
            return (1, 0)
        return (0, 0)  # pass

    return max(results, key=rank)


def _resinfos(
    spf: spf_mod.SPFResult,
    sigs: Sequence[DKIMSignature],
    dm: dmarc_mod.DMARCResult | None,
    domains: Sequence[str],
) -> list[ResInfo]:
    out: list[ResInfo] = []
    # RFC 8601 §2.7.2: smtp.mailfrom, or smtp.helo when the HELO identity was checked
    prop = ("smtp.helo", spf.domain) if spf.helo_identity else ("smtp.mailfrom", spf.sender)
    out.append(ResInfo("spf", spf.result, (prop,) if spf.domain else ()))
    if not sigs:
        out.append(ResInfo("dkim", "none"))  # RFC 8601 §2.7.1: no signature
    for s in sigs:
        props = tuple((k, v) for k, v in (("header.d", s.domain), ("header.s", s.selector), ("header.b", s.b)) if v)
        reason = s.reason if s.result != "pass" else None
        out.append(ResInfo("dkim", s.result, props, reason=reason))
    if dm is None:
        out.append(ResInfo("dmarc", "none", comment="no From address" if not domains else None))
    else:
        comment = None
        if dm.policy is not None:
            comment = f"p={dm.policy} dis={dm.disposition if dm.result == 'fail' else 'none'}"
        out.append(ResInfo("dmarc", dm.result, (("header.from", dm.from_domain),), comment=comment))
    return out
