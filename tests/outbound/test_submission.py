"""Submission on 587 (STARTTLS) and 465 (implicit TLS) with smtplib, end to end to the sink."""

from __future__ import annotations

import smtplib
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from mailstack.dns import DNSPythonResolver
from mailstack.mail import dkim
from tests.dnsserver import TestDNS
from tests.outbound.conftest import Remote, Stack, submission_config

ALICE = ("alice@example.test", "correct horse battery staple")
MSG = "From: Alice <alice@example.test>\r\nTo: x@remote.test\r\nSubject: via submission\r\n\r\nHello.\r\n"


def tls_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def port(stack: Stack, tls: bool = False) -> int:
    return (stack.cfg.submission.tls_listen if tls else stack.cfg.submission.listen)[0].port


def client(stack: Stack, *, starttls: bool = True, implicit: bool = False) -> smtplib.SMTP:
    if implicit:
        c: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port(stack, True), context=tls_ctx(), timeout=10)
    else:
        c = smtplib.SMTP("127.0.0.1", port(stack), timeout=10)
        if starttls:
            c.starttls(context=tls_ctx())
    c.ehlo("client.test")
    return c


def wait_for(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_mail_before_auth_is_530(stack: Stack) -> None:
    with client(stack) as c:
        code, text = c.mail("alice@example.test")
        assert (code, text[:5]) == (530, b"5.7.0")


def test_587_starttls_auth_and_remote_delivery_signed(stack: Stack, remote: Remote, dns: TestDNS) -> None:
    key = dkim.generate_key(stack.cfg.queue.dkim_dir, "example.test", "mail")
    dns.add(key.record_name, "TXT", dkim.txt_record(key))
    with client(stack) as c:
        assert "PLAIN" in c.esmtp_features.get("auth", "").upper()
        c.login(*ALICE)
        refused = c.sendmail("alice@example.test", ["x@remote.test", "y@remote.test"], MSG)
        assert refused == {}
    assert wait_for(lambda: remote.messages)
    got = remote.messages[0]
    assert got.recipients == ["x@remote.test", "y@remote.test"]  # one transaction
    head = got.data.split(b"\r\n\r\n")[0]
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head
    assert b"with ESMTPSA" in head
    import asyncio

    assert asyncio.run(dkim.verify(got.data, DNSPythonResolver([dns.address])))


def test_465_implicit_tls(stack: Stack, remote: Remote) -> None:
    with client(stack, implicit=True) as c:
        c.login(*ALICE)
        c.sendmail("alice@example.test", ["x@remote.test"], MSG)
    assert wait_for(lambda: remote.messages)


def test_login_mechanism_and_local_recipient(stack: Stack) -> None:
    with client(stack) as c:
        c.user, c.password = ALICE
        code, _ = c.auth("LOGIN", c.auth_login, initial_response_ok=False)
        assert code == 235
        c.sendmail("alice@example.test", ["bob@example.test"], MSG)
    new = stack.cfg.storage.maildir_root / "example.test" / "bob" / "new"
    (path,) = list(new.iterdir())
    assert path.read_bytes().startswith(b"Return-Path: <alice@example.test>")


def test_sending_as_someone_else_is_553(stack: Stack) -> None:
    with client(stack) as c:
        c.login(*ALICE)
        code, text = c.mail("bob@example.test")
        assert (code, text[:5]) == (553, b"5.7.1")
        code, _ = c.mail("alice+news@example.test")  # +tag of her own
        assert code == 250
        c.rset()
        code, _ = c.mail("sales@example.test")  # an alias that points to her
        assert code == 250
        c.rcpt("x@remote.test")
        code, text = c.data("From: Bob <bob@example.test>\r\nSubject: spoof\r\n\r\nx\r\n")
        assert (code, text[:5]) == (553, b"5.7.1")


def plain(c: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    c.user, c.password = user, password
    try:
        return c.auth("PLAIN", c.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        return e.smtp_code, e.smtp_error


def test_wrong_password_then_blocked(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    with client(stack) as c:
        code, text = plain(c, "alice@example.test", "wrong")
        assert (code, text[:5]) == (535, b"5.7.8")
        # after max_failures (5) failures of this network or account, even the right password is refused
        for _ in range(4):
            assert plain(c, "alice@example.test", "wrong")[0] == 535
        assert plain(c, *ALICE)[0] == 535
    lines = [r.getMessage() for r in caplog.records if "auth_failed" in r.getMessage()]
    assert len(lines) == 6 and " client=127.0.0.1 " in lines[0] and "wrong" not in " ".join(lines)
    assert "reason=blocked" in lines[-1] and "reason=password" in lines[0]


def test_no_auth_before_tls_when_plaintext_not_allowed(tmp_path: Path, dns: TestDNS, remote: Remote,
                                                       directory: Any) -> None:
    cfg = submission_config(tmp_path, dns, remote.port, auth={"allow_plaintext_on_loopback": False})
    s = Stack(cfg, directory, ("submission",))
    try:
        with client(s, starttls=False) as c:
            assert "auth" not in c.esmtp_features
            code, text = c.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0")
            assert (code, text[:6]) == (538, b"5.7.11")
            c.starttls(context=tls_ctx())
            c.ehlo("client.test")
            assert "PLAIN" in c.esmtp_features["auth"]
            c.login(*ALICE)
    finally:
        s.stop()
