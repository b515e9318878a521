"""mailstack.serve: the runner, driven through the real CLI (`python -m mailstack serve`).

The test services below are registered through MAILSTACK_EXTRA_SERVICES and imported by
the server process from this module (`tests.test_serve:start_dummy`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack import net, serve, service
from mailstack.config import Config, ListenAddress, config_from_dict
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
DUMMY = "dummy=tests.test_serve:start_dummy"
START_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# test services (run inside the server process)


class DummyProtocol(asyncio.Protocol):
    """Line protocol: greets "hello"; "BEGIN" opens a transaction, "END" closes it with "OK"."""

    def __init__(self, service: DummyService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.end: asyncio.Event | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.service.connections.add(self)
        transport.write(b"hello\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self)
        if self.end is not None:
            self.end.set()

    def data_received(self, data: bytes) -> None:
        for line in data.decode().split():
            if line == "BEGIN":
                self.end = asyncio.Event()
                asyncio.get_running_loop().create_task(self._transaction(self.end))
            elif line == "END" and self.end is not None:
                self.end.set()

    async def _transaction(self, end: asyncio.Event) -> None:
        async with self.service.inflight.hold():
            assert self.transport is not None
            self.transport.write(b"BEGUN\n")
            await end.wait()
            if not self.transport.is_closing():
                self.transport.write(b"OK\n")


class DummyService(service.SimpleService):
    def __init__(self) -> None:
        super().__init__("dummy")
        self.connections: set[DummyProtocol] = set()

    async def close_idle(self) -> None:
        for c in list(self.connections):
            if c.transport is not None and c.end is None:
                c.transport.close()

    async def close_all(self) -> None:
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()


async def start_dummy(ctx: service.ServiceContext) -> service.RunningService:
    """Listens where [smtp] and [lmtp] say (the runner only knows it as "dummy")."""
    dummy = DummyService()
    listeners = ctx.config.listeners("smtp") + ctx.config.listeners("lmtp")
    dummy.servers = await net.open_listeners(
        "dummy", listeners, lambda address, tls: lambda: DummyProtocol(dummy), ctx.tls.server)
    return dummy


async def start_broken(ctx: service.ServiceContext) -> service.RunningService:
    raise RuntimeError("boom")


# ---------------------------------------------------------------------------
# harness


def write_config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    """A config in <tmp>/etc with every listener off unless given."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    lines = ['hostname = "mx.example.test"',
             '[database]', 'url = "sqlite:///../var/mailstack.db"',
             '[storage]', 'maildir_root = "../mailboxes"',
             '[tls]', 'cert_file = "../var/tls/cert.pem"', 'key_file = "../var/tls/key.pem"',
             '[queue]', 'dir = "../var/queue"']
    for name in ("smtp", "submission", "lmtp", "imap", "pop3", "http"):
        values = {"listen": []} | sections.get(name, {})
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
    path = etc / "mailstack.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Server:
    """`python -m mailstack --config ... serve ...` with a NOTIFY_SOCKET the test reads."""

    def __init__(self, tmp_path: Path, config: Path, names: list[str], env: dict[str, str] | None = None) -> None:
        self.notify_path = tmp_path / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
        full_env |= {"PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(self.notify_path),
                     "MAILSTACK_EXTRA_SERVICES": DUMMY} | (env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailstack", "--config", str(config), "serve", *names],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = ""

    def wait_for(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.communicate()[1]}")
            self.notify.settimeout(0.2)
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if message.startswith(prefix):
                return message
        raise AssertionError(f"no {prefix} within {timeout}s; got {self.messages}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 20.0) -> int:
        _, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.notify.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.close()


def run_once(tmp_path: Path, config: Path, names: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    full_env |= {"PYTHONPATH": str(ROOT), "MAILSTACK_EXTRA_SERVICES": DUMMY} | (env or {})
    full_env.pop("NOTIFY_SOCKET", None)
    r = subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config), "serve", *names],
                       cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stderr


def error_lines(stderr: str) -> list[str]:
    """stderr without the log lines (which carry a level name)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("mailstack: ")]


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert s.recv(100) == b"hello\n"
    return s


# ---------------------------------------------------------------------------
# first start, readiness, stop


def test_first_start_prepares_everything_and_stops_on_sigterm(tmp_path: Path, servers: list[Server]) -> None:
    config = write_config(tmp_path)
    server = Server(tmp_path, config, [], env={"MAILSTACK_EXTRA_SERVICES": ""})
    servers.append(server)
    ready = server.wait_for("READY=1")
    assert "STATUS=serving no services" in ready
    var = tmp_path / "var"
    assert (var / "mailstack.db").is_file()
    assert stat.S_IMODE((tmp_path / "mailboxes").stat().st_mode) == 0o700
    assert (var / "queue").is_dir()
    assert (var / "tls" / "cert.pem").is_file()
    assert stat.S_IMODE((var / "tls" / "key.pem").stat().st_mode) == 0o600
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    server.wait_for("STOPPING=1")
    assert server.finish() == 0, server.stderr
    assert time.monotonic() - started < 5
    assert "Traceback" not in server.stderr

    # the schema is really there: the admin CLI can use it right away
    from mailstack.directory import Directory
    cfg = load(config)
    d = Directory.from_config(cfg)
    try:
        d.add_domain("example.test")
        assert [x.name for x in d.list_domains()] == ["example.test"]
    finally:
        d.close()


def test_second_start_keeps_the_certificate_and_sigint_stops_too(tmp_path: Path, servers: list[Server]) -> None:
    config = write_config(tmp_path)
    certs = []
    for i, signum in enumerate((signal.SIGTERM, signal.SIGINT)):
        (tmp_path / f"n{i}").mkdir()
        server = Server(tmp_path / f"n{i}", config, ["dummy"])
        servers.append(server)
        server.wait_for("READY=1")
        certs.append((tmp_path / "var/tls/cert.pem").read_bytes())
        server.signal(signum)
        assert server.finish() == 0, server.stderr
    assert certs[0] == certs[1]


def test_one_log_line_per_listener(tmp_path: Path, servers: list[Server]) -> None:
    port, sock = free_port(), tmp_path / "run" / "lmtp.sock"
    config = write_config(tmp_path, smtp={"listen": [f"127.0.0.1:{port}"]}, lmtp={"listen": [f"unix:{sock}"]})
    server = Server(tmp_path, config, ["dummy"])
    servers.append(server)
    assert "STATUS=serving dummy" in server.wait_for("READY=1")
    server.signal()
    assert server.finish() == 0
    listening = [ln for ln in server.stderr.splitlines() if " listening on " in ln]
    assert len(listening) == 2
    assert listening[0].endswith(f"dummy listening on 127.0.0.1:{port}")
    assert listening[1].endswith(f"dummy listening on unix:{sock}")


# ---------------------------------------------------------------------------
# transactions in flight


def test_sigterm_waits_for_a_transaction_in_flight(tmp_path: Path, servers: list[Server]) -> None:
    port = free_port()
    config = write_config(tmp_path, smtp={"listen": [f"127.0.0.1:{port}"]})
    server = Server(tmp_path, config, ["dummy"])
    servers.append(server)
    server.wait_for("READY=1")
    busy, idle = connect(port), connect(port)
    with busy, idle:
        busy.sendall(b"BEGIN\n")
        assert busy.recv(100) == b"BEGUN\n"
        server.signal()
        server.wait_for("STOPPING=1")
        # stopped accepting, closed the idle connection, still running for the busy one
        assert idle.recv(100) == b""
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        time.sleep(0.5)
        assert server.proc.poll() is None
        busy.sendall(b"END\n")
        assert busy.recv(100) == b"OK\n"
        assert server.finish() == 0, server.stderr


def test_the_wait_is_bounded_by_the_grace(tmp_path: Path, servers: list[Server]) -> None:
    port = free_port()
    config = write_config(tmp_path, smtp={"listen": [f"127.0.0.1:{port}"]})
    server = Server(tmp_path, config, ["dummy"], env={"MAILSTACK_STOP_GRACE": "1"})
    servers.append(server)
    server.wait_for("READY=1")
    with connect(port) as busy:
        busy.sendall(b"BEGIN\n")
        assert busy.recv(100) == b"BEGUN\n"
        started = time.monotonic()
        server.signal()
        assert server.finish() == 0, server.stderr
        assert 0.8 < time.monotonic() - started < 5
        assert busy.recv(100) == b""  # closed, no OK
    assert "still in flight" in server.stderr


def test_a_second_signal_cuts_the_grace_short(tmp_path: Path, servers: list[Server]) -> None:
    port = free_port()
    config = write_config(tmp_path, smtp={"listen": [f"127.0.0.1:{port}"]})
    server = Server(tmp_path, config, ["dummy"], env={"MAILSTACK_STOP_GRACE": "60"})
    servers.append(server)
    server.wait_for("READY=1")
    with connect(port) as busy:
        busy.sendall(b"BEGIN\n")
        assert busy.recv(100) == b"BEGUN\n"
        started = time.monotonic()
        server.signal()
        server.wait_for("STOPPING=1")
        server.signal(signal.SIGINT)
        assert server.finish() == 0, server.stderr
        assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------
# failures: one line, no traceback


def test_port_in_use_is_one_line_naming_the_listener(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(tmp_path, smtp={"listen": [f"127.0.0.1:{port}"]})
        status, stderr = run_once(tmp_path, config, ["dummy"])
    assert status == 1
    assert error_lines(stderr) == [f"mailstack: dummy: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert "Traceback" not in stderr


def test_a_service_failing_to_start_stops_the_others(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, smtp={"listen": [f"127.0.0.1:{port}"]})
    status, stderr = run_once(tmp_path, config, ["dummy", "broken"],
                              env={"MAILSTACK_EXTRA_SERVICES": f"{DUMMY},broken=tests.test_serve:start_broken"})
    assert status == 1
    assert error_lines(stderr) == ["mailstack: broken: failed to start: RuntimeError: boom"]
    assert "Traceback" not in stderr
    with socket.socket() as s:  # dummy's port is free again
        s.bind(("127.0.0.1", port))


def test_unknown_service_is_a_usage_error(tmp_path: Path) -> None:
    status, stderr = run_once(tmp_path, write_config(tmp_path), ["smtpd"])
    assert status == 2
    [line] = error_lines(stderr)
    assert line.startswith("mailstack: unknown service 'smtpd' (choose from smtp, submission, lmtp, imap, pop3")
    assert not (tmp_path / "var").exists()  # nothing prepared


def test_a_named_service_missing_from_the_build_fails(tmp_path: Path) -> None:
    env = {"MAILSTACK_EXTRA_SERVICES": "ghost=mailstack.no_such_module:start"}
    status, stderr = run_once(tmp_path, write_config(tmp_path), ["ghost"], env=env)
    assert status == 1
    assert error_lines(stderr) == ["mailstack: service ghost is not available in this build"]
    assert not (tmp_path / "var").exists()


def test_an_unnamed_service_missing_from_the_build_is_skipped(tmp_path: Path, servers: list[Server]) -> None:
    env = {"MAILSTACK_EXTRA_SERVICES": "ghost=mailstack.no_such_module:start"}
    server = Server(tmp_path, write_config(tmp_path), [], env=env)
    servers.append(server)
    server.wait_for("READY=1")
    server.signal()
    assert server.finish() == 0
    assert "service ghost is not available in this build; skipping it" in server.stderr


def test_a_stale_unix_socket_is_replaced(tmp_path: Path, servers: list[Server]) -> None:
    path = tmp_path / "run" / "lmtp.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    server = Server(tmp_path, write_config(tmp_path, lmtp={"listen": [f"unix:{path}"]}), ["dummy"])
    servers.append(server)
    server.wait_for("READY=1")
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(str(path))
        assert c.recv(100) == b"hello\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    # a second server must not steal the live socket
    status, stderr = run_once(tmp_path, write_config(tmp_path, lmtp={"listen": [f"unix:{path}"]}), ["dummy"])
    assert status == 1
    assert error_lines(stderr) == [f"mailstack: dummy: cannot listen on unix:{path}: address already in use"]
    server.signal()
    assert server.finish() == 0


def test_half_a_certificate_pair_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "var" / "tls").mkdir(parents=True)
    (tmp_path / "var" / "tls" / "cert.pem").write_text("x")
    status, stderr = run_once(tmp_path, write_config(tmp_path), [])
    assert status == 1
    key = tmp_path / "var" / "tls" / "key.pem"
    [line] = error_lines(stderr)
    assert line.startswith(f"mailstack: [tls] key_file: {key} does not exist")


# ---------------------------------------------------------------------------
# in-process units


def load(path: Path) -> Config:
    from mailstack.config import load_config
    return load_config(path)


def test_registry_reads_extra_services() -> None:
    reg = serve.registry({"MAILSTACK_EXTRA_SERVICES": "a=x.y:start, b-2=z:go"})
    assert reg["a"] == "x.y:start" and reg["b-2"] == "z:go" and reg["smtp"] == serve.SERVICES["smtp"]
    with pytest.raises(service.ServiceError, match="not name=module:function"):
        serve.registry({"MAILSTACK_EXTRA_SERVICES": "nonsense"})


def test_enabled_services_follow_the_listeners() -> None:
    cfg = config_from_dict({"smtp": {"listen": ["127.0.0.1:2525"]}, "imap": {"listen": []},
                            "lmtp": {"listen": ["unix:/tmp/x.sock"]}}, None)
    assert serve.enabled_services(cfg, [*serve.SERVICES, "extra"]) == ["smtp", "lmtp", "queue", "extra"]
    cfg = config_from_dict({"submission": {"tls_listen": ["127.0.0.1:2465"]}}, None)
    assert serve.enabled_services(cfg, serve.SERVICES) == ["submission", "queue"]
    assert serve.enabled_services(config_from_dict({}, None), serve.SERVICES) == []


def test_a_broken_dependency_is_not_reported_as_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "svc_needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(service.ServiceError, match="service x cannot be loaded: No module named 'no_such_dependency_xyz'"):
        serve.load_start("x", "svc_needs_dep:start")


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        if abstract:
            name = f"mailstack-test-{os.getpid()}-{time.monotonic_ns()}"
            s.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            s.bind(str(tmp_path / "n.sock"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
        assert serve.sd_notify("READY=1")
        assert s.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert serve.sd_notify("READY=1") is False


def test_sd_notify_to_a_missing_socket_is_only_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert serve.sd_notify("READY=1") is False


def test_stop_grace_from_the_environment() -> None:
    assert serve.stop_grace({}) == serve.DEFAULT_STOP_GRACE
    assert serve.stop_grace({"MAILSTACK_STOP_GRACE": "2.5"}) == 2.5
    with pytest.raises(service.ServiceError):
        serve.stop_grace({"MAILSTACK_STOP_GRACE": "soon"})


def test_open_listeners_is_all_or_nothing(tmp_path: Path) -> None:
    free = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]

        async def main() -> None:
            with pytest.raises(net.ListenError):
                await net.open_listeners(
                    "x", [(ListenAddress("tcp", "127.0.0.1", free), False),
                          (ListenAddress("tcp", "127.0.0.1", busy), False)],
                    lambda a, t: asyncio.Protocol, net.client_context())

        asyncio.run(main())
    with socket.socket() as s:  # the first listener was closed again
        s.bind(("127.0.0.1", free))
