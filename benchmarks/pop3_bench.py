#!/usr/bin/env python3
"""POP3 download benchmark: messages/s and commands/s for N concurrent clients.

Starts ``mailstack serve imap pop3`` as deployed (``mail_loads.MailServer``: ``[server]
workers`` processes from ``--workers``, 0 = one per CPU core) on free loopback ports with a
temporary store, fills the mailboxes through storage (``Maildir.deliver``), then runs closed-loop POP3 sessions from N worker processes:

    connect, USER+PASS (one "login" op), STAT, LIST, BODIES x RETR <random n>, QUIT

= 7 ops per session with 3 bodies, like ``imap_load.py --proto pop3`` (the load
generator ``imap_bench.py`` runs).
Each worker has its own slice of users: one maildrop serves one POP3 session at a time
(RFC 1939 §8; a second login gets ``[IN-USE]``), so workers never collide on a lock.

When a reference Dovecot POP3 is running on 127.0.0.1:31110 (``--reference-port``;
users ``userN@example.test`` / ``pass``, already populated) the same load runs there,
alternating with ours, and the ratio is printed. Without it only our figures appear.

Passwords: the reference Dovecot uses ``{PLAIN}`` passwords; our users here get
argon2id with cheap parameters (``Passwords.fast()``) so the figure measures the POP3
server, not the password hash (production argon2id costs ~350 ms CPU per login).

    python benchmarks/pop3_bench.py --clients 1,4,16 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import poplib
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mail_loads  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the server's process tree: the supervisor and its workers."""
    return mail_loads.tree_cpu_seconds(pid)


# ---------------------------------------------------------------------------
# load


def worker(port: int, users: list[str], password: str, bodies: int, start_at: float, deadline: float,
           seed: int, q: "mp.Queue[dict[str, object]]") -> None:
    rnd = random.Random(seed)
    st = {"ops": 0, "retr": 0, "sessions": 0, "errors": 0, "bytes": 0, "samples": []}
    while time.monotonic() < start_at:
        time.sleep(0.001)
    k = 0
    while time.monotonic() < deadline:
        user = users[k % len(users)]
        k += 1
        try:
            p = poplib.POP3("127.0.0.1", port, timeout=10)
            try:
                p.user(user)
                p.pass_(password)
                st["ops"] += 1
                n, _ = p.stat()
                st["ops"] += 1
                p.list()
                st["ops"] += 1
                for _ in range(bodies if n else 0):
                    _r, _lines, octets = p.retr(rnd.randint(1, n))
                    st["ops"] += 1
                    st["retr"] += 1
                    st["bytes"] += octets
                p.quit()
                st["ops"] += 1
                st["sessions"] += 1
            finally:
                p.close()
        except (OSError, EOFError, poplib.error_proto) as e:
            st["errors"] += 1
            if len(st["samples"]) < 3:
                st["samples"].append(repr(e)[:120])
    q.put(st)


def run_load(port: int, users: list[str], password: str, clients: int, seconds: float, bodies: int,
             server_pid: int | None) -> dict[str, object]:
    ctx = mp.get_context("fork")
    q: mp.Queue[dict[str, object]] = ctx.Queue()
    start_at = time.monotonic() + 0.3
    deadline = start_at + seconds
    slices = [users[i::clients] for i in range(clients)]
    procs = [ctx.Process(target=worker, args=(port, s, password, bodies, start_at, deadline, i, q), daemon=True)
             for i, s in enumerate(slices)]
    for p in procs:
        p.start()
    cpu0 = cpu_seconds(server_pid) if server_pid else None
    results = [q.get(timeout=seconds + 30) for _ in procs]
    cpu1 = cpu_seconds(server_pid) if server_pid else None
    for p in procs:
        p.join(5)
    tot = {k: sum(r[k] for r in results) for k in ("ops", "retr", "sessions", "errors", "bytes")}  # type: ignore[misc]
    out: dict[str, object] = {
        "clients": clients,
        "ops_per_s": round(tot["ops"] / seconds, 1),
        "msgs_per_s": round(tot["retr"] / seconds, 1),
        "sessions_per_s": round(tot["sessions"] / seconds, 1),
        "mb_per_s": round(tot["bytes"] / seconds / 1e6, 2),
        "errors": tot["errors"],
        "error_samples": [s for r in results for s in r["samples"]][:3],  # type: ignore[union-attr]
    }
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_ms_per_session"] = round((cpu1 - cpu0) * 1000 / max(1, tot["sessions"]), 2)
    return out


def reference_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            return s.recv(100).startswith(b"+OK")
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--messages", type=int, default=20, help="messages per mailbox")
    ap.add_argument("--size", type=int, default=5000, help="message body bytes")
    ap.add_argument("--bodies", type=int, default=3, help="RETRs per session")
    ap.add_argument("--reference-port", type=int, default=31110)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--json-out")
    ap.add_argument("--workers", type=int, default=0, help="[server] workers of our server (0: one per CPU core)")
    a = ap.parse_args()

    levels = [int(x) for x in a.clients.split(",")]
    ref = not a.no_reference and reference_up("127.0.0.1", a.reference_port)
    users = [f"user{i}@example.test" for i in range(1, a.users + 1)]
    with tempfile.TemporaryDirectory(prefix="pop3-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        mail_loads.prepare(work, a.users, a.messages, a.size)
        print(f"filled {a.users} mailboxes x {a.messages} messages in {time.monotonic() - t0:.1f}s", flush=True)
        with mail_loads.MailServer(work, workers=a.workers) as child:
            port = child.pop3_port
            rows = []
            for n in levels:
                ours = run_load(port, users, "pass", n, a.seconds, a.bodies, child.pid)
                theirs = (run_load(a.reference_port, users, "pass", n, a.seconds, a.bodies, None)
                          if ref else None)
                rows.append({"ours": ours, "dovecot": theirs})
                line = (f"clients={n:3d}  mailstack: {ours['ops_per_s']:7.1f} ops/s {ours['msgs_per_s']:7.1f} msg/s"
                        f" {ours['sessions_per_s']:6.1f} sess/s errors={ours['errors']}"
                        f" cpu={ours.get('server_cpu_ms_per_session', '-')} ms/session")
                if theirs:
                    ratio = ours["ops_per_s"] / theirs["ops_per_s"] if theirs["ops_per_s"] else float("inf")  # type: ignore[operator]
                    line += (f"  | dovecot: {theirs['ops_per_s']:7.1f} ops/s {theirs['msgs_per_s']:7.1f} msg/s"
                             f" errors={theirs['errors']}  | ratio {ratio:.2f}")
                print(line, flush=True)
                if ours["errors"]:
                    print("   our errors:", ours["error_samples"])
            if not ref:
                print(f"(reference Dovecot POP3 not up on 127.0.0.1:{a.reference_port}: no ratio)")
            if a.json_out:
                with open(a.json_out, "a") as f:
                    f.write(json.dumps({"bench": "pop3", "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
