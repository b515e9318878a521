"""A real Postfix as the remote MX (on 127.0.0.23, own config dir): our mail arrives,
and its DKIM signature still verifies after Postfix stored it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
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
from tests.helpers import free_port, require_tool, require_root
from tests.outbound.conftest import REMOTE_IP, make_config

NOBODY = 65534


def _master_cf(port: int) -> str:
    services = [
        f"{REMOTE_IP}:{port} inet n - n - - smtpd",
        "pickup unix n - n 60 1 pickup", "cleanup unix n - n - 0 cleanup", "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite", "bounce unix - - n - 0 bounce", "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce", "verify unix - - n - 1 verify", "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp", "showq unix n - n - - showq", "error unix - - n - - error",
        "retry unix - - n - - error", "discard unix - - n - - discard", "virtual unix - n n - - virtual",
        "anvil unix - - n - 1 anvil", "scache unix - - n - 1 scache", "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(services) + "\n"


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    exe = require_tool("postfix")
    require_root("a private Postfix instance needs root to start")
    # Postfix checks the ownership and modes of its directories' parents: not under pytest's 0700 tmp
    root = Path(tempfile.mkdtemp(prefix="mailstack-pf-"))
    os.chmod(root, 0o755)
    conf, spool, data, mail, log = (root / n for n in ("etc", "spool", "data", "mail", "log"))
    for d in (conf, spool, data, mail, log):
        d.mkdir(parents=True)
    shutil.chown(data, "postfix", "postfix")
    os.chmod(data, 0o700)
    os.chown(mail, NOBODY, NOBODY)
    port = free_port(REMOTE_IP)
    (conf / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-mailstack-test
maillog_file = {log}/postfix.log
maillog_file_prefixes = {root}
myhostname = mx.remote.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
default_transport = discard:test
relay_transport = discard:test
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = remote.test
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{conf}/vmailbox
virtual_uid_maps = static:{NOBODY}
virtual_gid_maps = static:{NOBODY}
virtual_minimum_uid = 100
""")
    (conf / "vmailbox").write_text("x@remote.test x/\n")
    (conf / "master.cf").write_text(_master_cf(port))
    r = subprocess.run([exe, "-c", str(conf), "start"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        logged = (log / "postfix.log").read_text()[-800:] if (log / "postfix.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"postfix did not start: {r.stdout.strip()[-300:]} {r.stderr.strip()[-500:]} {logged}")
    try:
        yield port, mail
    finally:
        subprocess.run([exe, "-c", str(conf), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_delivery_to_a_real_postfix_keeps_dkim_valid(tmp_path: Path, dns: TestDNS, postfix: tuple[int, Path]) -> None:
    port, mail = postfix
    cfg: Config = make_config(tmp_path, dns, port)
    key = dkim.generate_key(cfg.queue.dkim_dir, "example.test", "pf")
    dns.add(key.record_name, "TXT", dkim.txt_record(key))
    msg = (b"From: Alice <alice@example.test>\r\nTo: x@remote.test\r\nSubject: to postfix\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <pf1@example.test>\r\n\r\n"
           b"Hello Postfix.\r\n.dot line\r\n")
    store = QueueStore(cfg.queue.dir)
    store.enqueue("alice@example.test", ["x@remote.test"], dkim.sign_for_from(msg, cfg.queue.dkim_dir))
    resolver = DNSPythonResolver([dns.address])
    runner = QueueRunner(cfg, store, resolver)
    asyncio.run(runner.run_once())
    assert store.list() == []
    new = mail / "x" / "new"
    deadline = time.monotonic() + 20
    files: list[Any] = []
    while time.monotonic() < deadline:
        files = list(new.iterdir()) if new.is_dir() else []
        if files:
            break
        time.sleep(0.1)
    (path,) = files
    stored = path.read_bytes()  # LF line ends, Postfix's Received: and Return-Path on top
    assert b".dot line" in stored and b"..dot line" not in stored
    sigs = asyncio.run(verify_dkim(stored.replace(b"\n", b"\r\n"), resolver))
    assert [s.result for s in sigs] == ["pass"]
