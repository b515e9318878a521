"""Several worker processes sharing the listeners: ``[server] workers`` for ``mailstack serve``.

``mailstack serve`` with ``workers`` > 1 (0 = one per CPU core this process may run on)
is a supervisor plus that many workers. Each worker is an ordinary single-process
``mailstack serve`` (``mailstack.serve.run``: every chosen service, its own event loop,
database engine and thread pools); the supervisor serves nothing itself. ``workers = 1``
is exactly the single process of before: no supervisor at all.

Choices, and why:

- **Spawn, not fork.** A worker is ``python -m mailstack --config FILE serve ...`` started
  with ``subprocess`` (``pass_fds``), so no event loop, SQLAlchemy engine, thread or lock
  of the supervisor ever leaks into a worker, and a replacement starts as cleanly as the
  first. The cost is an interpreter start per worker (about a second).
- **Inherited sockets, not SO_REUSEPORT.** Every listener is bound once, by the
  supervisor, when the first worker asks for it (``net.use_listener_source``: every
  service opens its listeners through ``net.start_listener``, so services need no change);
  the socket is passed to each worker over its channel (SCM_RIGHTS) and all workers accept
  from the one queue. A ``unix:`` socket (LMTP) cannot be shared any other way, a worker
  that dies leaves no queue of accepted-but-lost connections behind (each SO_REUSEPORT
  socket has its own), and a second ``mailstack serve`` still gets "address already in
  use" instead of silently sharing the port. Errors read as before: the worker that asked
  raises ``cannot listen on ADDRESS: REASON`` under its service's name.
- **The first worker starts alone**, the others once it is ready: a listener or service
  that cannot start fails once, with the one line of that worker, and ``serve`` exits
  with that worker's status before anything else runs.
- **One config for the life of the supervisor.** Workers do not read the file at start:
  they parse the bytes the supervisor read (an anonymous memfd), so a replacement runs
  what the others run even when the file was edited since; a reload (below) then brings
  the live parts up to date. Listeners, limits and ``workers`` change at a restart, as
  for the single process.
- **The channel.** Each worker holds one end of a SOCK_SEQPACKET pair: ``L<address>``
  asks for a listener (answer ``+`` with the fd, or ``-<reason>``), ``N<state>`` carries
  what the single process would tell systemd (``READY=1``, ``RELOADING=1``,
  ``STOPPING=1``; ``serve.sd_notify`` sends it here in a worker). The supervisor's end
  closing (it died, even of SIGKILL) makes the worker stop as on SIGTERM.

Supervision:

- READY=1 (with ``STATUS=serving ... (N workers)``) goes to systemd once every worker is
  ready; MAINPID is the supervisor (only it talks to ``$NOTIFY_SOCKET``);
- a worker that exits while nothing asked it to is started again, after ``backoff(n)``;
  one that dies ``MAX_QUICK_DEATHS`` times in a row before it was ready or within
  ``QUICK_DEATH`` seconds of its start stops the whole serve: one line, exit 1;
- SIGTERM/SIGINT: the supervisor closes its copies of the listeners, passes the signal
  on (a second one too: it cuts the workers' grace short), says STOPPING=1 once every
  worker said it, waits up to the grace plus ``STOP_SLACK`` for them to exit (then
  SIGKILL), and exits 0;
- SIGHUP: the supervisor loads the file and its certificates first; one that does not
  load is refused with one ERROR line and no worker hears of it; otherwise every worker
  gets SIGHUP (each reloads as the single process does and names what waits for a
  restart), and READY=1 follows once all of them answered. A worker started after a
  reload is sent SIGHUP as soon as it is ready;
- certificates that change on disk (checked every ``CERT_WATCH`` seconds: the ``[tls]``
  pair and the per-name store) are such a reload too: an ACME renewal is ordered and
  installed by whichever worker's renewal loop got ``renew.lock`` first, and every other
  worker must serve the new pair as well, not only after the next ``systemctl reload``.

Duties that must happen once are given to no chosen worker: every worker runs every
service, and each duty is kept to one at a time by a lock on disk, which also holds for
several hosts sharing the files: the queue runner claims each message (``queue.claim``;
an enqueue wakes every runner through ``<queue>/.wake``, the first claim wins), the spam
learner drains under ``.lock``, ACME orders under ``renew.lock`` (and re-checks after
waiting; the certificate watch below brings the others along), TLS-RPT days are sent under
``<queue>/tlsrpt/.send.lock`` (``QueueRunner.send_tls_reports``), a Maildir's ``tmp/`` is
cleaned by whoever looks (a file already gone is skipped). Per worker, by design: the credential cache, the
connection caps (``[smtp] max_connections`` ... count one worker's connections: the
kernel spreads connections over the workers), the IMAP per user+IP session cap
(``imap.userip``). Log lines carry the process id (``[pid] INFO name: ...``) when workers > 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path

from mailstack import metrics, net
from mailstack.config import Config, ConfigError, ListenAddress, config_from_dict, load_config, parse_listen

__all__ = [
    "MAX_QUICK_DEATHS",
    "QUICK_DEATH",
    "SharedMetrics",
    "WORKER_ENV",
    "WorkerLink",
    "backoff",
    "supervise",
    "worker_count",
    "worker_link",
]

log = logging.getLogger(__name__)

WORKER_ENV = "MAILSTACK_WORKER"  # "<index>:<channel fd>:<config fd>:<metrics dir>": set by the supervisor only
METRICS_SAVE = 10.0  # seconds between two saves of a worker's counters (what survives its kill -9)
METRICS_TIMEOUT = 5.0  # seconds a scrape waits for another worker's counters
QUICK_DEATH = 10.0  # seconds: a worker that dies sooner after its start "died at once"
MAX_QUICK_DEATHS = 5  # in a row, one slot: the whole serve stops (a crash loop helps nobody)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # seconds before a replacement: doubling per quick death
START_TIMEOUT = 120.0  # seconds a replacement may take to be ready before it counts as dead
RELOAD_TIMEOUT = 60.0  # seconds the supervisor waits for the workers' reloads
STOP_SLACK = 5.0  # seconds past the grace before a worker that has not exited is killed
CERT_WATCH = 10.0  # seconds between two looks at the certificate files (a change: every worker reloads)
MAX_MESSAGE = 4096  # bytes of one channel message


def worker_count(config: Config) -> int:
    """``[server] workers``, 0 resolved to the CPUs this process may run on (affinity)."""
    if config.server.workers:
        return config.server.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def backoff(quick_deaths: int) -> float:
    """Seconds before starting the replacement of a worker that died ``quick_deaths`` times
    in a row right after its start (0: it had run for a while: at once)."""
    if quick_deaths <= 0:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (quick_deaths - 1)))


def _describe(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def load_snapshot(path: Path) -> tuple[bytes, Config]:
    """The config file's bytes and the config they make (what every worker will parse)."""
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return raw, config_from_dict(data, path)


# ---------------------------------------------------------------------------
# the worker's end


class WorkerLink:
    """A worker's channel to its supervisor (see the module docstring)."""

    def __init__(self, index: int, channel: socket.socket, config_fd: int, metrics_dir: Path) -> None:
        self.index = index
        self.channel = channel
        self.config_fd = config_fd
        self.metrics = SharedMetrics(metrics_dir)
        self._lock = threading.Lock()

    def config(self, path: Path) -> Config:
        """The supervisor's config (its bytes, read from the memfd), paths relative to ``path``."""
        size = os.fstat(self.config_fd).st_size
        raw = os.pread(self.config_fd, size, 0)
        return config_from_dict(tomllib.loads(raw.decode("utf-8")), path.resolve())

    def listener(self, address: ListenAddress) -> socket.socket:
        """The supervisor's listening socket for ``address``; ListenError when it has none."""
        with self._lock:
            try:
                self.channel.send(b"L" + str(address).encode())
                msg, fds, _flags, _addr = socket.recv_fds(self.channel, MAX_MESSAGE, 1)
            except OSError as e:
                raise net.ListenError(address, f"no answer from the supervisor: {e.strerror or e}") from None
        if msg == b"+" and fds:
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            return sock
        for fd in fds:
            os.close(fd)
        raise net.ListenError(address, msg[1:].decode("utf-8", "replace") or "the supervisor is gone")

    def notify(self, state: str) -> bool:
        """What ``sd_notify`` would tell systemd, told to the supervisor instead."""
        with self._lock:
            try:
                self.channel.send(b"N" + state.encode()[: MAX_MESSAGE - 1])
            except OSError:
                return False
        return True

    def watch(self, loop: asyncio.AbstractEventLoop, gone: Callable[[], None]) -> None:
        """Call ``gone()`` (once) when the supervisor's end closes: it died."""
        fd = self.channel.fileno()

        def readable() -> None:
            try:
                data = self.channel.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                gone()

        loop.add_reader(fd, readable)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.channel.fileno())


class SharedMetrics:
    """One scrape counts every worker (``metrics.set_peers``).

    Each worker answers on ``<dir>/<pid>.sock`` with its live snapshot (JSON) and saves it to
    ``<dir>/<pid>.json`` every ``METRICS_SAVE`` seconds and when it stops; the worker that is
    scraped asks every other one, and takes the saved file of one that does not answer (it
    died: its counts stay, its open connections do not; what it counted after its last save
    is lost, which Prometheus reads as a counter reset). ``<dir>`` is the supervisor's, new
    at each start and removed when it exits (prometheus_client's multiprocess directory, in
    JSON: our counters are not prometheus_client's objects).
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pid = os.getpid()
        self.server: asyncio.AbstractServer | None = None
        self.saver: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._answer, path=str(self.dir / f"{self.pid}.sock"))
        self.saver = asyncio.ensure_future(self._save_every())
        metrics.set_peers(self.peers)

    async def stop(self) -> None:
        metrics.set_peers(None)
        if self.saver is not None:
            self.saver.cancel()
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(OSError):
            (self.dir / f"{self.pid}.sock").unlink()
        await asyncio.to_thread(self._save)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(metrics.to_json(metrics.snapshot())).encode())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _save_every(self) -> None:
        while True:
            await asyncio.sleep(METRICS_SAVE)
            await asyncio.to_thread(self._save)

    def _save(self) -> None:
        tmp = self.dir / f".{self.pid}.json.tmp"
        try:
            tmp.write_text(json.dumps(metrics.to_json(metrics.snapshot())))
            os.replace(tmp, self.dir / f"{self.pid}.json")
        except OSError as e:
            log.warning("cannot save this worker's metrics in %s: %s", self.dir, e.strerror or e)

    def peers(self) -> list[metrics.Snapshot]:
        """Every other worker's snapshot (blocking: ``metrics.render`` runs in a thread)."""
        out: list[metrics.Snapshot] = []
        try:
            names = os.listdir(self.dir)
        except OSError:
            return out
        pids = {n.split(".")[0] for n in names if n.endswith((".sock", ".json")) and n.split(".")[0].isdigit()}
        for pid in sorted(pids - {str(self.pid)}):
            snap = self._ask(self.dir / f"{pid}.sock")
            if snap is None:
                try:
                    snap = metrics.from_json(json.loads((self.dir / f"{pid}.json").read_text()))
                except (OSError, ValueError):
                    continue
                snap = metrics.Snapshot(snap.counters, snap.histograms, {})  # it is gone: nothing open
            out.append(snap)
        return out

    @staticmethod
    def _ask(path: Path) -> metrics.Snapshot | None:
        if not path.exists():
            return None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(METRICS_TIMEOUT)
                s.connect(str(path))
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return metrics.from_json(json.loads(b"".join(chunks)))
        except (OSError, ValueError):
            return None


def worker_link(environ: Mapping[str, str] | None = None) -> WorkerLink | None:
    """This process's link to its supervisor, None when it is not a worker (the variable is
    taken out of ``os.environ``: a program this worker runs is no worker)."""
    raw = os.environ.pop(WORKER_ENV, "") if environ is None else environ.get(WORKER_ENV, "")
    if not raw:
        return None
    try:
        index, channel_fd, config_fd, metrics_dir = raw.split(":", 3)
        channel = socket.socket(fileno=int(channel_fd))
        return WorkerLink(int(index), channel, int(config_fd), Path(metrics_dir))
    except (ValueError, OSError):
        raise ConfigError(f"{WORKER_ENV}: {raw!r} is not set by a mailstack supervisor") from None


# ---------------------------------------------------------------------------
# the supervisor's end


@dataclasses.dataclass(eq=False)
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    channel: socket.socket
    started: float
    generation: int  # the reloads it has seen
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    answered: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # a READY=1 after a reload
    stopping: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    exited: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    status: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """Runs ``count`` workers until SIGTERM/SIGINT (see the module docstring)."""

    def __init__(self, config: Config, raw: bytes, services: Sequence[str], count: int, grace: float,
                 notify: Callable[[str], bool]) -> None:
        assert config.path is not None
        self.config = config
        self.raw = raw
        self.services = list(services)
        self.count = count
        self.grace = grace
        self.notify = notify
        self.workers: dict[int, _Worker] = {}
        self.quick_deaths: dict[int, int] = {}
        self.listeners: dict[str, socket.socket] = {}
        self.generation = 0
        self.stop = asyncio.Event()
        self.stop_signal = signal.SIGTERM
        self.fatal: str | None = None
        self.status = 0
        self.reload_lock = asyncio.Lock()
        self.cert_files: frozenset[tuple[str, int, int]] = frozenset()
        self.tasks: set[asyncio.Task[object]] = set()
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="mailstack-metrics-"))  # 0700, new at each start
        self.config_fd = os.memfd_create("mailstack-config")
        view = memoryview(raw)
        while view:
            view = view[os.write(self.config_fd, view):]

    # -- processes ---------------------------------------------------------------------

    def _argv(self) -> list[str]:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            level = "INFO"
        return [sys.executable, "-m", "mailstack", "--config", str(self.config.path), "serve",
                "--log-level", level, *self.services]

    async def _spawn(self, index: int) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", WORKER_ENV)}
        env[WORKER_ENV] = f"{index}:{theirs.fileno()}:{self.config_fd}:{self.metrics_dir}"
        try:
            # its own session: a ^C in a terminal reaches the supervisor only, which passes it on once
            proc = await asyncio.create_subprocess_exec(
                *self._argv(), env=env, pass_fds=(theirs.fileno(), self.config_fd), start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = _Worker(index, proc, ours, time.monotonic(), 0)  # it parses the config of the start
        self.workers[index] = worker
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_message, worker)
        self._task(self._watch(worker))
        log.info("worker %d started: pid %d", index, proc.pid)
        return worker

    def _task(self, coro: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_message(self, worker: _Worker) -> None:
        try:
            msg = worker.channel.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            msg = b""
        if not msg:  # the worker closed its end (it is exiting)
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            return
        kind, body = msg[:1], msg[1:].decode("utf-8", "replace")
        if kind == b"L":
            self._answer_listener(worker, body)
        elif kind == b"N":
            self._on_notify(worker, body)

    def _answer_listener(self, worker: _Worker, text: str) -> None:
        try:
            address = parse_listen(text, self.config.base_dir)
            sock = self.listeners.get(str(address))
            if sock is None:
                sock = self.listeners[str(address)] = net.bind_listener(address)
            socket.send_fds(worker.channel, [b"+"], [sock.fileno()])
        except net.ListenError as e:
            self._send(worker, b"-" + e.reason.encode())
        except ValueError as e:
            self._send(worker, b"-" + str(e).encode())
        except OSError as e:
            self._send(worker, b"-" + (e.strerror or str(e)).lower().encode())

    @staticmethod
    def _send(worker: _Worker, msg: bytes) -> None:
        with contextlib.suppress(OSError):
            worker.channel.send(msg)

    def _on_notify(self, worker: _Worker, state: str) -> None:
        fields = dict(line.partition("=")[::2] for line in state.splitlines())
        if fields.get("READY") == "1":
            if not worker.ready.is_set():
                worker.status = fields.get("STATUS", "")
                worker.ready.set()
            else:
                worker.answered.set()
        if fields.get("STOPPING") == "1":
            worker.stopping.set()

    async def _watch(self, worker: _Worker) -> None:
        returncode = await worker.proc.wait()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(worker.channel.fileno())
        worker.channel.close()
        with contextlib.suppress(OSError):  # prometheus_client's mark_process_dead: its saved counts stay
            (self.metrics_dir / f"{worker.pid}.sock").unlink()
        worker.exited.set()
        if self.stop.is_set():
            log.info("worker %d (pid %d) exited: %s", worker.index, worker.pid, _describe(returncode))
            return
        if not worker.ready.is_set() and self.workers.get(worker.index) is worker and not self._serving:
            return  # the start-up waits for it and says what happened
        quick = not worker.ready.is_set() or time.monotonic() - worker.started < QUICK_DEATH
        deaths = self.quick_deaths[worker.index] = self.quick_deaths.get(worker.index, 0) + 1 if quick else 0
        if deaths >= MAX_QUICK_DEATHS:
            self._fail(f"worker {worker.index} died {deaths} times in a row right after its start "
                       f"(last: {_describe(returncode)}); stopping")
            return
        delay = backoff(deaths)
        log.warning("worker %d (pid %d) died: %s; starting a new one%s", worker.index, worker.pid,
                    _describe(returncode), f" in {delay:g}s" if delay else "")
        self._task(self._replace(worker.index, delay))

    async def _replace(self, index: int, delay: float) -> None:
        if delay:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
        if self.stop.is_set():
            return
        try:
            worker = await self._spawn(index)
        except OSError as e:
            self._fail(f"cannot start worker {index}: {e.strerror or e}")
            return
        if not await self._until_ready(worker, START_TIMEOUT):
            if not worker.exited.is_set() and not self.stop.is_set():
                log.warning("worker %d (pid %d) not ready after %gs: killing it", index, worker.pid, START_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
            return  # its watcher counts the death
        if worker.generation < self.generation:
            worker.generation = self.generation
            self._signal(worker, signal.SIGHUP)  # the reloads it missed: the file as it is now
        log.info("worker %d is back: pid %d", index, worker.pid)

    async def _until_ready(self, worker: _Worker, timeout: float | None = None) -> bool:
        """True once ``worker`` is ready; False when it exits, a stop comes or the time runs out."""
        waits = [asyncio.ensure_future(e.wait()) for e in (worker.ready, worker.exited, self.stop)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return worker.ready.is_set() and not worker.exited.is_set() and not self.stop.is_set()

    @staticmethod
    def _signal(worker: _Worker, signum: int) -> None:
        if not worker.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def _fail(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
        self.stop.set()

    # -- the run -----------------------------------------------------------------------

    _serving = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()

        def on_stop(signum: int) -> None:
            name = signal.Signals(signum).name
            if self.stop.is_set():
                log.info("%s again: passing it on, the workers stop waiting", name)
                for w in list(self.workers.values()):
                    self._signal(w, signum)
                return
            log.info("%s: stopping %d workers", name, len(self.workers))
            self.stop_signal = signal.Signals(signum)
            self.stop.set()

        def on_hup() -> None:
            if self.stop.is_set() or not self._serving:
                log.info("SIGHUP while %s: ignored", "stopping" if self.stop.is_set() else "starting")
                return
            self._task(self.reload())

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            started = await self._start_all()
            if started:
                self._serving = True
                status = self.workers[0].status.removeprefix("serving ") or "no services"
                self.notify(f"READY=1\nSTATUS=serving {status} ({self.count} workers)")
                log.info("ready: %d workers (pids %s)", self.count,
                         " ".join(str(w.pid) for w in self.workers.values()))
                self._task(self._watch_certificates())
                await self.stop.wait()
            await self._stop_all()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a late `systemctl reload` must not kill the exit
            for sock in self.listeners.values():
                sock.close()
            os.close(self.config_fd)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self.fatal is not None:
            print(f"mailstack: {self.fatal}", file=sys.stderr, flush=True)
            return 1
        if self.status:
            return self.status
        log.info("stopped")
        return 0

    async def _start_all(self) -> bool:
        """The first worker alone, then the others; False when one failed (or a stop came)."""
        for batch in ([0], list(range(1, self.count))):
            spawned = []
            for index in batch:
                try:
                    spawned.append(await self._spawn(index))
                except OSError as e:
                    self._fail(f"cannot start worker {index}: {e.strerror or e}")
                    return False
            for worker in spawned:
                if not await self._until_ready(worker):
                    if worker.exited.is_set():
                        self._startup_failed(worker)
                    return False  # else a signal during the start: an ordinary stop
        return True

    def _startup_failed(self, worker: _Worker) -> None:
        code = worker.proc.returncode
        if code in (1, 2):  # the worker said why on stderr already (serve.run's one line)
            self.status = code
        elif code is not None:
            self.fatal = f"worker {worker.index} (pid {worker.pid}) {_describe(code)} before it was ready"
        self.stop.set()

    async def _stop_all(self) -> None:
        for sock in self.listeners.values():  # new connections are refused from now on
            sock.close()
        self.listeners.clear()
        live = [w for w in self.workers.values() if not w.exited.is_set()]
        for w in live:
            self._signal(w, self.stop_signal)
        if live:
            # STOPPING=1 once every worker closed its listeners (it says so just before)
            await asyncio.wait([asyncio.ensure_future(_first(w.stopping, w.exited)) for w in live], timeout=5.0)
        self.notify("STOPPING=1")
        if not live:
            return
        exits = [asyncio.ensure_future(w.exited.wait()) for w in live]
        _done, pending = await asyncio.wait(exits, timeout=self.grace + STOP_SLACK)
        if pending:
            for w in live:
                if not w.exited.is_set():
                    log.warning("worker %d (pid %d) did not stop within %gs: killing it", w.index, w.pid,
                                self.grace + STOP_SLACK)
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
            await asyncio.wait(pending, timeout=5.0)
        for t in list(self.tasks):
            t.cancel()

    # -- reload ------------------------------------------------------------------------

    async def _watch_certificates(self) -> None:
        """A certificate that changes on disk (an ACME renewal is installed by the one worker
        that ordered it, or certbot's) is a reload of every worker, as SIGHUP would be."""
        self.cert_files = await asyncio.to_thread(certificate_files, self.config)
        while not self.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=CERT_WATCH)
            if self.stop.is_set():
                return
            now = await asyncio.to_thread(certificate_files, self.config)
            if now != self.cert_files and not self.reload_lock.locked():
                log.info("certificates changed on disk: every worker reloads")
                await self.reload()

    async def reload(self) -> bool:
        """Check the file and its certificates, then have every worker reload (see above)."""
        async with self.reload_lock:
            self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            path = self.config.path
            assert path is not None
            # what this reload reads (applied or refused): the watcher looks for changes after it
            self.cert_files = await asyncio.to_thread(certificate_files, self.config)
            try:
                new = await asyncio.to_thread(load_config, path)
                await asyncio.to_thread(net.ensure_certificate, new.tls, new.hostname)
                await asyncio.to_thread(net.load_certificate_set, new.tls, new.hostname)
            except (ConfigError, net.TLSError) as e:
                log.error("reload refused, the running configuration stays: %s", e)
                self.notify("READY=1")
                return False
            except Exception as e:  # never a traceback: one line
                log.debug("reload check failed", exc_info=True)
                log.error("reload refused, the running configuration stays: %s: %s", type(e).__name__, e)
                self.notify("READY=1")
                return False
            self.generation += 1
            ready = [w for w in self.workers.values() if w.ready.is_set() and not w.exited.is_set()]
            for w in ready:
                w.answered.clear()
                w.generation = self.generation
                self._signal(w, signal.SIGHUP)
            if ready:
                _done, pending = await asyncio.wait(
                    [asyncio.ensure_future(_first(w.answered, w.exited)) for w in ready], timeout=RELOAD_TIMEOUT)
                if pending:
                    log.warning("%d worker(s) did not finish their reload within %gs", len(pending), RELOAD_TIMEOUT)
                    for t in pending:
                        t.cancel()
            if new.server != self.config.server:
                log.info("reload: [server] workers applies at the next restart")
            self.notify("READY=1")
            return True


def certificate_files(config: Config) -> frozenset[tuple[str, int, int]]:
    """(path, mtime, size) of the ``[tls]`` pair and of every file in the per-name store
    (at most ``net.MAX_STORE_NAMES`` names): what a reload would read."""
    out: set[tuple[str, int, int]] = set()
    paths = [config.tls.cert_file, config.tls.key_file]
    with contextlib.suppress(OSError):
        names = sorted(os.scandir(net.certificate_dir(config.tls)), key=lambda e: e.name)[: net.MAX_STORE_NAMES]
        for entry in names:
            with contextlib.suppress(OSError):
                paths += [Path(f.path) for f in os.scandir(entry.path) if f.is_file()]
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            out.add((str(path), st.st_mtime_ns, st.st_size))
    return frozenset(out)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def supervise(config: Config, services: Sequence[str], count: int, grace: float,
              notify: Callable[[str], bool]) -> int:
    """Run ``count`` workers of ``mailstack serve SERVICES`` until SIGTERM/SIGINT; exit status."""
    assert config.path is not None
    try:
        raw, config = load_snapshot(config.path)
    except ConfigError as e:
        print(f"mailstack: {e}", file=sys.stderr, flush=True)
        return 1
    return asyncio.run(Supervisor(config, raw, services, count, grace, notify).run())
