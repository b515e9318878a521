"""Two ``mailstack serve`` hosts sharing one PostgreSQL directory, one mail root, one queue.

What a Dovecot/Postfix cluster looks like, on one machine: host A listens on 127.0.0.1,
host B on 127.0.0.2 (free ports), each with its own ``hostname``, config folder,
certificate and state; both use one PostgreSQL database (``postgres_url``), one
``maildir_root`` and one ``[queue] dir`` (in production an NFS or CephFS mount; here one
local folder, so a lock taken by one host is seen by the other exactly as on a shared
file system). As root each runs with its own system host name (``own_host_name``), so a
dotlock the killed host leaves is one of *another* host for the survivor: broken only
after the 120 s stale timeout, which the clients' timeouts allow for. Remote mail goes to a sink on 127.0.0.23 (``remote.test``, loopback DNS).

``cluster`` gives both hosts started; ``Host.kill()`` is ``kill -9``.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.directory import Directory
from mailstack.directory.passwords import Passwords
from tests.cluster.sink import Sink
from tests.dnsserver import TestDNS
from tests.helpers import free_port

PASSWORD = "cluster password 1"
USERS = ("alice@example.test", "bob@example.test")
REMOTE_IP = "127.0.0.23"
SERVICES = ("smtp", "submission", "lmtp", "imap")  # plus "queue", which has no port
START_TIMEOUT = 60.0


@functools.cache
def _can_unshare_uts() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


def own_host_name(name: str) -> list[str]:
    """A command prefix that runs the rest with its own system host name (a UTS namespace,
    as root): message file names and dotlocks then name two different hosts, and neither
    breaks the other's lock by a pid check. Without the right to do so: no prefix (one
    host name; the pid checks are then right anyway, both processes share one kernel)."""
    if not _can_unshare_uts():
        return []
    return ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$0" "$@"']


@dataclass
class Host:
    name: str
    ip: str
    etc: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.etc.parent / "serve.log"

    @property
    def conf(self) -> Path:
        return self.etc / "mailstack.toml"

    def start(self) -> None:
        env = {**os.environ, "MAILSTACK_STOP_GRACE": "2"}
        env.pop("JOURNAL_STREAM", None)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*own_host_name(f"host-{self.name}"), sys.executable, "-m", "mailstack", "--config", str(self.conf),
                 "serve", *SERVICES, "queue"],
                env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection((self.ip, port), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise AssertionError(f"host {self.name} did not start:\n{self.log.read_text(errors='replace')}")
                    time.sleep(0.1)

    def kill(self) -> None:
        """``kill -9``: no shutdown, locks and claims left as they were."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Cluster:
    a: Host
    b: Host
    root: Path  # the shared maildir_root
    queue: Path  # the shared [queue] dir
    db_url: str
    sink: Sink

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def claims_of(self, host: Host) -> set[str]:
        """Queue ids ``host`` holds a ``flock`` claim on now (``/proc/locks``: pid, device, inode)."""
        assert host.proc is not None
        held = set()
        for line in Path("/proc/locks").read_text().splitlines():
            f = line.split()
            if f[1] == "FLOCK" and f[4] == str(host.proc.pid):
                held.add(int(f[5].rsplit(":", 1)[1]))
        ids = set()
        with os.scandir(self.queue / ".locks") as it:
            for e in it:
                if e.inode() in held:
                    ids.add(e.name)
        return ids

    def queued(self) -> list[str]:
        return sorted(n for n in os.listdir(self.queue) if n.endswith(".env"))


def host_config(host: Host, shared: Path, db_url: str, dns: TestDNS, sink_port: int, imap_poll: float) -> str:
    p = host.ports
    text = f"""hostname = "{host.name}.example.test"
[database]
url = "{db_url}"
[storage]
maildir_root = "{shared / 'mailboxes'}"
[tls]
cert_file = "../var/tls/cert.pem"
key_file = "../var/tls/key.pem"
[auth]
argon2_time_cost = 1
argon2_memory_cost = 256
argon2_parallelism = 1
[smtp]
listen = ["{host.ip}:{p['smtp']}"]
[submission]
listen = ["{host.ip}:{p['submission']}"]
tls_listen = []
max_messages_per_hour = 100000
max_recipients_per_day = 100000
[lmtp]
listen = ["{host.ip}:{p['lmtp']}"]
[imap]
listen = ["{host.ip}:{p['imap']}"]
tls_listen = []
poll_interval = {imap_poll}
[pop3]
listen = []
tls_listen = []
[http]
listen = []
[queue]
dir = "{shared / 'queue'}"
dkim_dir = "{shared / 'dkim'}"
smtp_port = {sink_port}
scan_interval = 0.5
retry_initial = 1
connect_timeout = 3
command_timeout = 10
mta_sts = false
tls_reports = false
[dns]
nameservers = ["{dns.address}"]
timeout = 3
"""
    if "server" in Config.__dataclass_fields__:
        text += "[server]\nworkers = 1\n"
    return text


@pytest.fixture(scope="session")
def _dns_server() -> Iterator[TestDNS]:
    with TestDNS() as d:
        yield d


@pytest.fixture
def dns(_dns_server: TestDNS) -> Iterator[TestDNS]:
    _dns_server.clear()
    _dns_server.add("remote.test", "MX", "10 mx.remote.test")
    _dns_server.add("mx.remote.test", "A", REMOTE_IP)
    yield _dns_server
    _dns_server.clear()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(REMOTE_IP, free_port(REMOTE_IP), delay=0.2)
    s.start()
    yield s
    s.stop()


def make_cluster(tmp_path: Path, postgres_url: str, dns: TestDNS, sink: Sink, imap_poll: float = 0.5) -> Cluster:
    shared = tmp_path / "shared"
    shared.mkdir()
    d = Directory(postgres_url, passwords=Passwords.fast())
    try:
        d.migrate()
        d.add_domain("example.test")
        for user in USERS:
            d.add_user(user, PASSWORD)
    finally:
        d.close()
    hosts = []
    for name, ip in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
        etc = tmp_path / f"host-{name}" / "etc"
        etc.mkdir(parents=True)
        host = Host(name, ip, etc, {s: free_port(ip) for s in SERVICES})
        host.conf.write_text(host_config(host, shared, postgres_url, dns, sink.port, imap_poll))
        hosts.append(host)
    return Cluster(hosts[0], hosts[1], shared / "mailboxes", shared / "queue", postgres_url, sink)


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, dns: TestDNS, sink: Sink) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, postgres_url, dns, sink)
    try:
        for host in c.hosts:
            host.start()
        yield c
    finally:
        for host in c.hosts:
            host.stop()
