"""The CLI nouns (queue, dkim, dns) and the queue surviving kill -9 of `mailstack serve`."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

from mailstack.queue import QueueStore
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import REMOTE_IP, Remote

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, dns: TestDNS, remote_port: int, sub_port: int = 0) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    p = etc / "mailstack.toml"
    p.write_text(f"""
hostname = "mx.example.test"
[database]
url = "sqlite:///../var/mailstack.db"
[storage]
maildir_root = "../mailboxes"
[smtp]
listen = []
[submission]
listen = ["127.0.0.1:{sub_port or free_port()}"]
tls_listen = []
[lmtp]
listen = []
[imap]
listen = []
[pop3]
listen = []
[http]
listen = []
[queue]
dir = "../var/queue"
smtp_port = {remote_port}
retry_initial = 600
scan_interval = 0.5
connect_timeout = 3
[dns]
nameservers = ["{dns.address}"]
timeout = 3
""")
    return p


def cli(config: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config), *args], capture_output=True,
                          text=True, env=env, timeout=60, input=input)


def test_dkim_keygen_and_dns_records_and_check(tmp_path: Path, dns: TestDNS) -> None:
    config = write_config(tmp_path, dns, 25)
    r = cli(config, "dkim", "keygen", "example.test", "--selector", "s1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("s1._domainkey.example.test. 3600 IN TXT")
    key_file = tmp_path / "var" / "dkim" / "example.test" / "s1.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = cli(config, "dkim", "keygen", "example.test", "--selector", "s1")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert cli(config, "dkim", "keygen", "example.test", "--selector", "e1", "--algorithm", "ed25519").returncode == 0

    recs = cli(config, "dns", "records", "example.test", "--json")
    assert recs.returncode == 0
    rows = json.loads(recs.stdout)
    kinds = {r["what"] for r in rows}
    assert {"MX", "SPF", "DMARC", "DKIM s1", "DKIM e1", "SRV _submission._tcp", "SRV _imaps._tcp"} <= kinds
    by = {r["what"]: r for r in rows}
    assert by["SPF"]["value"] == "v=spf1 mx -all"
    assert by["DMARC"]["value"] == "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test"
    assert by["MX"]["value"] == "10 mx.example.test."

    # nothing published: check fails
    chk = cli(config, "dns", "check", "example.test")
    assert chk.returncode == 1 and "missing" in chk.stdout
    # publish all of it (SRV targets as printed), one SPF wrong
    for row in rows:
        value = row["value"]
        if row["what"] == "SPF":
            value = "v=spf1 a -all"
        dns.add(row["name"], row["type"], value.rstrip(".") if row["type"] == "MX" else value)
    chk = cli(config, "dns", "check", "example.test", "--json")
    states = {r["what"]: r["state"] for r in json.loads(chk.stdout)}
    assert chk.returncode == 1
    assert states.pop("SPF") == "different"
    assert set(states.values()) == {"ok"}, states
    dns.remove("example.test", "TXT")
    dns.add("example.test", "TXT", "v=spf1 mx -all")
    assert cli(config, "dns", "check", "example.test").returncode == 0


def test_queue_list_show_flush_delete(tmp_path: Path, dns: TestDNS) -> None:
    config = write_config(tmp_path, dns, 25)
    store = QueueStore(tmp_path / "var" / "queue")
    a = store.enqueue("alice@example.test", ["x@remote.test"], b"Subject: a\r\n\r\nA\r\n")
    b = store.enqueue("alice@example.test", ["y@remote.test"], b"Subject: b\r\n\r\nB\r\n")
    store.save(QueueStore.updated(store.envelope(a), attempts=2, next_attempt=time.time() + 3600,
                                  extra={"last_error": "451 4.4.1 connect failed"}))
    r = cli(config, "queue", "list", "--json")
    rows = json.loads(r.stdout)
    assert [x["id"] for x in rows] == [a, b]
    assert rows[0]["attempts"] == 2 and rows[0]["last_error"] == "451 4.4.1 connect failed"
    assert set(rows[0]) >= {"id", "sender", "recipients", "attempts", "next_try", "last_error"}
    show = cli(config, "queue", "show", a)
    assert show.returncode == 0 and "Subject: a" in show.stdout and "attempts: 2" in show.stdout
    assert cli(config, "queue", "show", "00000000000000000A").returncode == 1
    assert cli(config, "queue", "flush").returncode == 0
    assert store.envelope(a).next_attempt <= time.time()
    assert (tmp_path / "var" / "queue" / ".wake").exists()
    d = cli(config, "queue", "delete", a, "--bounce")
    assert d.returncode == 0, d.stderr
    left = store.list()
    assert a not in left and b in left and len(left) == 2  # b and the bounce
    bounce = [store.load(i) for i in left if i != b][0]
    assert bounce[0].sender == "" and bounce[0].recipients == ("alice@example.test",)
    assert cli(config, "queue", "delete", b).returncode == 0


def _wait_port(port: int, timeout: float = 30.0, proc: "subprocess.Popen[bytes] | None" = None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"serve exited with {proc.returncode}: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listening on {port}")


def _serve(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAILSTACK_STOP_GRACE": "1"}
    return subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(config), "serve", "submission", "queue"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_queued_mail_survives_kill_9_and_is_delivered_after_flush(tmp_path: Path, dns: TestDNS) -> None:
    from mailstack.directory import Directory

    remote = Remote(REMOTE_IP, free_port(REMOTE_IP))  # not started: the remote MX is down
    sub_port = free_port()
    config = write_config(tmp_path, dns, remote.port, sub_port)
    d = Directory(f"sqlite:///{tmp_path}/var/mailstack.db")
    d.migrate()
    d.add_domain("example.test")
    d.add_user("alice@example.test", "correct horse battery staple")
    d.close()
    proc = _serve(config)
    try:
        _wait_port(sub_port, proc=proc)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as c:
            c.starttls(context=ctx)
            c.login("alice@example.test", "correct horse battery staple")
            c.sendmail("alice@example.test", ["x@remote.test"],
                       "From: alice@example.test\r\nSubject: persistent\r\n\r\nsurvive\r\n")
        store = QueueStore(tmp_path / "var" / "queue")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the first attempt fails: remote down
            ids = store.list()
            if ids and store.envelope(ids[0]).attempts >= 1:
                break
            time.sleep(0.1)
        (qid,) = store.list()
        assert store.envelope(qid).attempts == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
    remote.start()
    proc = _serve(config)
    try:
        _wait_port(sub_port, proc=proc)
        time.sleep(1.0)
        assert remote.messages == []  # not due yet (retry_initial = 600)
        assert cli(config, "queue", "flush").returncode == 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not remote.messages:
            time.sleep(0.1)
        assert len(remote.messages) == 1 and b"survive" in remote.messages[0].data
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and store.list():
            time.sleep(0.1)
        assert store.list() == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        remote.stop()
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert "Traceback" not in err, err[-3000:]
