"""The queue runner against a loopback DNS and an aiosmtpd sink on 127.0.0.23."""

from __future__ import annotations

import asyncio
import email
import time
from pathlib import Path
from typing import Any

import pytest

from mailstack.config import Config
from mailstack.dns import DNSPythonResolver
from mailstack.mail import dkim
from mailstack.mail.authcheck import verify_dkim
from mailstack.smtp.queue_runner import QueueRunner
from mailstack.queue import QueueStore
from tests.dnsserver import TestDNS
from tests.outbound.conftest import Remote

MSG = (b"From: Alice <alice@example.test>\r\nTo: <x@remote.test>\r\nSubject: hello\r\n"
       b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m1@example.test>\r\n\r\nHi there.\r\n.leading dot\r\n")


def runner_for(cfg: Config, directory: Any = None, **kw: Any) -> QueueRunner:
    return QueueRunner(cfg, QueueStore(cfg.queue.dir), DNSPythonResolver(cfg.dns.nameservers, 3), directory=directory,
                       **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def inbox(cfg: Config, domain: str, local: str) -> list[bytes]:
    new = cfg.storage.maildir_root / domain / local / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def test_remote_delivery_one_transaction_for_several_recipients(cfg: Config, remote: Remote, directory: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    store = QueueStore(cfg.queue.dir)
    qid = store.enqueue("alice@example.test", ["x@remote.test", "y@remote.test", "z@remote.test"], MSG)
    caplog.set_level("INFO", logger="mailstack.maillog")
    run(runner_for(cfg, directory).run_once())
    assert len(remote.messages) == 1
    got = remote.messages[0]
    assert got.sender == "alice@example.test"
    assert got.recipients == ["x@remote.test", "y@remote.test", "z@remote.test"]
    assert got.data.replace(b"\r\n", b"\n") == MSG.replace(b"\r\n", b"\n")  # dot-stuffing undone, bytes intact
    assert store.list() == []
    lines = [r.getMessage() for r in caplog.records if r.name == "mailstack.maillog"]
    assert len(lines) == 1 and lines[0].startswith(f"event=delivered id={qid} service=queue")
    assert "to=<x@remote.test>,<y@remote.test>,<z@remote.test>" in lines[0]


def test_dkim_signed_mail_verifies_at_the_remote(cfg: Config, remote: Remote, dns: TestDNS) -> None:
    keys = cfg.queue.dkim_dir
    rsa = dkim.generate_key(keys, "example.test", "s2024", "rsa")
    ed = dkim.generate_key(keys, "example.test", "ed2024", "ed25519")
    assert oct((keys / "example.test" / "s2024.key").stat().st_mode & 0o777) == "0o600"
    for k in (rsa, ed):
        dns.add(k.record_name, "TXT", dkim.txt_record(k))
    signed = dkim.sign_for_from(MSG, keys)
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], signed)
    run(runner_for(cfg).run_once())
    data = remote.messages[0].data
    resolver = DNSPythonResolver([dns.address])
    # checked by the one DKIM verifier, the MX's (mail.authcheck.verify_dkim)
    sigs = run(verify_dkim(data, resolver))
    assert [(s.result, s.selector) for s in sigs] == [("pass", "ed2024"), ("pass", "s2024")]
    sig = data.split(b"\r\n\r\n")[0].decode()
    assert "c=relaxed/relaxed" in sig and "h=from : to : subject : date : message-id : from" in sig.replace("\r\n ", " ")
    # tampering breaks it
    assert [s.result for s in run(verify_dkim(data.replace(b"Hi there", b"Hi THERE"), resolver))] == ["fail", "fail"]


def test_remote_550_bounces_into_the_senders_inbox(cfg: Config, remote: Remote, directory: Any) -> None:
    remote.refuse["nobody@remote.test"] = "550 5.1.1 <nobody@remote.test>: no such user"
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["nobody@remote.test", "x@remote.test"], MSG)
    runner = runner_for(cfg, directory)
    run(runner.run_once())
    assert remote.messages[0].recipients == ["x@remote.test"]
    ids = store.list()
    assert len(ids) == 1  # the DSN, from <>, to alice
    env, _ = store.load(ids[0])
    assert env.sender == "" and env.recipients == ("alice@example.test",)
    run(runner.run_once())
    assert store.list() == []
    (bounce,) = inbox(cfg, "example.test", "alice")
    msg = email.message_from_bytes(bounce)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Return-Path"] == "<>"
    parts = [p.get_content_type() for p in msg.get_payload()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = bounce.decode()
    assert "Final-Recipient: rfc822; nobody@remote.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 <nobody@remote.test>: no such user" in status
    assert "Subject: hello" in status  # the original header came back
    assert "Hi there" not in status  # ... not the body


def test_null_mx_bounces_at_once(cfg: Config, dns: TestDNS, directory: Any) -> None:
    dns.add("nomail.test", "MX", "0 .")
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["a@nomail.test"], MSG)
    runner = runner_for(cfg, directory)
    run(runner.run_once())
    run(runner.run_once())
    (bounce,) = inbox(cfg, "example.test", "alice")
    assert b"Status: 5.1.10" in bounce and b"null MX" in bounce


def test_nxdomain_bounces_and_dns_failure_defers(cfg: Config, dns: TestDNS, directory: Any) -> None:
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["a@does-not-exist.test"], MSG)
    dns.servfail.add("broken.test")
    tmp = store.enqueue("alice@example.test", ["a@broken.test"], MSG)
    runner = runner_for(cfg, directory)
    run(runner.run_once())
    env = store.envelope(tmp)
    assert env.attempts == 1 and "4.4.3" in env.extra["last_error"]
    run(runner.run_once())
    (bounce,) = inbox(cfg, "example.test", "alice")
    assert b"Status: 5.1.2" in bounce


def test_null_sender_is_never_bounced(cfg: Config, remote: Remote, directory: Any) -> None:
    remote.refuse["nobody@remote.test"] = "550 5.1.1 no such user"
    store = QueueStore(cfg.queue.dir)
    store.enqueue("", ["nobody@remote.test"], MSG)
    run(runner_for(cfg, directory).run_once())
    assert store.list() == []  # dropped, no DSN queued


def test_remote_down_defers_with_backoff_then_delivers(cfg: Config, remote: Remote, directory: Any) -> None:
    remote.stop()
    store = QueueStore(cfg.queue.dir)
    qid = store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    runner = runner_for(cfg, directory)
    before = time.time()
    run(runner.run_once())
    env = store.envelope(qid)
    assert env.attempts == 1
    assert before + 299 <= env.next_attempt <= time.time() + 301  # retry_initial = 300
    assert "4.4.1" in env.extra["last_error"] and "connection refused" in env.extra["last_error"]
    assert runner.backoff(1) == 300 and runner.backoff(2) == 600 and runner.backoff(3) == 1200
    assert runner.backoff(20) == cfg.queue.retry_max_interval
    run(runner.run_once())  # not due: nothing happens
    assert store.envelope(qid).attempts == 1
    remote.start()
    store.save(QueueStore.updated(store.envelope(qid), next_attempt=0))
    run(runner.run_once())
    assert store.list() == [] and len(remote.messages) == 1


def test_expired_message_bounces(cfg: Config, remote: Remote, directory: Any) -> None:
    remote.stop()
    store = QueueStore(cfg.queue.dir)
    qid = store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    store.save(QueueStore.updated(store.envelope(qid), created=time.time() - 6 * 86400))
    runner = runner_for(cfg, directory)
    run(runner.run_once())
    run(runner.run_once())
    (bounce,) = inbox(cfg, "example.test", "alice")
    assert b"Action: failed" in bounce and b"gave up after 5 days" in bounce


def test_delay_warning_once(tmp_path: Path, dns: TestDNS, remote: Remote, directory: Any) -> None:
    from tests.outbound.conftest import make_config

    cfg = make_config(tmp_path, dns, remote.port, queue={"delay_warning": 1})
    remote.stop()
    store = QueueStore(cfg.queue.dir)
    qid = store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    store.save(QueueStore.updated(store.envelope(qid), created=time.time() - 10))
    runner = runner_for(cfg, directory)
    run(runner.run_once())
    run(runner.run_once())  # delivers the warning locally
    store.save(QueueStore.updated(store.envelope(qid), next_attempt=0))
    run(runner.run_once())
    (warning,) = inbox(cfg, "example.test", "alice")
    assert b"Action: delayed" in warning and b"Will-Retry-Until:" in warning
    assert store.list() == [qid]


def test_opportunistic_starttls(cfg: Config, remote: Remote, tmp_path: Path) -> None:
    from mailstack import net

    net.ensure_certificate(cfg.tls, "mx.remote.test")
    remote.stop()
    remote.start(tls_context=net.server_context(cfg.tls.cert_file, cfg.tls.key_file))
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    run(runner_for(cfg, client_tls=net.client_context()).run_once())
    assert remote.messages[0].tls is True


def test_mx_preference_and_fallback(cfg: Config, remote: Remote, dns: TestDNS) -> None:
    # the best MX is down (nothing on 127.0.0.24), the next one takes the mail
    dns.clear()
    dns.add("remote.test", "MX", "20 mx.remote.test")
    dns.add("remote.test", "MX", "10 dead.remote.test")
    dns.add("dead.remote.test", "A", "127.0.0.24")
    dns.add("mx.remote.test", "A", "127.0.0.23")
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
    run(runner_for(cfg).run_once())
    assert len(remote.messages) == 1


def test_implicit_mx_a_record(cfg: Config, remote: Remote, dns: TestDNS) -> None:
    dns.add("plain.test", "A", "127.0.0.23")
    QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["p@plain.test"], MSG)
    run(runner_for(cfg).run_once())
    assert remote.messages[0].recipients == ["p@plain.test"]


def test_temporary_rcpt_failure_keeps_only_that_recipient(cfg: Config, remote: Remote, directory: Any) -> None:
    remote.refuse["later@remote.test"] = "451 4.2.0 try later"
    store = QueueStore(cfg.queue.dir)
    qid = store.enqueue("alice@example.test", ["later@remote.test", "x@remote.test"], MSG)
    run(runner_for(cfg, directory).run_once())
    env = store.envelope(qid)
    assert env.recipients == ("later@remote.test",)
    assert env.extra["errors"] == {"later@remote.test": "451 4.2.0 try later"}
    assert env.extra["done"] == ["x@remote.test"]


def test_local_recipient_in_queue_goes_to_the_mda(cfg: Config, directory: Any) -> None:
    store = QueueStore(cfg.queue.dir)
    store.enqueue("someone@remote.test", ["sales@example.test"], MSG)
    run(runner_for(cfg, directory).run_once())
    (got,) = inbox(cfg, "example.test", "alice")
    assert got.startswith(b"Return-Path: <someone@remote.test>")
    assert store.list() == []


def test_service_runner_wakes_on_notify(cfg: Config, remote: Remote, directory: Any) -> None:
    from mailstack.queue import wake

    async def main() -> None:
        runner = runner_for(cfg, directory)
        runner.start_background()
        try:
            await asyncio.sleep(0.3)
            QueueStore(cfg.queue.dir).enqueue("alice@example.test", ["x@remote.test"], MSG)
            wake.notify(cfg.queue.dir)
            for _ in range(100):
                if remote.messages:
                    break
                await asyncio.sleep(0.05)
        finally:
            await runner.stop(2)

    run(main())
    assert len(remote.messages) == 1
