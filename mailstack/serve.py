"""The process runner: `mailstack serve [SERVICE ...]` in one asyncio loop.

With ``[server] workers`` > 1 this runs in each worker, and the process started by the
user is their supervisor (``mailstack.supervisor``: shared listeners, replacement,
signals passed on); with ``workers = 1`` nothing of that exists.

What it does, in order: resolve the service names (unknown name: exit 2; a service
this build lacks: exit 1 when named, a warning and a skip when not), prepare what is
missing on disk (``prepare``), start each service, tell systemd ``READY=1`` (when
``NOTIFY_SOCKET`` is set), wait for SIGTERM/SIGINT (SIGHUP: ``reload``), send ``STOPPING=1``, call every
service's ``stop(grace)`` at once and exit 0 once they return or the grace has run out.

Invariants:
- nothing starts before every name resolved and ``prepare`` succeeded;
- a failure is one line on stderr (``mailstack: smtp: cannot listen on ...``), never a
  traceback (that is logged at DEBUG); a service failing to start stops the others, exit 1;
- the stop is bounded: ``stop_grace`` seconds (default 10; ``MAILSTACK_STOP_GRACE``
  overrides) plus one second of slack, after which remaining stops are cancelled;
  a second signal cuts the grace short.

Reload (SIGHUP, ``systemctl reload``): the config file is read again; one that does not
load (or whose certificates do not) is refused with one ERROR line and the running one
stays. What applies live: the certificates (``[tls]`` files, the store, ``hostname`` as
the default name), for new connections; open sessions (an IMAP IDLE, an SMTP transaction)
go on untouched. Everything else (listeners, limits, paths) applies at the next restart:
the reload logs which sections changed and wait for it, as Postfix does for master.cf.

Only ``mailstack.cli.serve`` imports this module: what a service needs from its runner
is in ``mailstack.service`` and ``mailstack.net`` below every service, so services are
imported here by name (``SERVICES``), never the other way round.

Extension/testing hook: ``MAILSTACK_EXTRA_SERVICES="name=module:function[,name=...]"``
adds services to the registry (they run when named, and with no names as well).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from mailstack import net, supervisor
from mailstack.auth import Authenticator
from mailstack.config import Config, ConfigError, load_config
from mailstack.directory import Directory, DirectoryError
from mailstack.directory.mailbus import Bridge
from mailstack.service import RunningService, ServiceContext, ServiceError, StartFunction, limits_for
from mailstack.imap import fts
from mailstack.storage import hooks as storage_hooks
from mailstack.storage.safeio import PRIVATE_UMASK, make_dirs

__all__ = [
    "SERVICES",
    "enabled_services",
    "prepare",
    "reload",
    "run",
    "sd_notify",
]

log = logging.getLogger(__name__)

SERVICES: dict[str, str] = {
    "smtp": "mailstack.smtp.mx:start",
    "submission": "mailstack.smtp.submission:start",
    "lmtp": "mailstack.smtp.lmtp:start",
    "imap": "mailstack.imap.server:start",
    "pop3": "mailstack.pop3.server:start",
    "queue": "mailstack.smtp.queue_runner:start",
    "http": "mailstack.http.server:start",
    "managesieve": "mailstack.managesieve.server:start",
}
EXTRA_SERVICES_ENV = "MAILSTACK_EXTRA_SERVICES"
STOP_GRACE_ENV = "MAILSTACK_STOP_GRACE"
DEFAULT_STOP_GRACE = 10.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# ---------------------------------------------------------------------------
# systemd


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; False when unset or failed.

    sd_notify(3) without libsystemd: one datagram on an AF_UNIX socket; a leading ``@``
    names an abstract socket.
    """
    if _link is not None:  # a worker: its supervisor tells systemd (mailstack.supervisor)
        return _link.notify(state)
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address, e.strerror or e)
        return False
    return True


# ---------------------------------------------------------------------------
# the registry


def registry(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
    """SERVICES plus ``$MAILSTACK_EXTRA_SERVICES`` (``name=module:function``, comma-separated)."""
    env = os.environ if environ is None else environ
    out = dict(SERVICES)
    for item in filter(None, (p.strip() for p in env.get(EXTRA_SERVICES_ENV, "").split(","))):
        name, sep, target = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]*", name.strip()) or ":" not in target:
            raise ServiceError(f"{EXTRA_SERVICES_ENV}: {item!r} is not name=module:function")
        out[name.strip()] = target.strip()
    return out


def enabled_services(config: Config, names: Iterable[str]) -> list[str]:
    """Those of ``names`` the config enables: at least one listener; queue with smtp/submission.

    Services without a config section (extras) count as enabled.
    """
    def has_listeners(service: str) -> bool:
        return bool(config.listeners(service))

    out = []
    for name in names:
        if name == "queue":
            if has_listeners("smtp") or has_listeners("submission"):
                out.append(name)
        elif not hasattr(config, name) or has_listeners(name):
            out.append(name)
    return out


class _NotAvailable(Exception):
    pass


def load_start(name: str, target: str) -> StartFunction:
    """Import ``module:function``; _NotAvailable when the module is not in this build."""
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise _NotAvailable(name) from None
        raise ServiceError(f"service {name} cannot be loaded: {e}") from None
    start = getattr(module, func_name, None)
    if start is None:
        raise _NotAvailable(name)
    return start  # type: ignore[no-any-return]


def resolve(config: Config, names: Sequence[str]) -> list[tuple[str, StartFunction]]:
    """Names -> start functions; ServiceError (``_UsageError`` for an unknown name)."""
    reg = registry()
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise _UsageError(f"unknown service {unknown[0]!r} (choose from {', '.join(reg)})")
    chosen = list(dict.fromkeys(names)) if names else enabled_services(config, reg)
    out = []
    for name in chosen:
        try:
            out.append((name, load_start(name, reg[name])))
        except _NotAvailable:
            if names:
                raise ServiceError(f"service {name} is not available in this build") from None
            log.warning("service %s is not available in this build; skipping it", name)
    return out


class _UsageError(ServiceError):
    pass


# ---------------------------------------------------------------------------
# first start


def prepare(config: Config) -> Directory:
    """Create what is missing: var dirs, Maildir root (0700), queue dir, schema, certificate.

    Idempotent; returns the open (migrated) Directory. Raises ServiceError (one line).
    """
    db_path = _sqlite_path(config.database.url)
    for path, mode in (
        (config.storage.maildir_root, 0o700),
        (config.queue.dir, 0o700),
        *([(db_path.parent, 0o750)] if db_path else []),
    ):
        try:
            make_dirs(path, mode)  # exactly this mode (parents too), whatever the umask
        except OSError as e:
            raise ServiceError(f"cannot create {path}: {(e.strerror or str(e)).lower()}") from None
    try:
        net.ensure_certificate(config.tls, config.hostname)  # logs when it makes one
    except net.TLSError as e:
        raise ServiceError(str(e)) from None

    try:
        directory = Directory.from_config(config)
        try:
            directory.migrate()
        except BaseException:
            directory.close()
            raise
    except DirectoryError as e:
        raise ServiceError(f"database: {e}") from None
    return directory


def _sqlite_path(url: str) -> Path | None:
    m = re.match(r"^sqlite(?:\+\w+)?:///([^?]+)", url)
    if not m or m.group(1) in (":memory:",) or m.group(1).startswith("file:"):
        return None
    return Path(m.group(1))


# ---------------------------------------------------------------------------
# running


def stop_grace(environ: dict[str, str] | os._Environ[str] | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(STOP_GRACE_ENV)
    if raw is None:
        return DEFAULT_STOP_GRACE
    try:
        value = float(raw)
        if not 0 <= value <= 3600:
            raise ValueError
    except ValueError:
        raise ServiceError(f"{STOP_GRACE_ENV}: {raw!r} is not a number of seconds (0-3600)") from None
    return value


_link: supervisor.WorkerLink | None = None  # set in a worker of mailstack.supervisor


def run(config: Config, services: Sequence[str], link: supervisor.WorkerLink | None = None) -> int:
    """Run the named services (empty: every enabled one) until SIGTERM/SIGINT; exit status.

    The process runs under umask 077 (``PRIVATE_UMASK``) whoever starts it: password
    hashes, mail, queue and keys are created private even where a creating call forgot.

    ``[server] workers`` > 1: once the names resolved and ``prepare`` made what was missing,
    this process becomes the supervisor of that many workers (``mailstack.supervisor``);
    ``link`` is given in such a worker, which then runs as below with the supervisor's
    listeners. Extension services (``$MAILSTACK_EXTRA_SERVICES``) run in the workers too.
    """
    global _link
    _link = link
    os.umask(PRIVATE_UMASK)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        grace = stop_grace()
        chosen = resolve(config, services)
        directory = prepare(config)
    except ServiceError as e:
        return _fail(str(e), EXIT_USAGE if isinstance(e, _UsageError) else EXIT_FAILED)
    if link is None and (count := supervisor.worker_count(config)) > 1 and config.path is not None:
        directory.close()  # the workers open their own; the supervisor needs none
        return supervisor.supervise(config, services, count, grace, sd_notify)
    if link is not None:
        net.use_listener_source(link.listener, log_listeners=link.index == 0)
    # mail stored by this process (LMTP, MX, submission, APPEND) is full-text indexed at once
    indexer = fts.Indexer() if config.imap.full_text_index else None
    if indexer is not None:
        storage_hooks.add(indexer)
    try:
        try:
            tls = net.load_tls_contexts(config.tls, config.hostname)
        except net.TLSError as e:
            return _fail(str(e))
        return asyncio.run(_serve(config, directory, tls, chosen, grace))
    finally:
        if indexer is not None:
            storage_hooks.remove(indexer)
            indexer.close()
        directory.close()


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"mailstack: {message}", file=sys.stderr, flush=True)
    return status


async def _serve(
    config: Config,
    directory: Directory,
    tls: net.TLSContexts,
    chosen: Sequence[tuple[str, StartFunction]],
    grace: float,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hurry = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.info("%s again: not waiting any longer", signal.Signals(signum).name)
            hurry.set()
        else:
            log.info("%s: stopping", signal.Signals(signum).name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    live = _Live(config)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        if stop.is_set():
            log.info("SIGHUP while stopping: ignored")
            return
        task = loop.create_task(reload(live, tls))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if _link is not None:
        def orphaned() -> None:
            if not stop.is_set():
                log.warning("the supervisor is gone: stopping")
                stop.set()

        _link.watch(loop, orphaned)
        try:
            await _link.metrics.start()  # one scrape counts every worker
        except OSError as e:
            log.warning("metrics of the other workers will not be seen here: %s", e.strerror or e)

    auth = Authenticator.from_config(config, directory)
    bridge = Bridge.for_directory(directory.engine, config.storage.maildir_root)  # new mail between hosts (PostgreSQL)
    running: list[RunningService] = []
    failure: str | None = None
    for name, start in chosen:
        if stop.is_set():
            break
        ctx = ServiceContext(config=config, directory=directory, tls=tls, limits=limits_for(config, name), auth=auth)
        try:
            running.append(await start(ctx))
        except (net.ListenError, ServiceError) as e:
            failure = f"{name}: {e}"
        except OSError as e:
            failure = f"{name}: {(e.strerror or str(e)).lower()}"
        except Exception as e:
            log.debug("%s failed to start", name, exc_info=True)
            failure = f"{name}: failed to start: {type(e).__name__}: {e}"
        if failure:
            break

    if bridge is not None:  # every IDLE notifier of this process hears other hosts' deliveries
        bridge.listen([n.poke for n in (getattr(s, "notifier", None) for s in running) if n is not None])
    if failure is None and not stop.is_set():
        names = ", ".join(s.name for s in running) or "no services"
        sd_notify(f"READY=1\nSTATUS=serving {names}")
        log.info("ready: %s", names)
        await stop.wait()

    if _link is not None:
        net.close_shared_listeners()  # before STOPPING=1: then no worker accepts any more
    sd_notify("STOPPING=1")
    for t in list(reloads):
        t.cancel()
    await _stop_all(running, grace, hurry)
    if bridge is not None:
        await bridge.close()
    await asyncio.to_thread(auth.close)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a late `systemctl reload` must not kill the exit
    if _link is not None:
        _link.unwatch(loop)
        await _link.metrics.stop()
    if failure is not None:
        return _fail(failure)
    log.info("stopped")
    return EXIT_OK


class _Live:
    """The config in force (what a reload compares against) and the lock that keeps two
    reloads from interleaving."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = asyncio.Lock()


LIVE_SECTIONS = frozenset({"tls", "path"})  # what a reload applies; the rest waits for a restart


async def reload(live: _Live, tls: net.TLSContexts) -> bool:
    """Read the config and the certificates again; True when applied, False when refused.

    Refused (ERROR line, nothing changes): a config that does not load, a default
    certificate pair that does not. A store pair that does not load keeps its old context.
    """
    async with live.lock:
        old = live.config
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            if old.path is None:
                raise ConfigError("no config file to read again")
            new = await asyncio.to_thread(load_config, old.path)
            await asyncio.to_thread(net.ensure_certificate, new.tls, new.hostname)
            certs = await asyncio.to_thread(net.load_certificate_set, new.tls, new.hostname, tls.certificates)
        except (ConfigError, net.TLSError) as e:
            log.error("reload refused, the running configuration stays: %s", e)
            sd_notify("READY=1")
            return False
        except Exception as e:  # e.g. the store unreadable: still one line, never a traceback
            log.debug("reload failed", exc_info=True)
            log.error("reload refused, the running configuration stays: %s: %s", type(e).__name__, e)
            sd_notify("READY=1")
            return False
        tls.swap(certs)
        live.config = new
        sd_notify("READY=1")
        pending = [f.name for f in dataclasses.fields(Config)
                   if f.name not in LIVE_SECTIONS and getattr(old, f.name) != getattr(new, f.name)]
        names = ", ".join(sorted(n for n in certs.files if n)) or "none"
        log.info("reloaded: certificates (per-name: %s)%s", names,
                 f"; changed [{'], ['.join(pending)}] apply at the next restart" if pending else "")
        return True


async def _stop_all(running: Sequence[RunningService], grace: float, hurry: asyncio.Event) -> None:
    """Every ``stop(grace)`` at once; bounded by grace + 1 s, or cut short by ``hurry``."""
    if not running:
        return
    tasks: dict[asyncio.Future[object], RunningService] = {
        asyncio.ensure_future(_stop_one(s, grace)): s for s in running}
    hurried: asyncio.Future[object] = asyncio.ensure_future(hurry.wait())
    deadline = _loop_time() + grace + 1.0
    pending = set(tasks)
    while pending and not hurry.is_set():
        timeout = deadline - _loop_time()
        if timeout <= 0:
            break
        _, pending = await asyncio.wait(pending | {hurried}, timeout=timeout,
                                        return_when=asyncio.FIRST_COMPLETED)
        pending.discard(hurried)
    hurried.cancel()
    for t in pending:
        log.warning("%s: did not stop within %.0fs; cancelled", tasks[t].name, grace)
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)


async def _stop_one(service: RunningService, grace: float) -> object:
    try:
        await service.stop(grace)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s: error while stopping", service.name)
    return None


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
