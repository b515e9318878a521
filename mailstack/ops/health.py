"""What an operator watches besides the services: the queue, the certificate, the disks.

Read by ``mailstack status`` and by the ``http`` service's ``/metrics`` (as gauges at
scrape time). Blocking file-system reads: call them from asyncio with ``asyncio.to_thread``.

Invariants:
- nothing here writes: a queue, a certificate or a folder that is missing or unreadable
  is reported (``error``), never created or repaired;
- never raises for what it finds on disk: a damaged envelope is skipped, an unreadable
  certificate is an ``error`` string;
- bounded: at most ``QUEUE_SCAN_LIMIT`` envelopes are read per call (the queue's size and
  oldest age stay exact, they come from the file names; ``partial`` says the counts of
  deferred and overdue messages are lower bounds).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mailstack.queue.store import QueueStore, arrival_time

__all__ = [
    "QUEUE_SCAN_LIMIT",
    "CertificateInfo",
    "DiskInfo",
    "QueueSummary",
    "certificate_info",
    "disk_info",
    "overdue_grace",
    "queue_summary",
]

# Envelopes read per look at the queue: a small company's queue holds a few; 10,000 is a
# deliverability incident, and reading them takes ~0.5 s on this project's machine.
QUEUE_SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class QueueSummary:
    size: int  # messages in the queue
    oldest_seconds: float | None  # age of the oldest; None when empty
    deferred: int  # tried at least once and still there
    overdue: int  # due for longer than the grace: no runner is working through the queue
    partial: bool = False  # more than QUEUE_SCAN_LIMIT: deferred and overdue are lower bounds
    error: str | None = None


def overdue_grace(scan_interval: float) -> float:
    """How long past its next attempt a message may wait before the runner counts as stuck:
    three scans (a runner wakes at once on new mail and every ``scan_interval`` otherwise),
    at least a minute (a long delivery round)."""
    return max(60.0, 3 * scan_interval)


def queue_summary(directory: Path, *, grace: float, now: float | None = None,
                  limit: int = QUEUE_SCAN_LIMIT) -> QueueSummary:
    """Size, oldest age, deferred and overdue counts of the queue in ``directory``."""
    now = time.time() if now is None else now
    if not directory.is_dir():
        return QueueSummary(0, None, 0, 0, error=f"{directory}: no such folder")
    store = QueueStore(directory)
    try:
        ids = store.list()  # oldest first: ids begin with their arrival time
    except OSError as e:
        return QueueSummary(0, None, 0, 0, error=f"{directory}: {e.strerror or e}")
    oldest: float | None = None
    deferred = overdue = 0
    for qid in ids[:limit]:
        try:
            env = store.envelope(qid)
        except (OSError, ValueError, TypeError):
            continue  # delivered meanwhile, or not ours to judge
        if oldest is None:
            oldest = env.created
        if env.attempts > 0:
            deferred += 1
        if env.next_attempt and env.next_attempt < now - grace:
            overdue += 1
    if oldest is None and ids:
        oldest = arrival_time(ids[0])
    age = max(0.0, now - oldest) if oldest is not None else None
    return QueueSummary(len(ids), age, deferred, overdue, partial=len(ids) > limit)


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate file, as ``mailstack cert status --json`` describes one."""

    file: str
    hostname: str | None  # the first DNS name (subjectAltName, else the CN)
    names: tuple[str, ...]
    issuer: str | None
    not_after: datetime | None
    days_left: int | None  # whole days; negative once expired
    error: str | None = None

    @property
    def seconds_left(self) -> float | None:
        if self.not_after is None:
            return None
        return self.not_after.timestamp() - time.time()


def certificate_info(path: Path, *, now: float | None = None) -> CertificateInfo:
    """The first certificate of the PEM file ``path`` (the leaf, as served)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        pem = path.read_bytes()
    except OSError as e:
        return CertificateInfo(str(path), None, (), None, None, None, error=f"cannot read: {e.strerror or e}")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        return CertificateInfo(str(path), None, (), None, None, None, error=f"not a PEM certificate: {e}")
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    not_after = cert.not_valid_after_utc
    now = time.time() if now is None else now
    days = math.floor((not_after.timestamp() - now) / 86400)
    return CertificateInfo(str(path), names[0] if names else None, tuple(names), cert.issuer.rfc4514_string(),
                           not_after.astimezone(timezone.utc), days)


@dataclass(frozen=True)
class DiskInfo:
    path: str
    free_bytes: int | None  # what an unprivileged writer (the mailstack user) may still use
    total_bytes: int | None
    error: str | None = None

    @property
    def free_percent(self) -> float | None:
        if not self.total_bytes or self.free_bytes is None:
            return None
        return round(100.0 * self.free_bytes / self.total_bytes, 1)


def disk_info(path: Path) -> DiskInfo:
    """Free and total space of the file system holding ``path`` (statvfs(3))."""
    try:
        st = os.statvfs(path)
    except OSError as e:
        return DiskInfo(str(path), None, None, error=f"{e.strerror or e}")
    return DiskInfo(str(path), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
