"""``mailstack status``: is the installation healthy? Each check, and the verdict.

The checks, all from the outside (what a monitoring system would see), all bounded:

- every service the config enables answers on every listener with its greeting (SMTP and
  LMTP ``220``, IMAP ``* OK``, POP3 ``+OK``, HTTP a status line), over TLS on a
  ``tls_listen`` (the certificate is judged apart, so it is not verified here); a wildcard
  address (``0.0.0.0``, ``::``) is tried on loopback. The ``queue`` service has no port: it
  is judged by the queue itself (a message overdue by more than ``health.overdue_grace``
  means no runner is working through it);
- the queue: size, oldest message, deferred and overdue counts;
- the certificate (``[tls] cert_file``): issuer, expiry, days left;
- free space on the file systems of ``[storage] maildir_root`` and ``[queue] dir``;
- the directory database answers (and its schema is current); a SQLite file that does not
  exist is reported, never created;
- the spam scanner: when ``[spam] rspamd_url`` is set, rspamd's normal worker must answer
  ``/ping`` (``mailstack.spam.reachable``); not configured: nothing to report (``None``).

The verdict (Nagios plugin convention, the contract's exit status): ``down`` (2) when no
service answers, the database cannot be used, the certificate has expired or a disk is
below ``disk_crit`` percent free; ``degraded`` (1) when some service does not answer, the
queue is stuck (overdue) or its oldest message is older than ``queue_warn_age``, the
certificate expires within ``cert_warn_days`` (or cannot be read), a disk is below
``disk_warn`` percent (or cannot be measured), or
the spam scanner is configured and does not answer; else ``ok`` (0).

Invariants: nothing here writes anything (no database, no folder, no certificate is
created); every network probe is bounded by ``PROBE_TIMEOUT``, the database check by
``DB_TIMEOUT``; the probes run at once, so a run takes about one timeout at worst.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailstack import spam
from mailstack.config import Config, ListenAddress
from mailstack.ops.health import (CertificateInfo, DiskInfo, QueueSummary, certificate_info, disk_info,
                                  overdue_grace, queue_summary)

__all__ = [
    "DB_TIMEOUT",
    "PROBE_TIMEOUT",
    "SERVICES",
    "Check",
    "Report",
    "Thresholds",
    "check",
    "check_spam_scanner",
    "probe",
    "format_age",
]

PROBE_TIMEOUT = 5.0  # seconds for one listener: connect, TLS, greeting (Nagios check_smtp: 10)
DB_TIMEOUT = 10.0  # seconds for the database to answer one query
MAX_GREETING = 4096  # bytes of a greeting read before judging it

# Services in the order `mailstack serve` starts them.
SERVICES = ("smtp", "submission", "lmtp", "imap", "pop3", "queue", "http", "managesieve")
OK, DEGRADED, DOWN = "ok", "degraded", "down"
EXIT = {OK: 0, DEGRADED: 1, DOWN: 2}


@dataclass(frozen=True)
class Thresholds:
    cert_warn_days: int = 14  # certbot renews at 30 days left; 14 left means renewal failed twice
    disk_warn: float = 10.0  # percent free
    disk_crit: float = 5.0  # below it the next big message or index rebuild may fail
    queue_warn_age: float = 86400.0  # seconds: a message a day old is worth a look


@dataclass(frozen=True)
class Check:
    """One listener or one dependency: up or not, and what was seen."""

    name: str
    up: bool
    detail: str
    seconds: float | None = None


@dataclass(frozen=True)
class Report:
    status: str
    services: dict[str, list[Check]]
    queue: QueueSummary
    certificate: CertificateInfo
    disk: dict[str, DiskInfo]
    database: Check
    spam: Check | None
    problems: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return EXIT[self.status]

    def as_json(self) -> dict[str, Any]:
        """The contract's ``status --json`` object (and a little more)."""
        cert = self.certificate
        return {
            "status": self.status,
            "services": {
                name: {"up": all(c.up for c in checks), "checks": [
                    {"address": c.name, "up": c.up, "detail": c.detail, "seconds": c.seconds} for c in checks]}
                for name, checks in self.services.items()
            },
            "queue": {"size": self.queue.size, "oldest_seconds": _round(self.queue.oldest_seconds),
                      "deferred": self.queue.deferred, "overdue": self.queue.overdue,
                      "partial": self.queue.partial, "error": self.queue.error},
            "certificates": [{
                "hostname": cert.hostname, "issuer": cert.issuer,
                "not_after": cert.not_after.isoformat() if cert.not_after else None,
                "days_left": cert.days_left, "error": cert.error, "file": cert.file}],
            "disk": {name: {"path": d.path, "free_bytes": d.free_bytes, "total_bytes": d.total_bytes,
                            "free_percent": d.free_percent, "error": d.error} for name, d in self.disk.items()},
            "database": {"up": self.database.up, "detail": self.database.detail},
            "spam": None if self.spam is None else {"up": self.spam.up, "detail": self.spam.detail},
            "problems": self.problems,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# ---------------------------------------------------------------------------
# the services


def enabled(config: Config) -> list[str]:
    """The services ``mailstack serve`` (no names) runs: those with a listener, and the
    queue when smtp or submission runs."""
    out = []
    for name in SERVICES:
        if name == "queue":
            if config.listeners("smtp") or config.listeners("submission"):
                out.append(name)
        elif config.listeners(name):
            out.append(name)
    return out


_GREETING = {
    "smtp": re.compile(rb"^220[ -]"),
    "submission": re.compile(rb"^220[ -]"),
    "lmtp": re.compile(rb"^220[ -]"),
    "imap": re.compile(rb"^\* (OK|PREAUTH)\b"),
    "pop3": re.compile(rb"^\+OK\b"),
    "http": re.compile(rb"^HTTP/1\.[01] \d{3}\b"),
    "managesieve": re.compile(rb'^"IMPLEMENTATION" '),  # RFC 5804 §1.7: the greeting is the capabilities
}
_GOODBYE = {"smtp": b"QUIT\r\n", "submission": b"QUIT\r\n", "lmtp": b"QUIT\r\n", "imap": b"z LOGOUT\r\n",
            "pop3": b"QUIT\r\n", "managesieve": b"LOGOUT\r\n"}


def _target(address: ListenAddress) -> str:
    if address.host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address.host == "::":
        return "::1"
    return address.host


def _client_tls() -> ssl.SSLContext:
    # Only "does it answer over TLS" is asked here; the certificate is checked on its own.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def probe(service: str, address: ListenAddress, implicit_tls: bool, *, hostname: str,
                timeout: float = PROBE_TIMEOUT) -> Check:
    """Connect to one listener and read its greeting (HTTP: ask ``HEAD /``); never raises."""
    label = f"{address}{' (TLS)' if implicit_tls else ''}"
    start = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            tls = _client_tls() if implicit_tls else None
            if address.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(str(address.path), ssl=tls,
                                                                    server_hostname=hostname if tls else None)
            else:
                reader, writer = await asyncio.open_connection(_target(address), address.port, ssl=tls,
                                                               server_hostname=hostname if tls else None)
            if service == "http":
                writer.write(f"HEAD / HTTP/1.0\r\nHost: {hostname}\r\n\r\n".encode())
            line = await reader.readline()
            line = line[:MAX_GREETING].rstrip(b"\r\n")
            pattern = _GREETING.get(service)
            up = bool(line) and (pattern is None or bool(pattern.match(line)))
            if up and service in _GOODBYE:
                writer.write(_GOODBYE[service])
            detail = line.decode("utf-8", "replace")[:200] if line else "closed without a greeting"
            return Check(label, up, detail, round(time.monotonic() - start, 3))
    except TimeoutError:
        return Check(label, False, f"no answer within {timeout:g}s")
    except ssl.SSLError as e:
        return Check(label, False, f"TLS failed: {e.reason or e}")
    except OSError as e:  # asyncio words a refused connect as "Connect call failed (...)": say why
        return Check(label, False, (os.strerror(e.errno) if e.errno else e.strerror or str(e)).lower())
    finally:
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (TimeoutError, OSError, ssl.SSLError):
                pass


# ---------------------------------------------------------------------------
# the database and the spam scanner


def _sqlite_file(url: str) -> Path | None:
    m = re.match(r"^sqlite(?:\+\w+)?:///([^?]+)", url)
    if not m or m.group(1) == ":memory:" or m.group(1).startswith("file:"):
        return None
    return Path(m.group(1))


def check_database(config: Config) -> Check:
    """Open the directory database and read its schema revision (blocking)."""
    from mailstack.directory import Directory, DirectoryError

    path = _sqlite_file(config.database.url)
    if path is not None and not path.is_file():
        return Check("database", False, f"{path}: no such file (has `mailstack serve` ever run?)")
    start = time.monotonic()
    try:
        directory = Directory(config.database.url)
    except DirectoryError as e:
        return Check("database", False, str(e))
    try:
        behind = directory.needs_migration()
    except DirectoryError as e:
        return Check("database", False, str(e))
    finally:
        directory.close()
    seconds = round(time.monotonic() - start, 3)
    if behind:
        return Check("database", False, "schema is not current: `mailstack serve` migrates it at start", seconds)
    return Check("database", True, "answers, schema current", seconds)


async def check_spam_scanner(config: Config) -> Check | None:
    """rspamd (``[spam] rspamd_url``) answering ``/ping`` within ``PROBE_TIMEOUT``;
    ``None`` when no scanner is configured. ``evaluate`` counts a configured scanner that
    is down as ``degraded``: mail still flows, unscanned (``[spam] fail_mode``)."""
    if not config.spam.rspamd_url:
        return None
    start = time.monotonic()
    up = await spam.reachable(config, timeout=PROBE_TIMEOUT)
    seconds = round(time.monotonic() - start, 3)
    where = config.spam.rspamd_url
    return Check("spam", bool(up), f"rspamd answers at {where}" if up else f"rspamd does not answer at {where}",
                 seconds)


# ---------------------------------------------------------------------------
# all of it


async def check(config: Config, thresholds: Thresholds = Thresholds()) -> Report:
    """Run every check at once and judge."""
    names = enabled(config)
    listeners = [(name, addr, tls) for name in names if name != "queue" for addr, tls in config.listeners(name)]
    probes = asyncio.gather(*(probe(n, a, t, hostname=config.hostname) for n, a, t in listeners))
    database = asyncio.wait_for(asyncio.to_thread(check_database, config), DB_TIMEOUT)
    queue = asyncio.to_thread(queue_summary, config.queue.dir, grace=overdue_grace(config.queue.scan_interval))
    cert = asyncio.to_thread(certificate_info, config.tls.cert_file)
    disks = asyncio.to_thread(lambda: {"mail": disk_info(config.storage.maildir_root),
                                       "queue": disk_info(config.queue.dir)})
    spam = check_spam_scanner(config)
    found = await asyncio.gather(probes, database, queue, cert, disks, spam, return_exceptions=True)
    probe_results, db, q, c, d, sp = found
    if isinstance(db, BaseException):
        db = Check("database", False, f"no answer within {DB_TIMEOUT:g}s" if isinstance(db, TimeoutError)
                   else f"{type(db).__name__}: {db}")
    for x in (probe_results, q, c, d, sp):
        if isinstance(x, BaseException):
            raise x
    assert isinstance(probe_results, list) and isinstance(q, QueueSummary)
    assert isinstance(c, CertificateInfo) and isinstance(d, dict) and isinstance(db, Check)
    assert sp is None or isinstance(sp, Check)
    services: dict[str, list[Check]] = {name: [] for name in names}
    for (name, _a, _t), result in zip(listeners, probe_results):
        services[name].append(result)
    if "queue" in services:
        if q.overdue:
            services["queue"].append(Check("queue", False, f"{q.overdue} message(s) overdue: is the queue "
                                           "service running?"))
        else:
            services["queue"].append(Check("queue", True, "no message overdue"))
    return evaluate(services, q, c, d, db, sp, thresholds)


def evaluate(services: dict[str, list[Check]], queue: QueueSummary, cert: CertificateInfo, disk: dict[str, DiskInfo],
             database: Check, spam: Check | None, t: Thresholds) -> Report:
    """The verdict of the module docstring, and one line per problem."""
    down: list[str] = []
    degraded: list[str] = []
    listening = {name: checks for name, checks in services.items() if name != "queue"}
    for name, checks in services.items():
        for c in checks:
            if not c.up:
                degraded.append(f"{name}: {c.name}: {c.detail}" if c.name != name else f"{name}: {c.detail}")
    if listening and not any(c.up for checks in listening.values() for c in checks):
        down.append("no service answers")
    if not database.up:
        down.append(f"database: {database.detail}")
    if queue.error:
        degraded.append(f"queue: {queue.error}")
    elif queue.oldest_seconds is not None and queue.oldest_seconds > t.queue_warn_age:
        degraded.append(f"queue: oldest message is {format_age(queue.oldest_seconds)} old")
    if cert.error is not None:
        degraded.append(f"certificate {cert.file}: {cert.error}")
    elif cert.days_left is not None and cert.days_left < 0:
        down.append(f"certificate {cert.file}: expired on {cert.not_after:%Y-%m-%d}")
    elif cert.days_left is not None and cert.days_left < t.cert_warn_days:
        degraded.append(f"certificate {cert.file}: expires in {cert.days_left} day(s)")
    for name, d in disk.items():
        pct = d.free_percent
        if d.error is not None:
            degraded.append(f"disk {name}: {d.path}: {d.error}")
        elif pct is not None and pct < t.disk_crit:
            down.append(f"disk {name}: {d.path}: only {pct}% free")
        elif pct is not None and pct < t.disk_warn:
            degraded.append(f"disk {name}: {d.path}: only {pct}% free")
    if spam is not None and not spam.up:
        degraded.append(f"spam scanner: {spam.detail}")
    status = DOWN if down else DEGRADED if degraded else OK
    return Report(status, services, queue, cert, disk, database, spam, down + degraded)


def format_age(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m {s % 60}s"
    return f"{s}s"
