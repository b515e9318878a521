"""End to end through submission: a user sends over the submission port (STARTTLS, AUTH) to a
local user whose active Sieve script files the message into a folder and flags it; the
recipient finds it there, flagged, over IMAP. Local submission delivery runs Sieve like the MX
and LMTP do (one ``LocalDelivery``)."""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.sieve.store import ScriptStore
from mailstack.storage import Maildir
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import Remote, Stack, submission_config

SCRIPT = b"""require ["fileinto", "mailbox", "imap4flags"];
if header :contains "subject" "quarterly" {
  addflag ["\\\\Flagged", "$Finance"];
  fileinto :create "Reports";
}
"""
MSG = ("From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\n"
       "Subject: The quarterly numbers\r\nMessage-ID: <q1@example.test>\r\n\r\nSee attached.\r\n")


@pytest.fixture
def site(tmp_path: Path, dns: TestDNS, remote: Remote, directory: Any) -> Iterator[Stack]:
    cfg = submission_config(tmp_path, dns, remote.port,
                            imap={"listen": [f"127.0.0.1:{free_port()}"], "tls_listen": []})
    s = Stack(cfg, directory, ("submission", "imap"))
    yield s
    s.stop()


def test_submission_to_a_local_user_runs_their_sieve_script(site: Stack) -> None:
    store = ScriptStore(Maildir.for_user(site.cfg.storage.maildir_root, "example.test", "bob").root)
    store.put("main", SCRIPT)
    store.activate("main")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", site.cfg.submission.listen[0].port, timeout=30) as c:
        c.starttls(context=ctx)
        c.login("alice@example.test", "correct horse battery staple")
        assert c.sendmail("alice@example.test", ["bob@example.test"], MSG) == {}

    imap = imaplib.IMAP4("127.0.0.1", site.cfg.imap.listen[0].port, timeout=30)
    try:
        imap.login("bob@example.test", "bob password 123")
        assert imap.select("INBOX")[1] == [b"0"]  # not kept in INBOX as well
        typ, data = imap.select("Reports")
        assert typ == "OK" and data == [b"1"]
        typ, fetched = imap.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        meta = fetched[0][0] if isinstance(fetched[0], tuple) else fetched[0]
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).split())  # type: ignore[union-attr]
        assert {b"\\Flagged", b"$Finance"} <= flags and b"\\Seen" not in flags
        assert b"The quarterly numbers" in fetched[0][1]  # type: ignore[index]
    finally:
        imap.logout()
