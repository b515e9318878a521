"""``mailstack status [--json]`` against a real ``mailstack serve`` process: every service up
(exit 0), one service stopped (1), nothing running (2), and the JSON shape of the contract."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mailstack import net
from mailstack.config import ListenAddress, TLSConfig
from mailstack.ops.status import probe
from mailstack.queue import QueueStore
from tests.helpers import free_port
from tests.ops.conftest import ports_for, running, write_config

SERVICES = ("smtp", "submission", "lmtp", "imap", "pop3", "http")


def status(conf: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "mailstack", "--config", str(conf), "status", *args],
                          capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def status_json(conf: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = status(conf, "--json", *args)
    assert err == ""
    return code, json.loads(out)


def test_all_up_then_a_stuck_queue_then_an_expiring_certificate(tmp_path: Path) -> None:
    ports = ports_for(*SERVICES)
    conf = write_config(tmp_path, ports)
    with running(conf, ports):
        code, report = status_json(conf)
        assert code == 0, report["problems"]
        assert report["status"] == "ok" and report["problems"] == []
        # the contract's shape
        assert set(report) >= {"status", "services", "queue", "certificates", "disk"}
        assert set(report["services"]) == {*SERVICES, "queue"}  # the queue comes with smtp/submission
        for name in SERVICES:
            (only,) = report["services"][name]["checks"]
            assert report["services"][name]["up"] is True and only["address"] == f"127.0.0.1:{ports[name]}"
        assert report["services"]["smtp"]["checks"][0]["detail"].startswith("220 mx.example.test")
        assert report["services"]["imap"]["checks"][0]["detail"].startswith("* OK")
        assert report["services"]["pop3"]["checks"][0]["detail"].startswith("+OK")
        assert report["queue"] == {"size": 0, "oldest_seconds": None, "deferred": 0, "overdue": 0,
                                   "partial": False, "error": None}
        (cert,) = report["certificates"]
        assert cert["hostname"] == "mx.example.test" and cert["error"] is None and cert["days_left"] > 30
        assert set(cert) >= {"hostname", "issuer", "not_after", "days_left", "error"}
        assert report["disk"]["mail"]["free_bytes"] > 0 and report["disk"]["queue"]["total_bytes"] > 0
        assert report["database"]["up"] is True
        assert report["spam"] is None  # no [spam] rspamd_url: nothing to check

        code, out, _ = status(conf)
        assert code == 0 and out.startswith("MAILSTACK OK - ")

        # a message due for ten minutes and nobody delivers it: this serve runs no queue service
        store = QueueStore(tmp_path / "var" / "queue")
        qid = store.enqueue("alice@example.test", ["friend@remote.test"], b"Subject: x\r\n\r\nx\r\n")
        env = store.envelope(qid)
        store.save(QueueStore.updated(env, attempts=1, next_attempt=time.time() - 600))
        code, report = status_json(conf)
        assert code == 1 and report["status"] == "degraded"
        assert report["services"]["queue"]["up"] is False
        assert report["queue"]["size"] == 1 and report["queue"]["deferred"] == 1 and report["queue"]["overdue"] == 1
        assert 0 <= report["queue"]["oldest_seconds"] < 600
        store.remove(qid)

        # thresholds are the admin's: a certificate with ~800 days left is "soon" for 10,000
        code, report = status_json(conf, "--cert-warn-days", "10000")
        assert code == 1 and any(p.startswith("certificate ") for p in report["problems"])


def test_a_stopped_service_is_degraded(tmp_path: Path) -> None:
    ports = ports_for("smtp", "imap", "http")
    conf = write_config(tmp_path, ports)
    with running(conf, ports, services=("smtp", "http")):  # imap is enabled but not running
        code, report = status_json(conf)
        code_text, out, _ = status(conf)
    assert code == 1 and code_text == 1
    assert report["status"] == "degraded"
    assert report["services"]["smtp"]["up"] is True and report["services"]["http"]["up"] is True
    assert report["services"]["imap"]["up"] is False
    assert report["services"]["imap"]["checks"][0]["detail"] == "connection refused"
    assert report["problems"] == [f"imap: 127.0.0.1:{ports['imap']}: connection refused"]
    assert out.startswith(f"MAILSTACK DEGRADED - imap: 127.0.0.1:{ports['imap']}: connection refused")


def test_nothing_running_is_down(tmp_path: Path) -> None:
    ports = ports_for("smtp", "imap")
    conf = write_config(tmp_path, ports)
    with running(conf, ports):
        pass  # made the certificate, the queue folder, the schema; then stopped
    code, report = status_json(conf)
    assert code == 2 and report["status"] == "down"
    assert "no service answers" in report["problems"]
    assert not report["services"]["smtp"]["up"] and not report["services"]["imap"]["up"]
    assert report["database"]["up"] is True  # the database is a file: it still answers


def test_a_missing_database_is_down_and_not_created(tmp_path: Path) -> None:
    ports = ports_for("smtp")
    conf = write_config(tmp_path, ports)
    db = tmp_path / "var" / "mailstack.db"
    db.unlink()
    code, report = status_json(conf)
    assert code == 2 and report["database"]["up"] is False
    assert not db.exists()


def test_probe_speaks_tls_on_an_implicit_tls_listener(tmp_path: Path) -> None:
    """An IMAPS-like listener: the greeting is read through TLS (self-signed: not verified
    here, the certificate has its own check); plain text to it is no greeting."""
    tls = TLSConfig(cert_file=tmp_path / "cert.pem", key_file=tmp_path / "key.pem")
    net.ensure_certificate(tls, "mx.example.test")
    port = free_port()
    address = ListenAddress("tcp", "127.0.0.1", port)

    async def run() -> tuple[Any, Any]:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
            await reader.read(100)
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", port,
                                            ssl=net.server_context(tls.cert_file, tls.key_file))
        async with server:
            over_tls = await probe("imap", address, True, hostname="mx.example.test")
            plain = await probe("imap", address, False, hostname="mx.example.test", timeout=2)
        return over_tls, plain

    over_tls, plain = asyncio.run(run())
    assert over_tls.up and over_tls.detail.startswith("* OK") and over_tls.name.endswith("(TLS)")
    assert not plain.up


def test_wrong_thresholds_are_usage_errors(tmp_path: Path) -> None:
    conf = write_config(tmp_path, ports_for("smtp"))
    for args in (("--disk-warn", "150"), ("--cert-warn-days", "-1"), ("--disk-warn", "5", "--disk-crit", "10")):
        code, out, err = status(conf, *args)
        assert code == 2 and out == "" and "Traceback" not in err and err.strip(), args
