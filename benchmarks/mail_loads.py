#!/usr/bin/env python3
"""Mailbox-side loads for ``run_all.py``: our own, so the table needs nothing from outside
this repository (the STORE + SEARCH and POP3 loads are ``imap_bench`` / ``pop3_bench``'s).

- ``MailServer``: ``mailstack serve imap pop3`` as deployed (``[server] workers``
  processes, 0 = one per CPU core) on loopback, over a store made by ``prepare`` (users
  ``user1..userN@example.test`` / ``pass``) with a config written by ``write_config``;
  ``real_passwords`` keeps the production argon2id policy, otherwise the cheap
  ``Passwords.fast()`` parameters (hashes and ``[auth] argon2_*`` alike) so a figure
  measures IMAP, not hashing;
- ``imap_sessions``: closed-loop IMAP sessions from N worker processes, each
  connect, LOGIN, SELECT INBOX, FETCH 1:* (FLAGS), BODIES x FETCH n (BODY.PEEK[]),
  LOGOUT (7 ops with 3 bodies; the same session as the reference's ``imap_load.py``);
- ``idle_memory``: N connections in LOGIN + SELECT INBOX + IDLE, memory of the server's
  process tree (PSS, from ``/proc``) before and with them: KB per connection;
- ``imaptest_stress``: Dovecot's imaptest in stress mode (20 clients, default.mbox):
  logins done in the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---------------------------------------------------------------------------- our server


def prepare(workdir: Path, users: int, messages: int, size: int, *, real_passwords: bool = False) -> None:
    """The directory and the Maildirs (through storage, not SMTP)."""
    from mailstack.directory import Directory, Passwords
    from mailstack.storage import Maildir

    directory = Directory(f"sqlite:///{workdir / 'mailstack.db'}",
                          passwords=Passwords() if real_passwords else Passwords.fast())
    directory.migrate()
    directory.add_domain("example.test")
    body = (b"x" * 75 + b"\n") * max(1, size // 76)
    for u in range(1, users + 1):
        directory.add_user(f"user{u}@example.test", "pass")
        md = Maildir.for_user(workdir / "mailboxes", "example.test", f"user{u}")
        md.ensure()
        for i in range(messages):
            md.deliver(b"From: bench@example.org\nTo: user%d@example.test\nSubject: bench %d\n"
                       b"Message-ID: <%d.%d@bench>\n\n" % (u, i, u, i) + body)
    directory.close()


def write_config(workdir: Path, imap_port: int, pop3_port: int, *, workers: int, real_passwords: bool,
                 max_connections: int | None = None) -> Path:
    """``<workdir>/mailstack.toml`` for ``mailstack serve imap pop3`` over the store of ``prepare``.

    Everything else is the product's default: ``[auth] cache_ttl``, the TLS and
    plaintext-on-loopback policy, the per-process limits. ``real_passwords`` False: the
    ``[auth] argon2_*`` keys name the parameters of ``Passwords.fast()``, which made the
    hashes, so a login verifies the cheap hash and never rehashes it (no write to the
    database per login); True: the production argon2id policy (the keys left at 0)."""
    argon = "" if real_passwords else "argon2_time_cost = 1\nargon2_memory_cost = 256\nargon2_parallelism = 1\n"
    cap = "" if max_connections is None else f"max_connections = {max_connections}\n"
    cfg = workdir / "mailstack.toml"
    cfg.write_text(f'''hostname = "mx.example.test"
[server]
workers = {workers}
[database]
url = "sqlite:///{workdir / 'mailstack.db'}"
[storage]
maildir_root = "{workdir / 'mailboxes'}"
[tls]
cert_file = "{workdir / 'cert.pem'}"
key_file = "{workdir / 'key.pem'}"
[queue]
dir = "{workdir / 'queue'}"
[auth]
{argon}[imap]
listen = ["127.0.0.1:{imap_port}"]
tls_listen = []
# the load tools log in many times from one address: no per-address cap in the way
max_userip_connections = 100000
max_unauthenticated_per_ip = 100000
{cap}[pop3]
listen = ["127.0.0.1:{pop3_port}"]
tls_listen = []
{cap}''')
    return cfg


class MailServer:
    """``mailstack --config <workdir>/mailstack.toml serve imap pop3`` as a child process, as
    deployed: ``[server] workers`` processes (0 = the product default, one per CPU core)
    sharing the listeners. ``with MailServer(dir, real, workers=N) as srv: srv.imap_port ...``;
    ``srv.pid`` is the top of the process tree (the supervisor, or the one process of
    ``workers = 1``): CPU and memory figures take the whole tree (``tree_pids``).

    Ready = ``READY=1`` on ``$NOTIFY_SOCKET`` (a socket of ours): the supervisor sends it
    once every worker serves. ``max_connections``: ``[imap]``/``[pop3] max_connections`` (the
    per-process cap; the IDLE row needs more than the default 1000); None = the product's.
    """

    def __init__(self, workdir: Path, real_passwords: bool = False, *, workers: int = 0,
                 max_connections: int | None = None) -> None:
        self.workdir = workdir
        self.real_passwords = real_passwords
        self.workers = workers
        self.max_connections = max_connections
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> MailServer:
        cfg = write_config(self.workdir, self.imap_port, self.pop3_port, workers=self.workers,
                           real_passwords=self.real_passwords, max_connections=self.max_connections)
        notify_path = self.workdir / "notify.sock"
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path),
                   PYTHONPATH=os.pathsep.join([str(REPO), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]))
        raise_nofile()  # the server inherits it: 10,000 connections
        log = open(self.workdir / "server.log", "wb")
        # kept open until the server is gone: it says STOPPING=1 there too
        self.notify = notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path.unlink(missing_ok=True)  # the last server's
        notify.bind(str(notify_path))
        notify.settimeout(0.5)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailstack", "--config", str(cfg), "serve", "imap", "pop3"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.workdir))
        log.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    return self
            except TimeoutError:
                pass
        text = (self.workdir / "server.log").read_text(errors="replace")[-2000:]
        self.__exit__()
        raise RuntimeError(f"mailstack serve imap pop3 did not start: {text}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None


# ---------------------------------------------------------------------------- IMAP sessions


def _imap_worker(port: int, users: list[str], password: str, bodies: int, start_at: float, deadline: float,
                 seed: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    rnd = random.Random(seed)
    ops = sessions = errors = 0
    while time.monotonic() < start_at:
        time.sleep(0.001)
    k = seed
    while time.monotonic() < deadline:
        user = users[k % len(users)]
        k += 1
        c: imaplib.IMAP4 | None = None
        try:
            c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
            c.login(user, password)
            n = int(c.select("INBOX")[1][0] or 0)
            if n:
                c.fetch("1:*", "(FLAGS)")
            ops += 3
            for _ in range(bodies if n else 0):
                typ, _ = c.fetch(str(rnd.randint(1, n)), "(BODY.PEEK[])")
                ops += 1
                errors += typ != "OK"
            c.logout()
            ops += 1
            sessions += 1
        except (OSError, EOFError, imaplib.IMAP4.error):
            errors += 1
            if c is not None:
                with contextlib.suppress(OSError):
                    c.shutdown()
    q.put((ops, sessions, errors))


def imap_sessions(port: int, users: list[str], password: str, clients: int, seconds: float,
                  bodies: int = 3) -> dict[str, float]:
    """ops/s and sessions/s of ``clients`` closed-loop IMAP session workers."""
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start_at = time.monotonic() + 0.3
    deadline = start_at + seconds
    procs = [ctx.Process(target=_imap_worker, args=(port, users, password, bodies, start_at, deadline, i, q),
                         daemon=True) for i in range(clients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(5)
    return {"ops_per_s": round(sum(r[0] for r in results) / seconds, 1),
            "sessions_per_s": round(sum(r[1] for r in results) / seconds, 1),
            "errors": sum(r[2] for r in results)}


# ---------------------------------------------------------------------------- memory


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree, seconds: the supervisor and every worker."""
    total = 0.0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_pss_kb(root: int) -> int:
    """Proportional set size of a process tree, KB (``/proc/PID/smaps_rollup``)."""
    total = 0
    for pid in tree_pids(root):
        try:
            m = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total


async def _hold_idle(port: int, users: list[str], password: str, n: int, ready: asyncio.Event,
                     release: asyncio.Event, counts: dict[str, int]) -> None:
    # Logins a few at a time: from one address, more in flight at once get our per-client
    # auth limit's NO [UNAVAILABLE] ([auth] max_inflight_per_client), which is not IDLE's cost.
    logging_in = asyncio.Semaphore(4)

    async def one(i: int) -> None:
        writer = None
        try:
            async with logging_in:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
                await asyncio.wait_for(reader.readline(), 30)
                user = users[i % len(users)]
                for tag, cmd in ((b"a", f'LOGIN "{user}" "{password}"'.encode()), (b"b", b"SELECT INBOX")):
                    writer.write(tag + b" " + cmd + b"\r\n")
                    while True:
                        line = await asyncio.wait_for(reader.readline(), 60)
                        if not line:
                            raise ConnectionError("closed")
                        if line.startswith(tag + b" "):
                            if not line.startswith(tag + b" OK"):
                                raise ConnectionError(line.decode(errors="replace").strip())
                            break
            writer.write(b"c IDLE\r\n")
            line = await asyncio.wait_for(reader.readline(), 60)
            if not line.startswith(b"+"):
                raise ConnectionError("no IDLE continuation")
            counts["idle"] += 1
            if counts["idle"] + counts["failed"] >= n:
                ready.set()
            await release.wait()
            writer.write(b"DONE\r\nd LOGOUT\r\n")
            await writer.drain()
        except (OSError, asyncio.TimeoutError, ConnectionError):
            counts["failed"] += 1
            if counts["idle"] + counts["failed"] >= n:
                ready.set()
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(one(i) for i in range(n)))


def idle_memory(port: int, users: list[str], password: str, n: int, server_pid: int) -> dict[str, float]:
    """KB of PSS per connection held in IDLE (the server's whole process tree)."""
    raise_nofile()
    result: dict[str, float] = {}

    async def hold(count: int) -> tuple[asyncio.Event, asyncio.Task[None], dict[str, int]]:
        ready, release = asyncio.Event(), asyncio.Event()
        counts = {"idle": 0, "failed": 0}
        task = asyncio.create_task(_hold_idle(port, users, password, count, ready, release, counts))
        await asyncio.wait_for(ready.wait(), 600)
        return release, task, counts

    async def main() -> None:
        # warm-up: the first sessions fill caches (code paths, the folder index) that every
        # later one shares; they are not what a connection costs
        release, task, _ = await hold(min(n, 20))
        release.set()
        await asyncio.wait_for(task, 120)
        await asyncio.sleep(0.5)
        before = await asyncio.to_thread(tree_pss_kb, server_pid)
        ready, release = asyncio.Event(), asyncio.Event()
        counts = {"idle": 0, "failed": 0}
        task = asyncio.create_task(_hold_idle(port, users, password, n, ready, release, counts))
        try:
            await asyncio.wait_for(ready.wait(), 600)
            await asyncio.sleep(3.0)  # let the server settle: past [imap] hibernate_timeout (2 s), as Dovecot's is measured
            after = await asyncio.to_thread(tree_pss_kb, server_pid)
            result.update(idle=counts["idle"], failed=counts["failed"], pss_before_kb=before, pss_after_kb=after,
                          kb_per_conn=round((after - before) / max(1, counts["idle"]), 1))
        finally:
            release.set()
            await asyncio.wait_for(task, 120)

    asyncio.run(main())
    return result


# ---------------------------------------------------------------------------- imaptest


def imaptest_binary() -> str | None:
    """Dovecot's imaptest as the test suite finds it (``.ci/install-system-deps.sh`` builds it)."""
    return shutil.which("imaptest") or next((p for p in ("/usr/local/bin/imaptest",) if os.path.exists(p)), None)


def imaptest_stress(port: int, users: int, password: str, clients: int, seconds: int) -> dict[str, int]:
    """imaptest's stress mode; its Totals line (``Logi`` = logins done in the run)."""
    exe = imaptest_binary()
    if exe is None:
        raise FileNotFoundError("imaptest not built")
    mbox = Path(exe).resolve().parent.parent / "share" / "imaptest" / "tests" / "default.mbox"
    proc = subprocess.run(
        [exe, "host=127.0.0.1", f"port={port}", "user=user%d@example.test", f"users={users}", f"clients={clients}",
         f"secs={seconds}", f"pass={password}", f"mbox={mbox}"],
        capture_output=True, text=True, errors="replace", timeout=seconds + 60, stdin=subprocess.DEVNULL)
    m = re.search(r"^Totals:\n(.*)\n.*\n.*\n(.*)$", proc.stdout + proc.stderr, re.M)
    if not m:
        raise RuntimeError(f"no Totals in imaptest's output: {(proc.stdout + proc.stderr)[-300:]}")
    return dict(zip(m.group(1).split(), (int(v) for v in m.group(2).split()), strict=True))
