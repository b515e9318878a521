#!/usr/bin/env python3
"""Inbound SMTP throughput: messages/s accepted *and fsynced into Maildirs* by the MX.

Not a test (no assertion): a measurement to compare with Postfix at equal durability.

What it does:
1. makes a temp config/store (SQLite directory, domain example.test, user1@example.test,
   Maildir root, queue dir, self-signed cert) on free loopback ports;
2. starts ``python -m mailstack --config <tmp> serve smtp`` as a child process (the real
   deployment path) and waits for its port;
3. runs Postfix's ``smtp-source -s S -m M -l 5000 -f sender@example.org
   -t user1@example.test`` for S = 1 and 20 sessions (one message per connection, as
   smtp-source does without -d); accepted msg/s = M / wall time; since mailstack answers
   250 only after the file is fsynced in new/ (and new/ is fsynced), accepted = durable;
   it then checks that exactly M files are in the Maildir;
4. if a reference Postfix is running on 127.0.0.1:31025 (one you set up to compare
   with, same disk, same durability), runs the same load against it and prints the ratio
   ours/Postfix per session count;
5. with ``--rspamd``: starts a real rspamd + redis-server on loopback (the offline config of
   tests/spam/rspamd_peer.py) and runs the same load again against an MX that scans every
   message through it (``[spam] rspamd_url``, loopback not ignored), so the cost of
   filtering is a number: msg/s without and with scanning, and their ratio.

Usage: python benchmarks/smtp_inbound.py [-m 2000] [--sessions 1,20] [--uvloop] [--rspamd]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
REFERENCE = ("127.0.0.1", 31025)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def count_files(maildir: Path) -> int:
    n = 0
    for sub in ("new", "cur"):
        d = maildir / sub
        if d.is_dir():
            n += sum(1 for e in os.scandir(d) if not e.name.startswith("."))
    return n


def clear(maildir: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        d = maildir / sub
        if d.is_dir():
            for e in os.scandir(d):
                os.unlink(e.path)
    ms = maildir / "maildirsize"
    if ms.exists():
        ms.unlink()


def cpu_of(pid: int) -> float:
    """CPU seconds of the server's process tree: the supervisor and its workers."""
    from mail_loads import tree_cpu_seconds

    return tree_cpu_seconds(pid)


def run_source(host: str, port: int, sessions: int, messages: int, size: int, timeout: float) -> float:
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-f", "sender@example.org", "-t", "user1@example.test", f"{host}:{port}"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:500]}")
    return wall


def setup_store(tmp: Path, port: int, extra: str = "", name: str = "etc") -> Path:
    from mailstack.directory import Directory, Passwords

    cfg = tmp / name / "mailstack.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        f'''hostname = "mx.example.test"
[database]
url = "sqlite:///{tmp}/var/mailstack.db"
[storage]
maildir_root = "{tmp}/mailboxes"
[tls]
cert_file = "{tmp}/var/tls/cert.pem"
key_file = "{tmp}/var/tls/key.pem"
[smtp]
listen = ["127.0.0.1:{port}"]
max_connections_per_ip = 100
[submission]
listen = []
tls_listen = []
[lmtp]
listen = []
[imap]
listen = []
tls_listen = []
[pop3]
listen = []
tls_listen = []
[http]
listen = []
[queue]
dir = "{tmp}/var/queue"
''' + extra
    )
    (tmp / "var").mkdir(exist_ok=True)
    d = Directory(f"sqlite:///{tmp}/var/mailstack.db", passwords=Passwords.fast())
    d.migrate()
    if d.get_domain("example.test") is None:
        d.add_domain("example.test")
        d.add_user("user1@example.test", "pass")
    d.close()
    return cfg


def start_server(cfg: Path, port: int, uvloop: bool) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "mailstack", "--config", str(cfg), "serve", "smtp"]
    if uvloop:
        cmd = [sys.executable, "-c", "import uvloop,runpy,sys; uvloop.install(); sys.argv=['mailstack']+sys.argv[1:];"
               " runpy.run_module('mailstack', run_name='__main__')", "--config", str(cfg), "serve", "smtp"]
    log = open(cfg.parent / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(cfg.parent))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {(cfg.parent / 'server.log').read_text()[-2000:]}")
        if port_open("127.0.0.1", port):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def measure(target: str, cfg: Path, port: int, maildir: Path, sessions: list[int],
            a: argparse.Namespace) -> list[dict[str, Any]]:
    """One server (``cfg``), the load for each session count; a row per count."""
    server = start_server(cfg, port, a.uvloop)
    results: list[dict[str, Any]] = []
    try:
        run_source("127.0.0.1", port, 1, 20, a.size, a.timeout)  # warm-up
        for s in sessions:
            clear(maildir)
            cpu0 = cpu_of(server.pid)
            wall = run_source("127.0.0.1", port, s, a.messages, a.size, a.timeout)
            cpu = cpu_of(server.pid) - cpu0
            files = count_files(maildir)
            row = {"target": target, "sessions": s, "messages": a.messages, "size": a.size,
                   "accepted_per_s": round(a.messages / wall, 1), "wall_s": round(wall, 2),
                   "files_in_maildir": files, "server_cpu_ms_per_msg": round(1000 * cpu / a.messages, 2)}
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--messages", type=int, default=2000)
    ap.add_argument("-l", "--size", type=int, default=5000)
    ap.add_argument("--sessions", default="1,20")
    ap.add_argument("--uvloop", action="store_true", help="run the server on uvloop (if installed)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json-out")
    ap.add_argument("--rspamd", action="store_true", help="also measure with rspamd scanning every message")
    a = ap.parse_args()
    if not os.path.exists(SMTP_SOURCE):
        print("smtp-source not found (Debian package postfix)", file=sys.stderr)
        return 1
    sessions = [int(x) for x in a.sessions.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="mailstack-bench-"))
    port = free_port()
    cfg = setup_store(tmp, port)
    maildir = tmp / "mailboxes" / "example.test" / "user1"
    results = measure("mailstack", cfg, port, maildir, sessions, a)
    if a.rspamd:
        from tests.spam.rspamd_peer import start_rspamd

        peer = start_rspamd(tmp / "rspamd")
        try:
            port = free_port()
            spam = (f'[spam]\nrspamd_url = "{peer.url}"\n'
                    '[checks]\nenabled = false\nignore_networks = []\n')  # loopback scanned; no DNS
            cfg = setup_store(tmp, port, spam, name="etc-rspamd")
            results += measure("mailstack+rspamd", cfg, port, maildir, sessions, a)
        finally:
            peer.stop()
        for s in sessions:
            plain = next(r for r in results if r["target"] == "mailstack" and r["sessions"] == s)
            scanned = next(r for r in results if r["target"] == "mailstack+rspamd" and r["sessions"] == s)
            print(f"sessions={s}: without rspamd {plain['accepted_per_s']} msg/s, with rspamd scanning "
                  f"{scanned['accepted_per_s']} msg/s, ratio {float(scanned['accepted_per_s']) / float(plain['accepted_per_s']):.2f}")
    if not a.no_reference and port_open(*REFERENCE):
        for s in sessions:
            wall = run_source(*REFERENCE, s, a.messages, a.size, a.timeout)
            row = {"target": "postfix-reference", "sessions": s, "messages": a.messages, "size": a.size,
                   "accepted_per_s": round(a.messages / wall, 1), "wall_s": round(wall, 2)}
            results.append(row)
            print(json.dumps(row), flush=True)
        for s in sessions:
            ours = next(r for r in results if r["target"] == "mailstack" and r["sessions"] == s)
            ref = next(r for r in results if r["target"] == "postfix-reference" and r["sessions"] == s)
            print(f"sessions={s}: mailstack {ours['accepted_per_s']} msg/s, Postfix {ref['accepted_per_s']} msg/s,"
                  f" ratio {ours['accepted_per_s'] / ref['accepted_per_s']:.2f}")
    else:
        print("reference Postfix not running on 127.0.0.1:31025: mailstack figures only")
        for r in results:
            print(f"sessions={r['sessions']}: {r['target']} {r['accepted_per_s']} msg/s "
                  f"({r['files_in_maildir']}/{r['messages']} files, {r['server_cpu_ms_per_msg']} ms CPU/msg)")
    if a.json_out:
        with open(a.json_out, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
