"""Outbound throughput: messages/s from submission to a remote MX, end to end.

Our side: the ``submission`` and ``queue`` services in one asyncio loop (as ``mailstack
serve``), a temporary directory/queue, the loopback test DNS (MX of remote.test ->
127.0.0.23) and an aiosmtpd sink on 127.0.0.23 as the remote MX. Clients are smtplib
threads that each keep one authenticated connection (plaintext AUTH from loopback) and
send N messages of ~2 KB to one remote recipient. The clock stops when the sink has
every message: that includes the queue fsyncs, the DKIM signature (RSA-2048) and the
outbound SMTP leg.

When Postfix is installed (and we are root), the same load is sent to a private Postfix
instance on 127.0.0.1 that relays to the same sink (``relayhost``, no DKIM), for scale.

    python benchmarks/smtp_outbound.py [--messages 400] [--connections 1,8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailstack.mail import dkim  # noqa: E402
from tests.dnsserver import TestDNS  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.outbound.conftest import REMOTE_IP, Remote  # noqa: E402
from tests.outbound.test_cli_restart import write_config  # noqa: E402

BODY = "From: Alice <alice@example.test>\r\nTo: x@remote.test\r\nSubject: bench\r\n\r\n" + ("x" * 70 + "\r\n") * 28


def send_load(port: int, n: int, conns: int, login: bool) -> None:
    per = [n // conns + (1 if i < n % conns else 0) for i in range(conns)]
    errors: list[BaseException] = []

    def worker(count: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
                c.ehlo("bench.test")
                if login:
                    c.login("alice@example.test", "correct horse battery staple")
                for _ in range(count):
                    c.sendmail("alice@example.test", ["x@remote.test"], BODY)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in per if k]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def wait_count(remote: Remote, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(remote.messages) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(remote.messages)}/{n} arrived")
        time.sleep(0.01)


def bench_mailstack(tmp: Path, dns: TestDNS, remote: Remote, n: int, conns: int, workers: int = 0) -> float:
    """Our server as its own process (``mailstack serve submission queue``), as deployed
    (``[server] workers``: 0 = the product default, one per CPU core): the client threads,
    the test DNS and the sink stay in this process."""
    from mailstack.config import load_config
    from mailstack.directory import Directory, Passwords

    sub_port = free_port()
    path = write_config(tmp, dns, remote.port, sub_port)
    path.write_text(path.read_text().replace("connect_timeout = 3\n", "connect_timeout = 3\nmax_per_domain = 8\n")
                    + f"[server]\nworkers = {workers}\n")
    cfg = load_config(path)
    d = Directory(cfg.database.url, passwords=Passwords.fast())
    d.migrate()
    d.add_domain("example.test")
    d.add_user("alice@example.test", "correct horse battery staple")
    d.close()
    key = dkim.generate_key(cfg.queue.dkim_dir, "example.test", "bench")
    dns.add(key.record_name, "TXT", dkim.txt_record(key))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(path), "serve", "submission", "queue",
                             "--log-level", "WARNING"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", sub_port), 0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise SystemExit(f"mailstack did not start: {err}") from None
                time.sleep(0.1)
        remote.handler.messages.clear()
        t0 = time.perf_counter()
        send_load(sub_port, n, conns, login=True)
        wait_count(remote, n)
        return n / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(30)


def bench_postfix(tmp: Path, remote: Remote, n: int, conns: int) -> float | None:
    exe = shutil.which("postfix") or "/usr/sbin/postfix"
    if not os.path.exists(exe) or os.geteuid() != 0:
        return None
    root = Path(tempfile.mkdtemp(prefix="mailstack-pfbench-"))
    os.chmod(root, 0o755)
    conf, spool, data, log = (root / x for x in ("etc", "spool", "data", "log"))
    for x in (conf, spool, data, log):
        x.mkdir()
    shutil.chown(data, "postfix", "postfix")
    port = free_port()
    (conf / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}/postfix.log
maillog_file_prefixes = {root}
myhostname = relay.bench.test
mydestination =
local_recipient_maps =
alias_maps =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{REMOTE_IP}]:{remote.port}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
""")
    (conf / "master.cf").write_text(f"""127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
""")
    if subprocess.run([exe, "-c", str(conf), "start"], capture_output=True).returncode != 0:
        return None
    try:
        time.sleep(1.0)
        remote.handler.messages.clear()
        t0 = time.perf_counter()
        send_load(port, n, conns, login=False)
        wait_count(remote, n)
        return n / (time.perf_counter() - t0)
    finally:
        subprocess.run([exe, "-c", str(conf), "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--connections", default="1,8")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    with TestDNS() as dns:
        dns.add("remote.test", "MX", "10 mx.remote.test")
        dns.add("mx.remote.test", "A", REMOTE_IP)
        remote = Remote(REMOTE_IP, free_port(REMOTE_IP))
        remote.start()
        try:
            for conns in (int(c) for c in args.connections.split(",")):
                with tempfile.TemporaryDirectory() as t:
                    ours = bench_mailstack(Path(t), dns, remote, args.messages, conns)
                with tempfile.TemporaryDirectory() as t:
                    pf = bench_postfix(Path(t), remote, args.messages, conns)
                pf_text = f"{pf:7.1f} msg/s" if pf else "   (not run)"
                print(f"{conns:3d} connection(s), {args.messages} x 2 KB: mailstack {ours:7.1f} msg/s   "
                      f"postfix relay {pf_text}", flush=True)
        finally:
            remote.stop()


if __name__ == "__main__":
    main()
