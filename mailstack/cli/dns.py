"""`mailstack dns records DOMAIN` and `mailstack dns check DOMAIN`.

``records`` prints, ready to paste into a zone file, what a mail domain needs: MX (to
``hostname``), SPF (``v=spf1 mx -all``), every DKIM key's TXT, DMARC (``p=quarantine``,
aggregate reports to postmaster, RFC 7489 §6.3) and the RFC 6186 / RFC 8314 SRV
records of the client services, ManageSieve's ``_sieve._tcp`` too (RFC 5804 §1.8)
(a service without a listener gets the "not offered"
target ``.``, RFC 6186 §4). When the ``http`` service has a listener it adds what
clients and senders find it by: ``autoconfig.`` and ``autodiscover.`` (Thunderbird,
Outlook) and ``mta-sts.`` (RFC 8461 §3.3) as CNAMEs to ``hostname`` (an A record with
the same address also counts as ok), ``_autodiscover._tcp`` SRV (with an HTTPS
listener), ``_mta-sts`` TXT (RFC 8461 §3.1, ``id`` = a hash of the policy served, so it
changes exactly when the policy does) and ``_smtp._tls`` TXT (TLS-RPT, RFC 8460 §3).
``check`` looks each one up through ``[dns]`` and says ok / missing / different per
record; exit 1 when any is not ok.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from dataclasses import dataclass
from typing import Any

from mailstack.cli.common import EXIT_FAILED, EXIT_OK, CLIError, Context, print_json

TTL = 3600
# (SRV service label, config service, implicit TLS?, standard port)
SRV_SERVICES = (
    ("_submission._tcp", "submission", False, 587),
    ("_submissions._tcp", "submission", True, 465),
    ("_imap._tcp", "imap", False, 143),
    ("_imaps._tcp", "imap", True, 993),
    ("_pop3._tcp", "pop3", False, 110),
    ("_pop3s._tcp", "pop3", True, 995),
    ("_sieve._tcp", "managesieve", False, 4190),  # RFC 5804 §1.8
)


@dataclass(frozen=True)
class Record:
    name: str  # FQDN without the trailing dot
    rtype: str
    value: str  # as in a zone file (TXT unquoted)
    what: str

    def zone_line(self) -> str:
        if self.rtype == "TXT":
            v = self.value
            parts = " ".join(f'"{v[i:i + 250]}"' for i in range(0, len(v), 250))
            value = f"( {parts} )" if len(v) > 250 else parts
        else:
            value = self.value
        return f"{self.name}. {TTL} IN {self.rtype} {value}"


def register(nouns: Any) -> None:
    p = nouns.add_parser("dns", help="DNS records a mail domain needs")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    rec = verbs.add_parser("records", help="print the records to publish")
    rec.add_argument("domain")
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(handler=_records)
    chk = verbs.add_parser("check", help="look the records up; exit 1 if any is missing or different")
    chk.add_argument("domain")
    chk.add_argument("--json", action="store_true")
    chk.set_defaults(handler=_check)


def _domain(text: str) -> str:
    from mailstack.mail.address import AddressError, normalize_domain

    try:
        return normalize_domain(text)
    except AddressError as e:
        raise CLIError(f"{text!r}: {e}") from None


def _port(config: Any, service: str, tls: bool, standard: int) -> int | None:
    addrs = [a for a, implicit in config.listeners(service) if implicit == tls and a.kind == "tcp"]
    if not addrs:
        return None
    public = [a for a in addrs if not a.is_loopback]
    port: int = (public or addrs)[0].port
    return port


def domain_records(config: Any, domain: str) -> list[Record]:
    from mailstack.mail import dkim

    host = config.hostname.rstrip(".").lower()
    out = [
        Record(domain, "MX", f"10 {host}.", "MX"),
        Record(domain, "TXT", "v=spf1 mx -all", "SPF"),
    ]
    for key in dkim.load_keys(dkim.keys_dir(config), domain):
        out.append(Record(key.record_name, "TXT", dkim.txt_record(key), f"DKIM {key.selector}"))
    out.append(Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}", "DMARC"))
    for label, service, tls, _standard in SRV_SERVICES:
        port = _port(config, service, tls, _standard)
        value = f"0 1 {port} {host}." if port else "0 0 0 ."
        out.append(Record(f"{label}.{domain}", "SRV", value, f"SRV {label}"))
    out.extend(_http_records(config, domain, host))
    return out


def mta_sts_id(config: Any) -> str:
    """RFC 8461 §3.1 ``id``: 1-32 alphanumerics; a hash of the policy we serve."""
    import hashlib

    from mailstack.http.documents import mta_sts_policy

    http = config.http
    policy = mta_sts_policy(http.mta_sts_mode, list(http.mta_sts_mx) or [config.hostname], http.mta_sts_max_age)
    return hashlib.sha256(policy).hexdigest()[:20]


def _http_records(config: Any, domain: str, host: str) -> list[Record]:
    """Autoconfig/Autodiscover names, MTA-STS and TLS-RPT, when the http service runs."""
    if not (config.http.listen or config.http.tls_listen):
        return []
    out = [Record(f"{label}.{domain}", "CNAME", f"{host}.", what)
           for label, what in (("autoconfig", "autoconfig"), ("autodiscover", "Autodiscover"),
                               ("mta-sts", "MTA-STS host"))]
    https = _port(config, "http", True, 443)
    if https:
        out.append(Record(f"_autodiscover._tcp.{domain}", "SRV", f"0 1 {https} {host}.", "SRV _autodiscover._tcp"))
    out.append(Record(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={mta_sts_id(config)}", "MTA-STS"))
    out.append(Record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{domain}", "TLS-RPT"))
    return out


def _records(args: argparse.Namespace, ctx: Context) -> int:
    domain = _domain(args.domain)
    recs = domain_records(ctx.config, domain)
    if args.json:
        print_json([{"name": r.name, "type": r.rtype, "value": r.value, "what": r.what} for r in recs])
        return EXIT_OK
    print(f"; mail records for {domain} (mail host {ctx.config.hostname}: give it A/AAAA and a matching PTR)")
    if not any(r.what.startswith("DKIM") for r in recs):
        print(f"; no DKIM key yet: mailstack dkim keygen {domain}")
    for r in recs:
        print(r.zone_line())
    return EXIT_OK


def _norm_txt(v: str) -> str:
    return re.sub(r"\s*;\s*", "; ", re.sub(r"\s+", " ", v.strip())).rstrip("; ")


async def _lookup(resolver: Any, rec: Record) -> tuple[str, str]:
    """(state, what was found) for one record: ok / missing / different / error."""
    from mailstack.dns import DNSError, NXDomain

    try:
        if rec.rtype == "MX":
            mx = await resolver.mx(rec.name)
            if mx.implicit:
                return "missing", ""
            found = [f"{r.preference} {r.host}." for r in mx.records] or (["0 ."] if mx.null_mx else [])
            want = rec.value.split()[1].rstrip(".")
            return ("ok" if any(r.host == want for r in mx.records) else "different"), ", ".join(found)
        if rec.rtype == "TXT":
            txts = await resolver.txt(rec.name)
            prefix = rec.value.split(";")[0].split()[0]  # v=spf1 / v=DKIM1 / v=DMARC1
            same_kind = [t for t in txts if t.lower().startswith(prefix.lower())] if prefix.startswith("v=") else txts
            if rec.what.startswith("DKIM"):
                want_p = re.search(r"p=([A-Za-z0-9+/=]+)", rec.value)
                for t in same_kind or txts:
                    got_p = re.search(r"p=([A-Za-z0-9+/=\s]+)", t)
                    if want_p and got_p and re.sub(r"\s", "", got_p.group(1)) == want_p.group(1):
                        return "ok", t
            if not same_kind:
                return "missing", ""
            if any(_norm_txt(t) == _norm_txt(rec.value) for t in same_kind):
                return "ok", same_kind[0]
            return "different", " | ".join(same_kind)
        if rec.rtype == "CNAME":
            want = rec.value.rstrip(".").lower()
            targets = await resolver.cname(rec.name)
            if targets:
                return ("ok" if want in targets else "different"), ", ".join(f"CNAME {t}." for t in targets)
            # no CNAME: an A/AAAA record pointing at the same host is as good
            found_addrs = await resolver.addresses(rec.name)
            if not found_addrs:
                return "missing", ""
            try:
                host_addrs = set(await resolver.addresses(want))
            except NXDomain:
                host_addrs = set()
            ok = bool(host_addrs) and set(found_addrs) <= host_addrs
            return ("ok" if ok else "different"), ", ".join(found_addrs)
        if rec.rtype == "SRV":
            srvs = await resolver.srv(rec.name)
            if not srvs:
                return "missing", ""
            _prio, _weight, port, target = rec.value.split()
            found = ", ".join(f"{s.priority} {s.weight} {s.port} {s.target or '.'}." for s in srvs)
            ok = any(s.port == int(port) and (s.target or ".") == target.rstrip(".") or
                     (target == "." and s.target in ("", ".")) for s in srvs)
            return ("ok" if ok else "different"), found
    except NXDomain:
        return "missing", ""
    except DNSError as e:
        return "error", str(e)
    return "error", "unsupported"


def _check(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.dns import resolver_from_config

    domain = _domain(args.domain)
    recs = domain_records(ctx.config, domain)
    resolver = resolver_from_config(ctx.config.dns)

    async def run() -> list[tuple[str, str]]:
        return list(await asyncio.gather(*(_lookup(resolver, r) for r in recs)))

    results = asyncio.run(run())
    if args.json:
        print_json([{"what": r.what, "name": r.name, "type": r.rtype, "expected": r.value, "state": s, "found": f}
                    for r, (s, f) in zip(recs, results)])
    else:
        for r, (state, found) in zip(recs, results):
            line = f"{state:9} {r.what:24} {r.name} {r.rtype}"
            if state != "ok":
                line += f"\n          expected: {r.value}"
                if found:
                    line += f"\n          found:    {found}"
            print(line)
    return EXIT_OK if all(s == "ok" for s, _ in results) else EXIT_FAILED
