"""The one bounce path (``mailstack.queue.bounce``), from each of its three callers.

The MX (a recipient failing after the transaction was accepted), the queue runner (a
permanent failure, and ``[queue] max_age`` reached) and ``mailstack queue delete
--bounce`` each must give the same thing: an RFC 3464 DSN from ``<>`` to the sender,
DKIM-signed by the hostname's key (verified against a loopback DNS), and one
``event=bounced`` mail-log line that names the DSN's queue id (``dsn=<id>``).
"""

from __future__ import annotations

import asyncio
import email
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.dns import DNSPythonResolver
from mailstack.mail import dkim
from mailstack.mail.authcheck import verify_dkim
from mailstack.queue import QueueStore
from mailstack.smtp.queue_runner import QueueRunner
from tests.dnsserver import TestDNS
from tests.smtp.conftest import MXServer, make_server

HOST = "mx.example.test"  # the hostname: From: MAILER-DAEMON@mx.example.test
SENDER = "someone@remote.example"
MSG = (f"From: <{SENDER}>\r\nTo: <alice@example.test>\r\nSubject: hello\r\n"
       "Message-ID: <m1@remote.example>\r\n\r\nThe body stays home.\r\n").encode()


@pytest.fixture
def dns() -> Iterator[TestDNS]:
    with TestDNS() as d:
        yield d


@pytest.fixture
def mx(tmp_path: Path, dns: TestDNS) -> Iterator[MXServer]:
    server = make_server(tmp_path, queue={"dkim_dir": str(tmp_path / "dkim")},
                         dns={"nameservers": [dns.address]}, checks={"enabled": False})
    key = dkim.generate_key(server.config.queue.dkim_dir, HOST, "s1", "rsa")
    dns.add(key.record_name, "TXT", dkim.txt_record(key))
    try:
        yield server
    finally:
        server.close()


def bounced_lines(text: str) -> list[str]:
    return [ln[ln.index("event=bounced"):] for ln in text.splitlines() if "event=bounced" in ln]


def the_dsn(mx: MXServer, dns: TestDNS, about: str) -> tuple[str, bytes]:
    """The one DSN in the queue about message ``about``: checked and DKIM-verified."""
    store = mx.queue
    found = []
    for qid in store.list():
        env, data = store.load(qid)
        if env.reason == "dsn" and env.extra.get("dsn_for") == about:
            found.append((qid, env, data))
    assert len(found) == 1, found
    qid, env, data = found[0]
    assert env.sender == "" and env.recipients == (SENDER,)
    msg = email.message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert f"d={HOST}" in re.sub(r"\s+", "", msg["DKIM-Signature"] or "")
    sigs = asyncio.run(verify_dkim(data, DNSPythonResolver([dns.address])))
    assert [(s.result, s.domain) for s in sigs] == [("pass", HOST)]
    assert b"Subject: hello" in data and b"The body stays home" not in data
    return qid, data


def test_mx_late_failure_bounces_signed_and_logged(mx: MXServer, dns: TestDNS,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """bob's copy loops (his Delivered-To: is in the message, RFC 5321 §6.3: 554 5.4.6)
    after RCPT said yes; alice gets hers, the client gets 250, the sender a DSN."""
    caplog.set_level("INFO", logger="mailstack.maillog")
    data = MSG.replace(b"Subject:", b"Delivered-To: bob@example.test\r\nSubject:")
    with mx.client() as c:
        c.sendmail(SENDER, ["alice@example.test", "bob@example.test"], data)
    assert len(mx.messages("alice")) == 1 and mx.messages("bob") == []
    accepted = [r.getMessage() for r in caplog.records if "event=accepted" in r.getMessage()]
    orig = re.search(r"\bid=(\S+)", accepted[0]).group(1)  # type: ignore[union-attr]
    dsn_id, dsn = the_dsn(mx, dns, orig)
    assert b"Final-Recipient: rfc822; bob@example.test" in dsn and b"Status: 5.4.6" in dsn
    (line,) = bounced_lines("\n".join(r.getMessage() for r in caplog.records))
    assert line.startswith(f"event=bounced id={orig} service=smtp client=127.0.0.1 from=<{SENDER}> "
                           "to=<bob@example.test> ")
    assert "status=bounced" in line and "5.4.6" in line and line.endswith(f"dsn={dsn_id}")


def test_queue_runner_bounces_signed_and_logged(mx: MXServer, dns: TestDNS,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A permanent failure (a local recipient that does not exist) and an expiry
    (``max_age`` over while the domain's DNS fails) each bounce through the same path."""
    caplog.set_level("INFO", logger="mailstack.maillog")
    store = mx.queue
    unknown = store.enqueue(SENDER, ["nobody@example.test"], MSG)
    dns.servfail.add("broken.test")
    old = store.enqueue(SENDER, ["x@broken.test"], MSG)
    store.save(QueueStore.updated(store.envelope(old), created=time.time() - mx.config.queue.max_age - 60))
    runner = QueueRunner(mx.config, store, DNSPythonResolver([dns.address], 3), directory=mx.directory)
    asyncio.run(runner.run_once())

    dsn_id, dsn = the_dsn(mx, dns, unknown)
    assert b"Final-Recipient: rfc822; nobody@example.test" in dsn and b"Status: 5.1.1" in dsn
    expired_id, expired = the_dsn(mx, dns, old)
    assert b"Final-Recipient: rfc822; x@broken.test" in expired and b"gave up after" in expired
    lines = bounced_lines("\n".join(r.getMessage() for r in caplog.records))
    assert len(lines) == 2
    by_id = {re.search(r"\bid=(\S+)", ln).group(1): ln for ln in lines}  # type: ignore[union-attr]
    assert by_id[unknown].startswith(f"event=bounced id={unknown} service=queue client=- from=<{SENDER}> "
                                     "to=<nobody@example.test> ")
    assert by_id[unknown].endswith(f"dsn={dsn_id}") and "5.1.1" in by_id[unknown]
    assert "to=<x@broken.test>" in by_id[old] and by_id[old].endswith(f"dsn={expired_id}")
    assert unknown not in store.list() and old not in store.list()


def test_cli_queue_delete_bounce_is_signed_and_logged(mx: MXServer, dns: TestDNS, tmp_path: Path) -> None:
    cfg = mx.config
    config = tmp_path / "cli.toml"
    config.write_text(
        f'hostname = "{HOST}"\n'
        f'[database]\nurl = "{cfg.database.url}"\n'
        f'[storage]\nmaildir_root = "{cfg.storage.maildir_root}"\n'
        f'[queue]\ndir = "{cfg.queue.dir}"\ndkim_dir = "{cfg.queue.dkim_dir}"\n'
        f'[tls]\ncert_file = "{cfg.tls.cert_file}"\nkey_file = "{cfg.tls.key_file}"\n', encoding="utf-8")
    store = mx.queue
    qid = store.enqueue(SENDER, ["x@remote.example", "y@remote.example"], MSG)
    r = subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config), "queue", "delete", qid, "--bounce"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    dsn_id, dsn = the_dsn(mx, dns, qid)
    assert r.stdout.strip() == f"message {qid} deleted (bounced to the sender as {dsn_id})"
    assert b"Final-Recipient: rfc822; x@remote.example" in dsn and b"Final-Recipient: rfc822; y@remote.example" in dsn
    (line,) = bounced_lines(r.stderr)
    assert line.startswith(f"event=bounced id={qid} service=cli client=- from=<{SENDER}> "
                           "to=<x@remote.example>,<y@remote.example> ")
    assert "deleted from the queue by the administrator" in line and line.endswith(f"dsn={dsn_id}")
    assert store.list() == [dsn_id]


# ---------------------------------------------------------------------------- RFC 3461 requests


def test_notify_never_suppresses_the_dsn_but_not_the_log_line(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from mailstack.mail.dsnrequest import DSNRequest, RecipientRequest
    from mailstack.queue.bounce import DSNRecipient, bounce, warn_delayed

    store = QueueStore(tmp_path / "queue")
    store.ensure()
    caplog.set_level("INFO", logger="mailstack.maillog")
    never = DSNRequest(recipients={"a@x.test": RecipientRequest(frozenset(), None)})
    dsn_id = bounce(store, hostname=HOST, keys_dir=tmp_path / "none", queue_id="Q1", sender=SENDER, original=MSG,
                    recipients=[DSNRecipient("a@x.test", "5.1.1", "failed", "550 5.1.1 no")], service="queue",
                    request=never)
    assert dsn_id is None and store.list() == []
    assert bounced_lines(caplog.text) and "dsn=-" in bounced_lines(caplog.text)[0]
    # NOTIFY=FAILURE: no delay warning; without NOTIFY: one (RFC 3461 §4.1)
    failure_only = DSNRequest(recipients={"a@x.test": RecipientRequest(frozenset({"FAILURE"}), None)})
    delayed = [DSNRecipient("a@x.test", "4.4.1", "delayed", "451 4.4.1 later")]
    assert warn_delayed(store, hostname=HOST, keys_dir=tmp_path / "none", queue_id="Q1", sender=SENDER,
                        original=MSG, recipients=delayed, request=failure_only) is None
    assert warn_delayed(store, hostname=HOST, keys_dir=tmp_path / "none", queue_id="Q1", sender=SENDER,
                        original=MSG, recipients=delayed, request=DSNRequest()) is not None
