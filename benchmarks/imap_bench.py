#!/usr/bin/env python3
"""IMAP benchmark: operations/s for N concurrent clients, and memory per idle connection.

Starts ``mailstack serve imap pop3`` as deployed (``mail_loads.MailServer``: ``[server]
workers`` processes from ``--workers``, 0 = one per CPU core) on a free loopback port with
a temporary store (users ``user1..userN@example.test`` / ``pass``,
mailboxes filled through storage), then measures it with two load generators that are
not part of this repository, run as subprocesses against any host/port, found in the
folder named by ``--tools`` or ``$MAILSTACK_REFERENCE_TOOLS`` (without one, the loads
that need them are left out and the STORE + SEARCH loop still runs):

- ``imap_load.py``: closed-loop sessions (LOGIN, SELECT INBOX, FETCH 1:* (FLAGS),
  BODIES x FETCH n (BODY.PEEK[]), LOGOUT) for each client count: ops/s;
- a STORE + SEARCH loop of our own (imaplib; per op: ``UID STORE n +/-FLAGS \\Flagged``,
  ``UID SEARCH FLAGGED``, ``SEARCH SUBJECT``): ops/s;
- ``imap_idle_mem.py``: 1,000 connections in LOGIN + SELECT + IDLE: memory per connection.

When a reference Dovecot is running on 127.0.0.1:31143 (users ``userN@example.test`` /
``pass``) the same loads run there too and the ratio is printed; without it only our
figures appear. For its memory figure, ``$MAILSTACK_REFERENCE_PIDFILE`` names that
Dovecot's ``master.pid``. Our users get cheap argon2id hashes
(``Passwords.fast()``), as the reference uses ``{PLAIN}``: the figure measures IMAP,
not password hashing.

    python benchmarks/imap_bench.py --clients 1,4,16 --seconds 15 --idle 1000
"""

from __future__ import annotations

import argparse
import imaplib
import json
import multiprocessing as mp
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mail_loads  # noqa: E402
# The folder of imap_load.py / imap_idle_mem.py (--tools overrides); None = those loads are left out.
REFERENCE: Path | None = Path(os.environ["MAILSTACK_REFERENCE_TOOLS"]) if os.environ.get("MAILSTACK_REFERENCE_TOOLS") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---------------------------------------------------------------------------- loads


def run_tool(args: list[str], timeout: float) -> dict[str, object]:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return {"error": (proc.stdout + proc.stderr)[-500:]}


def session_load(port: int, clients: int, seconds: float, users: int, server_pid: int | None) -> dict[str, object]:
    assert REFERENCE is not None
    args = [str(REFERENCE / "imap_load.py"), "--port", str(port), "--seconds", str(seconds), "-c", str(clients),
            "--user-range", f"1-{users}", "--password", "pass"]
    if server_pid:
        args += ["--server-pid", str(server_pid)]
    return run_tool(args, seconds + 120)


def _store_search_worker(port: int, user: str, deadline: float, seed: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    rnd = random.Random(seed)
    ops = errors = 0
    try:
        c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        c.login(user, "pass")
        n = int(c.select("INBOX")[1][0] or 0)
        while time.monotonic() < deadline and n:
            uid = str(rnd.randint(1, n))
            for cmd in (lambda: c.uid("STORE", uid, "+FLAGS", "(\\Flagged)"),
                        lambda: c.uid("SEARCH", "FLAGGED"),
                        lambda: c.uid("STORE", uid, "-FLAGS", "(\\Flagged)"),
                        lambda: c.search(None, "SUBJECT", '"bench 1"')):
                typ, _ = cmd()
                ops += 1
                errors += typ != "OK"
        c.logout()
    except (OSError, imaplib.IMAP4.error) as e:
        errors += 1
        print(f"store/search worker: {e!r}", file=sys.stderr)
    q.put((ops, errors))


def store_search_load(port: int, clients: int, seconds: float, users: int) -> dict[str, object]:
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    deadline = time.monotonic() + seconds
    procs = [ctx.Process(target=_store_search_worker,
                         args=(port, f"user{(i % users) + 1}@example.test", deadline, i, q), daemon=True)
             for i in range(clients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(5)
    ops = sum(r[0] for r in results)
    return {"clients": clients, "ops_per_s": round(ops / seconds, 1), "errors": sum(r[1] for r in results)}


def idle_memory(port: int, n: int, users: int, server_pid: int | None, pidfile: str | None) -> dict[str, object]:
    assert REFERENCE is not None
    args = [str(REFERENCE / "imap_idle_mem.py"), "--port", str(port), "-n", str(n), "--user-range", f"1-{users}",
            "--password", "pass", "--max-seconds", "300"]
    if server_pid:
        args += ["--server-pid", str(server_pid)]
    elif pidfile:
        args += ["--server-pidfile", pidfile]
    return run_tool(args, 360)


def reference_up(port: int = 31143) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(100).startswith(b"* OK")
    except OSError:
        return False


def dovecot_pidfile() -> str | None:
    """The reference Dovecot's master.pid, from ``$MAILSTACK_REFERENCE_PIDFILE`` (None: unknown)."""
    p = os.environ.get("MAILSTACK_REFERENCE_PIDFILE", "")
    return p if p and Path(p).exists() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,16", help="client counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--messages", type=int, default=100, help="messages per user")
    ap.add_argument("--size", type=int, default=5000, help="bytes per message")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections to measure (0: skip)")
    ap.add_argument("--no-reference", action="store_true", help="do not measure Dovecot even when it is up")
    ap.add_argument("--tools", help="folder of imap_load.py and imap_idle_mem.py (default: $MAILSTACK_REFERENCE_TOOLS)")
    ap.add_argument("--json-out")
    ap.add_argument("--workers", type=int, default=0, help="[server] workers of our server (0: one per CPU core)")
    a = ap.parse_args()
    raise_nofile()
    global REFERENCE
    if a.tools:
        REFERENCE = Path(a.tools)
    tools = REFERENCE is not None and (REFERENCE / "imap_load.py").exists() and (REFERENCE / "imap_idle_mem.py").exists()
    if not tools:
        print("imap_load.py / imap_idle_mem.py not found (--tools or $MAILSTACK_REFERENCE_TOOLS): "
              "session and IDLE-memory loads left out")
    clients = [int(x) for x in a.clients.split(",") if x]
    ref = not a.no_reference and reference_up()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="imap-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        mail_loads.prepare(work, a.users, a.messages, a.size)
        print(f"store: {a.users} users x {a.messages} messages of {a.size} B in {time.monotonic() - t0:.1f}s")
        # the IMAP cap per process is 1000 in code: raised when --idle holds more
        cap = a.idle + 100 if a.idle + 100 > 1000 else None
        with mail_loads.MailServer(work, workers=a.workers, max_connections=cap) as server:
            port = server.imap_port
            print(f"dovecot on 127.0.0.1:31143: {'up' if ref else 'not running (our figures only)'}")
            for c in clients if tools else []:
                ours = session_load(port, c, a.seconds, a.users, server.pid)
                line = f"sessions c={c:3d}: ours {ours.get('ops_per_s', '?'):>7} ops/s (errors {ours.get('errors')})"
                row: dict[str, object] = {"test": "sessions", "clients": c, "ours": ours}
                if ref:
                    theirs = session_load(31143, c, a.seconds, 100, None)
                    row["dovecot"] = theirs
                    if isinstance(ours.get("ops_per_s"), (int, float)) and theirs.get("ops_per_s"):
                        ratio = float(ours["ops_per_s"]) / float(theirs["ops_per_s"])  # type: ignore[arg-type]
                        row["ratio"] = round(ratio, 2)
                        line += f" | dovecot {theirs['ops_per_s']:>7} ops/s | ratio {ratio:.2f}"
                print(line, flush=True)
                rows.append(row)
            for c in clients:
                ours = store_search_load(port, c, a.seconds, a.users)
                line = f"store+search c={c:3d}: ours {ours['ops_per_s']:>7} ops/s (errors {ours['errors']})"
                row = {"test": "store_search", "clients": c, "ours": ours}
                if ref:
                    theirs = store_search_load(31143, c, a.seconds, 100)
                    row["dovecot"] = theirs
                    if theirs["ops_per_s"]:
                        ratio = float(ours["ops_per_s"]) / float(theirs["ops_per_s"])  # type: ignore[arg-type]
                        row["ratio"] = round(ratio, 2)
                        line += f" | dovecot {theirs['ops_per_s']:>7} ops/s | ratio {ratio:.2f}"
                print(line, flush=True)
                rows.append(row)
            if a.idle and tools:
                ours = idle_memory(port, a.idle, a.users, server.pid, None)
                row = {"test": "idle", "connections": a.idle, "ours": ours}
                line = f"idle n={a.idle}: ours {json.dumps({k: v for k, v in ours.items() if 'per' in k or k in ('established', 'error')})}"
                if ref:
                    theirs = idle_memory(31143, a.idle, 100, None, dovecot_pidfile())
                    row["dovecot"] = theirs
                    line += f" | dovecot {json.dumps({k: v for k, v in theirs.items() if 'per' in k})}"
                print(line, flush=True)
                rows.append(row)
    if a.json_out:
        with open(a.json_out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
