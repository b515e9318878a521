"""``[server] workers``: a real ``mailstack serve`` supervisor with real worker processes.

Which worker answers a connection is the kernel's choice (they accept from one shared
socket); the tests make it theirs by stopping one worker (SIGSTOP): while it is stopped,
only the other can accept, so a greeting proves that the other one serves that listener.
Worker pids come from the supervisor's log (``ready: 2 workers (pids A B)``).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack import metrics, supervisor
from mailstack.config import ConfigError, TLSConfig, config_from_dict
from mailstack import net
from tests.helpers import free_port
from tests.test_sni_reload import HOST, LineClient, cli, pair, presented

ROOT = Path(__file__).resolve().parents[2]
FLAKY = "flaky=tests.workers.test_workers:start_flaky"
TIMEOUT = 60.0  # seconds for anything a loaded machine may take (a worker's interpreter start)


# ---------------------------------------------------------------------------
# a test service (runs in the workers): fails to start while $FLAKY_MARKER exists


async def start_flaky(ctx: object) -> object:
    from mailstack.service import SimpleService

    if Path(os.environ["FLAKY_MARKER"]).exists():
        raise RuntimeError("flaky: marker present")
    return SimpleService("flaky")


# ---------------------------------------------------------------------------
# harness


def write_config(tmp_path: Path, workers: int = 2, **listen: str) -> Path:
    """A config whose services listen where ``listen`` says (``smtp="127.0.0.1:N"``, ...)."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    sections = []
    for name in ("smtp", "submission", "lmtp", "imap", "pop3", "http"):
        sections.append(f"[{name}]\nlisten = [{', '.join(f'{chr(34)}{a}{chr(34)}' for a in listen.get(name, '').split(',') if a)}]")
        if name in ("submission", "imap", "pop3", "http"):
            tls = listen.get(name + "s", "")
            sections.append(f"tls_listen = [{f'{chr(34)}{tls}{chr(34)}' if tls else ''}]")
    path = etc / "mailstack.toml"
    path.write_text(f'''hostname = "{HOST}"
[server]
workers = {workers}
[database]
url = "sqlite:///../var/mailstack.db"
[storage]
maildir_root = "../mailboxes"
[tls]
cert_file = "../var/tls/cert.pem"
key_file = "../var/tls/key.pem"
[queue]
dir = "../var/queue"
''' + "\n".join(sections) + "\n")
    return path


class Serve:
    """``python -m mailstack serve`` with its log in a file and a NOTIFY_SOCKET the test reads."""

    def __init__(self, tmp_path: Path, config: Path, names: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path = tmp_path / "serve.log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        self.messages: list[str] = []
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
        full_env |= {"PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")} | (env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailstack", "--config", str(config), "serve", *names],
                cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=log)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, prefix: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        self.notify.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}: {self.log}") from None
                continue
            self.messages.append(message)
            if message.startswith(prefix):
                return message
        raise AssertionError(f"no {prefix} within {timeout}s; got {self.messages}; log: {self.log}")

    def wait_log(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log)
            if m:
                return m
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the log within {timeout}s: {self.log}")

    def worker_pids(self) -> list[int]:
        return [int(p) for p in self.wait_log(r"ready: \d+ workers \(pids ([\d ]+)\)").group(1).split()]

    def finish(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


@pytest.fixture
def started() -> Iterator[list[Serve]]:
    servers: list[Serve] = []
    yield servers
    for s in servers:
        for pid in children(s.proc.pid):
            with_suppressed(os.kill, pid, signal.SIGCONT)
        s.close()


def with_suppressed(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError:
        pass


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def accept_queue(port: int) -> int:
    """Connections waiting in the kernel for an accept() on 127.0.0.1:``port`` (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # LISTEN: rx_queue is the backlog
            return int(fields[4].split(":")[1], 16)
    return 0


def _supervisor_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Paused:
    """SIGSTOP ``pid`` for the block: only the other workers accept meanwhile."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def smtp_banner(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        banner = s.recv(200).decode()
        s.sendall(b"QUIT\r\n")
        return banner


def lmtp_banner(path: Path) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(path))
        banner = s.recv(200).decode()
        s.sendall(b"QUIT\r\n")
        return banner


def scrape(port: int, through: int | None = None) -> str:
    """GET /metrics; ``through``: on a connection the worker with that pid accepted (the
    others paused while it connects, all running while it asks)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        if through is not None:
            others = [p for p in children(_supervisor_of(through)) if p != through]
            for p in others:
                os.kill(p, signal.SIGSTOP)
            try:
                conn.connect()
                deadline = time.monotonic() + TIMEOUT
                while accept_queue(port) and time.monotonic() < deadline:  # until ``through`` took it
                    time.sleep(0.05)
            finally:
                for p in others:
                    os.kill(p, signal.SIGCONT)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read().decode()
    finally:
        conn.close()


def smtp_accepted(text: str) -> float:
    m = re.search(r'^mailstack_connections_total\{(?=[^}]*service="smtp")(?=[^}]*result="accepted")[^}]*\} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


# ---------------------------------------------------------------------------
# sharing, replacing, metrics


def test_both_workers_accept_on_every_listener_and_a_killed_one_is_replaced(
        tmp_path: Path, started: list[Serve]) -> None:
    smtp, http_port = free_port(), free_port()
    lmtp = tmp_path / "var" / "lmtp.sock"
    config = write_config(tmp_path, smtp=f"127.0.0.1:{smtp}", lmtp=f"unix:{lmtp}", http=f"127.0.0.1:{http_port}")
    server = Serve(tmp_path, config, ["smtp", "lmtp", "http"])
    started.append(server)
    assert "(2 workers)" in server.wait_for("READY=1")
    first, second = server.worker_pids()
    assert sorted(children(server.proc.pid)) == sorted([first, second])  # MAINPID is the supervisor

    for busy in (first, second):  # each one alone serves the TCP and the unix listener
        with Paused(busy):
            assert smtp_banner(smtp).startswith("220 ")
            assert lmtp_banner(lmtp).startswith("220 ")
    # one scrape counts every worker's connections, whichever worker answers it
    assert smtp_accepted(scrape(http_port)) == 2
    assert smtp_accepted(scrape(http_port, through=first)) == 2
    assert smtp_accepted(scrape(http_port, through=second)) == 2

    os.kill(first, signal.SIGKILL)
    for _ in range(5):  # the other one answers while the first is gone
        assert smtp_banner(smtp).startswith("220 ")
    back = int(server.wait_log(r"worker 0 is back: pid (\d+)").group(1))
    assert back not in (first, second) and alive(back)
    assert f"worker 0 (pid {first}) died: killed by SIGKILL; starting a new one" in server.log
    with Paused(second):  # the new one has the listeners too
        assert smtp_banner(smtp).startswith("220 ")
        assert lmtp_banner(lmtp).startswith("220 ")
    # the second's 1 + 5 and the new one's 1, plus the dead one's 1 if it saved it before
    # its kill (it saves every METRICS_SAVE s): a kill -9 may lose counts, never invent any
    assert 7 <= smtp_accepted(scrape(http_port)) <= 8

    server.proc.send_signal(signal.SIGTERM)
    server.wait_for("STOPPING=1")
    assert server.finish() == 0
    assert not alive(second) and not alive(back)
    log = server.log
    assert "Traceback" not in log
    pids = {int(p) for p in re.findall(r"\[(\d+)\] INFO mailstack\.net: smtp listening on", log)}
    assert first in pids  # every worker line says which process wrote it
    assert "worker 0 (pid" in log and "exited: exit status 0" in log


# ---------------------------------------------------------------------------
# reload


def test_sighup_reaches_every_worker_and_an_idle_session_survives_it(tmp_path: Path, started: list[Serve]) -> None:
    imap, imaps = free_port(), free_port()
    lmtp = tmp_path / "var" / "lmtp.sock"
    config = write_config(tmp_path, imap=f"127.0.0.1:{imap}", imaps=f"127.0.0.1:{imaps}", lmtp=f"unix:{lmtp}")
    cli(config, "domain", "add", "example.test")
    cli(config, "user", "add", "alice@example.test", "--password-stdin", stdin="s3cret pw\n")
    tls = TLSConfig(cert_file=tmp_path / "var/tls/cert.pem", key_file=tmp_path / "var/tls/key.pem")
    net.ensure_certificate(tls, HOST)
    server = Serve(tmp_path, config, ["imap", "lmtp"])
    started.append(server)
    server.wait_for("READY=1")
    first, second = server.worker_pids()
    assert presented(imaps, None) == HOST

    idler = LineClient(imap)
    idler.command("a", 'LOGIN alice@example.test "s3cret pw"')
    idler.command("b", "SELECT INBOX")
    idler.sock.sendall(b"c IDLE\r\n")
    assert idler.line().startswith(b"+")

    net.install_certificate(tls, HOST, *pair("renewed.example.test"))
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("RELOADING=1")
    server.wait_for("READY=1")
    for busy in (first, second):  # each worker presents the new certificate
        with Paused(busy):
            assert presented(imaps, None) == "renewed.example.test"
    reloaded = {int(p) for p in re.findall(r"\[(\d+)\] INFO mailstack\.serve: reloaded: certificates", server.log)}
    assert reloaded == {first, second}

    deliver(lmtp, "after the reload")  # the idler, on whichever worker, was not dropped
    idler.untagged_until(b"* 1 EXISTS")

    # a config that does not load: refused once, by the supervisor; no worker hears of it
    good = config.read_text()
    config.write_text(good.replace("[imap]\n", "[imap]\nno_such_key = 1\n"))
    net.install_certificate(tls, HOST, *pair("third.example.test"))
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("RELOADING=1")
    server.wait_for("READY=1")
    refused = [ln for ln in server.log.splitlines() if "reload refused" in ln]
    assert refused and all("no_such_key" in ln and "ERROR mailstack.supervisor:" in ln for ln in refused), server.log
    for busy in (first, second):
        with Paused(busy):
            assert presented(imaps, None) == "renewed.example.test"  # nothing of it applied
    deliver(lmtp, "after the refused reload")
    idler.untagged_until(b"* 2 EXISTS")
    idler.sock.sendall(b"DONE\r\n")
    while (got := idler.line()).startswith(b"* "):
        pass
    assert got.startswith(b"c OK"), got
    idler.sock.close()

    # a replacement started after a reload gets it too (it parses the config of the start)
    config.write_text(good)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("READY=1")
    os.kill(second, signal.SIGKILL)
    back = int(server.wait_log(r"worker 1 is back: pid (\d+)").group(1))
    server.wait_log(rf"\[{back}\] INFO mailstack\.serve: reloaded: certificates")
    with Paused(first):
        assert presented(imaps, None) == "third.example.test"
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert "Traceback" not in server.log


def test_a_certificate_renewed_on_disk_reaches_every_worker(tmp_path: Path, started: list[Serve]) -> None:
    imaps = free_port()
    config = write_config(tmp_path, imaps=f"127.0.0.1:{imaps}")
    tls = TLSConfig(cert_file=tmp_path / "var/tls/cert.pem", key_file=tmp_path / "var/tls/key.pem")
    server = Serve(tmp_path, config, ["imap"])
    started.append(server)
    server.wait_for("READY=1")
    first, second = server.worker_pids()
    # what the ACME renewal does in the one worker that orders it (no SIGHUP from anyone)
    net.install_certificate(tls, "localhost", *pair("renewed-localhost"))
    server.wait_for("RELOADING=1", timeout=supervisor.CERT_WATCH + TIMEOUT)
    server.wait_for("READY=1")
    assert "certificates changed on disk: every worker reloads" in server.log
    for busy in (first, second):
        with Paused(busy):
            assert presented(imaps, "localhost") == "renewed-localhost"
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0


def deliver(lmtp: Path, subject: str) -> None:
    with smtplib.LMTP(str(lmtp)) as client:
        client.sendmail("bob@elsewhere.test", ["alice@example.test"],
                        f"From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n")


# ---------------------------------------------------------------------------
# stop


def test_sigterm_drains_every_worker(tmp_path: Path, started: list[Serve]) -> None:
    smtp = free_port()
    config = write_config(tmp_path, smtp=f"127.0.0.1:{smtp}")
    cli(config, "domain", "add", "example.test")
    cli(config, "user", "add", "alice@example.test", "--password-stdin", stdin="s3cret pw\n")
    server = Serve(tmp_path, config, ["smtp"])
    started.append(server)
    server.wait_for("READY=1")
    first, second = server.worker_pids()
    clients = []
    for busy in (first, second):  # one transaction in the middle of DATA on each worker
        with Paused(busy):
            c = smtplib.SMTP("127.0.0.1", smtp, timeout=TIMEOUT)
            c.ehlo("client.test")
            c.mail("bob@elsewhere.test")
            c.rcpt("alice@example.test")
            assert c.docmd("DATA")[0] == 354
            c.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
            clients.append(c)
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for("STOPPING=1")
    with pytest.raises(OSError):  # no worker and not the supervisor accepts any more
        socket.create_connection(("127.0.0.1", smtp), timeout=5).close()
    time.sleep(0.5)
    assert server.proc.poll() is None and alive(first) and alive(second)
    for c in clients:
        c.send(b"second half\r\n.\r\n")
        assert c.getreply()[0] == 250  # both finished their message: nothing accepted is lost
        c.close()
    assert server.finish() == 0
    assert not alive(first) and not alive(second)
    delivered = list((tmp_path / "mailboxes" / "example.test" / "alice" / "new").iterdir())
    assert len(delivered) == 2


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path, started: list[Serve]) -> None:
    smtp = free_port()
    server = Serve(tmp_path, write_config(tmp_path, smtp=f"127.0.0.1:{smtp}"), ["smtp"])
    started.append(server)
    server.wait_for("READY=1")
    pids = server.worker_pids()
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + TIMEOUT
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
    assert "the supervisor is gone: stopping" in server.log


# ---------------------------------------------------------------------------
# failures


def test_a_worker_that_keeps_dying_at_start_stops_the_serve(tmp_path: Path, started: list[Serve]) -> None:
    marker = tmp_path / "break-it"
    server = Serve(tmp_path, write_config(tmp_path), ["flaky"],
                   env={"MAILSTACK_EXTRA_SERVICES": FLAKY, "FLAKY_MARKER": str(marker)})
    started.append(server)
    assert "serving flaky (2 workers)" in server.wait_for("READY=1")
    first, second = server.worker_pids()
    marker.touch()  # from now on a new worker fails to start
    os.kill(second, signal.SIGKILL)
    assert server.finish(timeout=4 * TIMEOUT) == 1
    errors = [ln for ln in server.log.splitlines() if ln.startswith("mailstack: ")]
    assert errors[-1] == (f"mailstack: worker 1 died {supervisor.MAX_QUICK_DEATHS} times in a row right after its "
                          "start (last: exit status 1); stopping"), server.log
    assert not alive(first)
    assert "Traceback" not in server.log


def test_a_failing_first_worker_is_one_line_and_the_others_never_start(tmp_path: Path, started: list[Serve]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = Serve(tmp_path, write_config(tmp_path, smtp=f"127.0.0.1:{port}"), ["smtp"])
        started.append(server)
        assert server.finish() == 1
    errors = [ln for ln in server.log.splitlines() if ln.startswith("mailstack: ")]
    assert errors == [f"mailstack: smtp: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert "worker 1 started" not in server.log and "Traceback" not in server.log


def test_one_worker_is_the_single_process_of_before(tmp_path: Path, started: list[Serve]) -> None:
    smtp = free_port()
    server = Serve(tmp_path, write_config(tmp_path, workers=1, smtp=f"127.0.0.1:{smtp}"), ["smtp"])
    started.append(server)
    server.wait_for("READY=1")
    assert smtp_banner(smtp).startswith("220 ")
    assert children(server.proc.pid) == []
    assert "supervisor" not in server.log and "] INFO" not in server.log  # no pid: one process
    assert "INFO mailstack.net: smtp listening on" in server.log
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0


# ---------------------------------------------------------------------------
# units


def test_workers_key_defaults_to_one_per_core_and_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    cfg = config_from_dict({}, path)
    assert cfg.server.workers == 0
    assert supervisor.worker_count(cfg) == len(os.sched_getaffinity(0))
    assert supervisor.worker_count(config_from_dict({"server": {"workers": 3}}, path)) == 3
    for bad, message in ((-1, "must not be negative"), (257, "at most 256"), (True, "expected a whole number")):
        with pytest.raises(ConfigError, match=rf"\[server\] workers: .*{message}"):
            config_from_dict({"server": {"workers": bad}}, path)
    with pytest.raises(ConfigError, match="unknown key 'threads'"):
        config_from_dict({"server": {"threads": 2}}, path)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert supervisor.backoff(0) == 0
    assert [supervisor.backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert supervisor.backoff(50) == supervisor.BACKOFF_MAX


def test_snapshots_add_up_and_survive_json() -> None:
    a = metrics.Snapshot({("m", ("x",)): 1.0}, {("h", ("s",)): [1.0, 0.0, 0.5]}, {"smtp": 2})
    b = metrics.Snapshot({("m", ("x",)): 2.0, ("m", ("y",)): 1.0}, {("h", ("s",)): [0.0, 1.0, 3.0]}, {"smtp": 1})
    total = metrics.merge([a, metrics.from_json(metrics.to_json(b))])
    assert total.counters == {("m", ("x",)): 3.0, ("m", ("y",)): 1.0}
    assert total.histograms == {("h", ("s",)): [1.0, 1.0, 3.5]}
    assert total.open_connections == {"smtp": 3}
    with pytest.raises(ValueError):
        metrics.from_json({"counters": "nonsense"})


def test_password_hashing_threads_are_shared_out_among_the_workers(tmp_path: Path) -> None:
    """``[auth] hash_workers = 0`` is one per core for the whole serve, not per worker."""
    from mailstack.auth import Authenticator
    from mailstack.directory import Directory

    cores = os.cpu_count() or 1
    for workers, expected in ((1, min(cores, 8)), (cores * 8, 1), (0, max(1, min(cores, 8) // cores))):
        cfg = config_from_dict({"server": {"workers": workers},
                                "database": {"url": f"sqlite:///{tmp_path}/d.db"}}, tmp_path / "m.toml")
        directory = Directory.from_config(cfg)
        directory.migrate()
        auth = Authenticator.from_config(cfg, directory)
        try:
            assert auth.limits.hash_workers == expected, workers
        finally:
            auth.close()
            directory.close()

