"""When to renew, and the renewal itself (``renew``) and its loop in ``serve`` (``run``).

Rules (what certbot does for Let's Encrypt, written down here):
- a certificate is due when it is missing, unreadable, self-signed (the pair made at
  first start), does not name every configured host, or has a third of its lifetime
  left or less (Let's Encrypt's 90 days: renewed at 30 days left);
- the loop checks at start and every ``CHECK_INTERVAL`` (a day); after a failure it
  retries after ``backoff(n)``: ``BACKOFF_FIRST`` doubling up to ``BACKOFF_MAX``, so a CA
  that is down is not hammered (Let's Encrypt's failed-validation limit is 5 an hour);
- a failure never touches the installed pair: the old (or self-signed) certificate keeps
  serving; the new pair is only installed once the CA has signed it;
- one order at a time across processes (``renew.lock``), and whoever waits re-checks:
  a certificate renewed meanwhile is not ordered twice;
- ``serve`` never waits for a CA to stop: the order runs in a daemon thread that the
  process may leave behind; the install (two renames) happens under a lock that the
  stop takes, after telling the thread to install nothing more, so a stop never cuts
  an install in half (a new key beside the old certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mailstack.acme import client, store
from mailstack.config import Config
from mailstack.storage.safeio import make_dirs

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "CHECK_INTERVAL", "Outcome", "backoff", "due", "hostnames", "renew", "run"]

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


def renew(config: Config, domains: Iterable[str], force: bool = False,
          stopping: threading.Event | None = None, install_lock: threading.Lock | None = None) -> Outcome:
    """Order and install a certificate if it is due (or ``force``); blocking.

    Raises ``client.ACMEError`` when the order fails (nothing installed then).
    ``stopping`` set: the new pair is not installed; the install runs under ``install_lock``.
    """
    wanted = hostnames(config, domains)
    make_dirs(store.acme_dir(config), 0o700)
    fd = os.open(store.lock_path(config), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
        reason = due(read_certificate(config.tls.cert_file), wanted, datetime.now(timezone.utc))
        if reason is None and not force:
            return Outcome(False, "not due")
        issued = client.issue(config, wanted)
        with install_lock or contextlib.nullcontext():
            if stopping is not None and stopping.is_set():
                raise client.ACMEError("stopping: the new certificate was not installed")
            store.install(config, issued.fullchain_pem, issued.key_pem)
        log.info("acme: installed a certificate for %s (%s)", ", ".join(wanted), reason or "forced")
        return Outcome(True, reason or "forced")
    finally:
        os.close(fd)


async def run(config: Config, domains: Callable[[], Iterable[str]],
              installed: Callable[[], None] | None = None) -> None:
    """The renewal loop of ``serve``: until cancelled. ``installed`` is called after a new
    pair was installed (the reload hook; until then the new pair serves from the next start)."""
    failures = 0
    stopping, install_lock = threading.Event(), threading.Lock()
    while True:
        try:
            outcome = await _in_daemon_thread(lambda: renew(config, list(domains()), False, stopping, install_lock))
        except asyncio.CancelledError:
            stopping.set()
            with install_lock:  # an install under way (two renames) finishes first
                pass
            raise
        except Exception as e:  # ACMEError, OSError, a directory that is down: logged, retried
            failures += 1
            wait = backoff(failures)
            log.warning("acme: renewal failed (%d in a row), the current certificate stays; "
                        "retrying in %ds: %s", failures, wait, e)
        else:
            failures = 0
            wait = CHECK_INTERVAL
            if outcome.renewed and installed is not None:
                installed()
        await asyncio.sleep(wait)


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
