"""When to renew, and the renewal itself (``renew``) and its loop in ``serve`` (``run``).

Rules (what certbot does for Let's Encrypt, written down here):
- one certificate per host name (the mail host, ``mta-sts.<domain>``, ...), each from its
  own order and installed in the SNI store under its name (``net.install_certificate``);
  the mail host's is also written to ``[tls] cert_file``/``key_file``, the default pair;
- a host's certificate is due when it is missing, unreadable, self-signed (the pair made
  at first start), does not name the host, or has a third of its lifetime left or less
  (Let's Encrypt's 90 days: renewed at 30 days left);
- the loop checks at start and every ``CHECK_INTERVAL`` (a day); after a failure it
  retries *that host* after ``backoff(n)``: ``BACKOFF_FIRST`` doubling up to
  ``BACKOFF_MAX``, so a CA that is down is not hammered (Let's Encrypt's
  failed-validation limit is 5 an hour); the other hosts keep their own schedule;
- a failure never touches an installed pair: the old (or self-signed) certificate keeps
  serving; a new pair is only installed once the CA has signed it, and a host that fails
  never stops the others from being ordered (each outcome is reported on its own);
- one order at a time across processes (``renew.lock``, taken per host), and whoever
  waits re-checks: a certificate renewed meanwhile is not ordered twice;
- ``serve`` never waits for a CA to stop: the order runs in a daemon thread that the
  process may leave behind; the install (renames) happens under a lock that the
  stop takes, after telling the thread to install nothing more, so a stop never cuts
  an install in half (a new key beside the old certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mailstack import net
from mailstack.acme import client, store
from mailstack.config import Config
from mailstack.storage.safeio import make_dirs

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "CHECK_INTERVAL", "HostOutcome", "Outcome", "Schedule", "backoff",
           "certificate_path", "current", "due", "hostnames", "renew", "renew_host", "run"]

log = logging.getLogger(__name__)

CHECK_INTERVAL = 86400.0  # seconds: daily, as certbot's timer
BACKOFF_FIRST = 600.0  # ten minutes after the first failure ...
BACKOFF_MAX = 86400.0  # ... doubling up to a day


@dataclass(frozen=True)
class CertTimes:
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    self_signed: bool


@dataclass(frozen=True)
class Outcome:
    renewed: bool
    detail: str  # why (not) renewed, one line


def hostnames(config: Config, domains: Iterable[str]) -> list[str]:
    """``[acme] hostnames``, or by default the host name plus ``mta-sts.`` and
    ``autoconfig.`` of each local domain (what the ``http`` service answers for)."""
    if config.acme.hostnames:
        return list(dict.fromkeys(h.lower() for h in config.acme.hostnames))
    names = [config.hostname.lower()]
    for d in sorted(domains):
        names += [f"mta-sts.{d}", f"autoconfig.{d}"]
    return list(dict.fromkeys(names))


def read_certificate(path: Path) -> CertTimes | None:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n).lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertTimes(names, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.issuer == cert.subject)


def due(cert: CertTimes | None, wanted: Iterable[str], now: datetime) -> str | None:
    """Why ``cert`` should be renewed now, or None when it is good for a while."""
    if cert is None:
        return "no readable certificate"
    if cert.self_signed:
        return "the certificate is self-signed"
    missing = [h for h in wanted if h.lower() not in cert.names]
    if missing:
        return f"the certificate does not name {', '.join(missing)}"
    left = cert.not_after - now
    if left * 3 <= cert.not_after - cert.not_before:
        return f"a third of its lifetime or less is left ({max(0, left.days)} day(s))"
    return None


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
    return float(min(BACKOFF_FIRST * 2.0 ** max(0, min(failures - 1, 20)), BACKOFF_MAX))


def certificate_path(config: Config, host: str) -> Path:
    """Where ``host``'s own certificate is: its folder in the SNI store."""
    return net.certificate_dir(config.tls) / net.normalize_hostname(host) / "cert.pem"


def current(config: Config, host: str) -> CertTimes | None:
    """``host``'s own certificate; for the mail host, ``[tls] cert_file`` when the store
    has none (installs before one certificate per host, or a pair put there by hand)."""
    own = read_certificate(certificate_path(config, host))
    if own is None and host == config.hostname.rstrip(".").lower():
        return read_certificate(config.tls.cert_file)
    return own


@dataclass(frozen=True)
class HostOutcome:
    host: str
    renewed: bool
    detail: str  # why (not) renewed, or why it failed: one line
    failed: bool = False


def renew_host(config: Config, host: str, force: bool = False, stopping: threading.Event | None = None,
               install_lock: threading.Lock | None = None) -> Outcome:
    """Order and install ``host``'s certificate if it is due (or ``force``); blocking.

    Raises ``client.ACMEError`` (or ``net.TLSError``, ``OSError``) when that fails: nothing
    installed then. ``stopping`` set: the new pair is not installed; the install runs under
    ``install_lock``.
    """
    make_dirs(store.acme_dir(config), 0o700)
    fd = os.open(store.lock_path(config), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
        reason = due(current(config, host), [host], datetime.now(timezone.utc))
        if reason is None and not force:
            return Outcome(False, "not due")
        issued = client.issue(config, [host])
        with install_lock or contextlib.nullcontext():
            if stopping is not None and stopping.is_set():
                raise client.ACMEError("stopping: the new certificate was not installed")
            net.install_certificate(config.tls, host, issued.fullchain_pem, issued.key_pem)
            if host == config.hostname.rstrip(".").lower():
                store.install(config, issued.fullchain_pem, issued.key_pem)  # the default pair too
        log.info("acme: installed a certificate for %s (%s)", host, reason or "forced")
        return Outcome(True, reason or "forced")
    finally:
        os.close(fd)


def renew(config: Config, domains: Iterable[str], force: bool = False, only: Iterable[str] = (),
          stopping: threading.Event | None = None, install_lock: threading.Lock | None = None) -> list[HostOutcome]:
    """``renew_host`` for every certified name (or those of ``only``), one after the other;
    a failure is that host's outcome (``failed``), never the end of the others'."""
    hosts = hostnames(config, domains)
    if only:
        hosts = [h for h in hosts if h in {o.rstrip(".").lower() for o in only}]
    outcomes = []
    for host in hosts:
        try:
            outcome = renew_host(config, host, force, stopping, install_lock)
        except (client.ACMEError, net.TLSError, ValueError) as e:
            outcomes.append(HostOutcome(host, False, str(e), failed=True))
        except OSError as e:
            outcomes.append(HostOutcome(host, False, f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), failed=True))
        else:
            outcomes.append(HostOutcome(host, outcome.renewed, outcome.detail))
    return outcomes


@dataclass
class Schedule:
    """When each host is checked next: no I/O, times in ``time.monotonic`` seconds.

    A success (renewed or not due) waits ``CHECK_INTERVAL``; the n-th failure in a row of a
    host waits ``backoff(n)`` for that host alone. A host never seen is due at once.
    """

    next_at: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def due_hosts(self, hosts: Iterable[str], now: float) -> list[str]:
        return [h for h in hosts if self.next_at.get(h, now) <= now]

    def succeeded(self, host: str, now: float) -> None:
        self.failures.pop(host, None)
        self.next_at[host] = now + CHECK_INTERVAL

    def failed(self, host: str, now: float) -> float:
        """Record a failure of ``host``; the seconds until its next attempt."""
        n = self.failures[host] = self.failures.get(host, 0) + 1
        wait = backoff(n)
        self.next_at[host] = now + wait
        return wait

    def sleep(self, hosts: Iterable[str], now: float) -> float:
        """Seconds until the next host is due (at most ``CHECK_INTERVAL``, at least 1)."""
        times = [self.next_at.get(h, now) for h in hosts]
        return max(1.0, min([t - now for t in times] + [CHECK_INTERVAL]))


async def run(config: Config, domains: Callable[[], Iterable[str]],
              installed: Callable[[], None] | None = None) -> None:
    """The renewal loop of ``serve``: until cancelled. ``installed`` is called after each new
    pair was installed (the reload hook; until then the new pair serves from the next start)."""
    schedule = Schedule()
    stopping, install_lock = threading.Event(), threading.Lock()
    while True:
        try:
            hosts = hostnames(config, list(domains()))
        except Exception as e:  # the directory unreadable: try again later
            log.warning("acme: cannot list the host names to certify: %s", e)
            await asyncio.sleep(BACKOFF_FIRST)
            continue
        for host in schedule.due_hosts(hosts, time.monotonic()):
            try:
                outcome = await _in_daemon_thread(
                    functools.partial(renew_host, config, host, False, stopping, install_lock))
            except asyncio.CancelledError:
                stopping.set()
                with install_lock:  # an install under way (renames) finishes first
                    pass
                raise
            except Exception as e:  # ACMEError, OSError, a directory that is down: logged, retried
                wait = schedule.failed(host, time.monotonic())
                log.warning("acme: renewal for %s failed (%d in a row), its current certificate stays; "
                            "retrying in %ds: %s", host, schedule.failures[host], wait, e)
            else:
                schedule.succeeded(host, time.monotonic())
                if outcome.renewed and installed is not None:
                    installed()
        await asyncio.sleep(schedule.sleep(hosts, time.monotonic()))


async def _in_daemon_thread(fn: Callable[[], Outcome]) -> Outcome:
    """``fn()`` in a daemon thread: unlike ``asyncio.to_thread``, the process does not wait
    for it at exit (a CA that does not answer must not hold up a stop)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Outcome] = loop.create_future()

    def settle(result: Outcome | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(), None
        except BaseException as e:  # handed to the loop, which logs it
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="acme-renewal", daemon=True).start()
    return await future
