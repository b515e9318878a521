"""SMTP TLS Reporting (RFC 8460): record outbound TLS results, send daily aggregate reports.

- ``TLSResultLog.record`` appends one JSON line per connection attempt to a domain that
  has a policy (MTA-STS or DANE) to ``<queue dir>/tlsrpt/<YYYY-MM-DD>.jsonl`` (UTC day),
  with one ``O_APPEND`` write, so several processes may record at once;
- ``build_report`` (no I/O) turns one day's lines for one policy domain into the JSON of
  RFC 8460 §4.4;
- ``send_reports`` looks up ``_smtp._tls.<domain>`` (RFC 8460 §3), and for each
  ``mailto:`` ``rua`` queues a ``multipart/report; report-type="tlsrpt"`` message with the
  report as ``application/tlsrpt+gzip`` (RFC 8460 §5.3); to each ``https:`` ``rua`` it
  POSTs the gzipped report as ``application/tlsrpt+gzip`` (RFC 8460 §3, §5.4), the
  server's certificate checked as the MTA-STS fetch checks it (``[queue] tls_ca_file``
  or the system's CAs), the host resolved through ``[dns]``, no redirect followed, any
  2xx a success. A POST that fails is logged and not retried (as a mailed report that
  bounces is not: the next day's report follows). A day whose reports went out is
  renamed ``.sent`` so it is never reported twice; the queue runner calls it once per
  UTC day for the day before.

Only domains whose mail met a policy are recorded: a report needs a policy to describe
(RFC 8460 §4.3), and domains without MTA-STS or DANE rarely publish TLSRPT. A policy
that could not be had counts too (RFC 8460 §4.3.2): an MTA-STS policy whose fetch failed
(``sts-policy-fetch-error``), whose host's certificate failed (``sts-webpki-invalid``)
or whose text did not parse (``sts-policy-invalid``), a DNSSEC-validated TLSA RRset with
no usable record (``tlsa-invalid``), a TLSA lookup our validating resolver could not
answer (``dnssec-invalid``). Such attempts have no policy string, and no MX when the
failure came before one was chosen (the fields are left out of the report then).
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import logging
import os
import ssl
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiohttp

from mailstack.dns import DNSError, Resolver
from mailstack.smtp.mtasts import ViaResolver

__all__ = ["TLSResultLog", "Attempt", "parse_tlsrpt_record", "build_report", "send_reports", "report_message",
           "post_report", "POST_TIMEOUT"]

log = logging.getLogger(__name__)

MAX_FAILURE_DETAILS = 100  # distinct failure entries per policy in one report
POST_TIMEOUT = 60.0  # seconds for one https report POST, connection included
MAX_REASON = 200  # characters of failure-reason-code kept per attempt


@dataclass(frozen=True)
class Attempt:
    domain: str
    policy_type: str  # "sts" | "tlsa" (RFC 8460 §4.4)
    policy: tuple[str, ...]  # policy-string lines
    mx_host: str
    address: str
    result: str  # "" = success, else a result-type of RFC 8460 §4.3
    reason: str = ""  # what went wrong, for the report's failure-reason-code (RFC 8460 §4.4)


class TLSResultLog:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def record(self, attempt: Attempt, when: float | None = None) -> None:
        """Append one line; never raises (a report is not worth a failed delivery)."""
        day = datetime.datetime.fromtimestamp(when if when is not None else datetime.datetime.now().timestamp(),
                                              datetime.timezone.utc).date().isoformat()
        fields = {"d": attempt.domain, "t": attempt.policy_type, "p": list(attempt.policy),
                  "mx": attempt.mx_host, "ip": attempt.address, "r": attempt.result}
        if attempt.reason:
            fields["why"] = attempt.reason[:MAX_REASON]
        line = json.dumps(fields) + "\n"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / f"{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("tlsrpt: cannot record a result: %s", e)

    def sts_failure(self, domain: str, result: str, reason: str) -> None:
        """An MTA-STS policy that could not be had (``mtasts.StsCache``'s ``on_failure``)."""
        self.record(Attempt(domain, "sts", (), "", "", result, reason))

    def lines(self, day: str) -> list[Attempt]:
        out: list[Attempt] = []
        try:
            text = (self.dir / f"{day}.jsonl").read_text()
        except OSError:
            return out
        for raw in text.splitlines():
            try:
                d = json.loads(raw)
                out.append(Attempt(d["d"], d["t"], tuple(d["p"]), d["mx"], d["ip"], d["r"], str(d.get("why", ""))))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a crash: skip it
        return out


def parse_tlsrpt_record(records: Sequence[str]) -> list[str]:
    """The ``rua`` URIs of a ``v=TLSRPTv1`` TXT record (RFC 8460 §3); [] if none or several."""
    found = [r for r in records if r.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(found) != 1:
        return []
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == "rua":
            return [u.strip() for u in value.split(",") if u.strip()]
    return []


def build_report(domain: str, attempts: Iterable[Attempt], *, org: str, contact: str, day: datetime.date,
                 report_id: str) -> dict[str, Any]:
    """RFC 8460 §4.4: one report for ``domain`` covering ``day`` (UTC)."""
    start = datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc)
    end = start + datetime.timedelta(days=1) - datetime.timedelta(seconds=1)
    policies: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for a in attempts:
        if a.domain != domain:
            continue
        policy: dict[str, Any] = {"policy-type": a.policy_type, "policy-domain": domain}
        if a.policy:  # none when the policy itself could not be had (RFC 8460 §4.3.2)
            policy["policy-string"] = list(a.policy)
        entry = policies.setdefault((a.policy_type, a.policy), {
            "policy": policy,
            "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
            "failure-details": {},
        })
        if not a.result:
            entry["summary"]["total-successful-session-count"] += 1
            continue
        entry["summary"]["total-failure-session-count"] += 1
        key = (a.result, a.mx_host, a.address)
        details = entry["failure-details"]
        if key in details:
            details[key]["failed-session-count"] += 1
        elif len(details) < MAX_FAILURE_DETAILS:
            detail: dict[str, Any] = {"result-type": a.result}
            if a.mx_host:
                detail["receiving-mx-hostname"] = a.mx_host
            if a.address:
                detail["receiving-ip"] = a.address
            detail["failed-session-count"] = 1
            if a.reason:
                detail["failure-reason-code"] = a.reason
            details[key] = detail
    out = []
    for entry in policies.values():
        failures = list(entry.pop("failure-details").values())
        if failures:
            entry["failure-details"] = failures
        out.append(entry)
    return {
        "organization-name": org,
        "date-range": {"start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "end-datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "contact-info": contact,
        "report-id": report_id,
        "policies": out,
    }


def report_message(report: dict[str, Any], *, domain: str, submitter: str, sender: str, to: str) -> bytes:
    """RFC 8460 §5.3: ``multipart/report; report-type="tlsrpt"`` with the gzipped JSON."""
    start = report["date-range"]["start-datetime"]
    end = report["date-range"]["end-datetime"]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=submitter)
    msg["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report['report-id']}>"
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    msg.set_content(f"This is an aggregate TLS report from {submitter} for {domain} ({start} to {end}).\n")
    body = gzip.compress(json.dumps(report, indent=1).encode())
    name = f"{submitter}!{domain}!{start[:10]}!{end[:10]}!{report['report-id'][:8]}.json.gz"
    msg.add_attachment(body, maintype="application", subtype="tlsrpt+gzip", filename=name)
    msg.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"; boundary="%s"' % msg.get_boundary())
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def post_report(url: str, body: bytes, resolver: Resolver, ssl_context: ssl.SSLContext, *,
                      timeout: float = POST_TIMEOUT) -> None:
    """POST one gzipped report to an ``https:`` rua (RFC 8460 §3); OSError says why not."""
    connector = aiohttp.TCPConnector(resolver=ViaResolver(resolver), ssl=ssl_context, use_dns_cache=False)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.post(url, data=body, allow_redirects=False,
                                    headers={"Content-Type": "application/tlsrpt+gzip"}) as resp:
                if not 200 <= resp.status < 300:
                    raise OSError(f"HTTP {resp.status}")
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:  # ValueError: a bad URL
        raise OSError(str(e) or type(e).__name__) from None


async def send_reports(log_: TLSResultLog, day: datetime.date, resolver: Resolver, enqueue: Any, *,
                       submitter: str, https_context: ssl.SSLContext | None = None) -> int:
    """Queue (mailto:) or POST (https:) the reports for ``day``; how many went out.

    ``enqueue(sender, recipients, data)`` is the queue's, run in a worker thread;
    ``https_context`` checks an https rua's certificate (default: the system's CAs)."""
    name = day.isoformat()
    attempts = log_.lines(name)
    sent = 0
    for domain in sorted({a.domain for a in attempts}):
        try:
            ruas = parse_tlsrpt_record(await resolver.txt(f"_smtp._tls.{domain}"))
        except DNSError as e:
            log.info("tlsrpt: no report for %s: %s", domain, e)
            continue
        mailtos = [u[7:].split("?")[0] for u in ruas if u.lower().startswith("mailto:")]
        https = [u for u in ruas if u.lower().startswith("https://")]
        for u in ruas:
            if u not in https and not u.lower().startswith("mailto:"):
                log.info("tlsrpt: %s asks for reports at %s; only mailto: and https: are supported", domain, u)
        if not mailtos and not https:
            continue
        report = build_report(domain, attempts, org=submitter, contact=f"postmaster@{submitter}", day=day,
                              report_id=f"{name}-{uuid.uuid4().hex}@{submitter}")
        for rcpt in mailtos:
            data = report_message(report, domain=domain, submitter=submitter,
                                  sender=f"postmaster@{submitter}", to=rcpt)
            await asyncio.to_thread(enqueue, f"postmaster@{submitter}", [rcpt], data)  # fsyncs: off the loop
            sent += 1
        if https:
            body = gzip.compress(json.dumps(report, indent=1).encode())
            for url in https:
                try:
                    await post_report(url, body, resolver, https_context or ssl.create_default_context())
                except OSError as e:
                    log.warning("tlsrpt: report for %s to %s failed: %s", domain, url, e)
                    continue
                log.info("tlsrpt: report for %s posted to %s", domain, url)
                sent += 1
    try:  # RFC 8460 §4.1: one report per day and domain, never again
        os.replace(log_.dir / f"{name}.jsonl", log_.dir / f"{name}.sent")
    except OSError:
        pass
    return sent
