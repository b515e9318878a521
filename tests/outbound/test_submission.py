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
from mailstack.mail.authcheck import verify_dkim
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

    sigs = asyncio.run(verify_dkim(got.data, DNSPythonResolver([dns.address])))
    assert [(s.result, s.domain) for s in sigs] == [("pass", "example.test")]


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


# ---------------------------------------------------------------------------
# From: spoofing (issue 10 #3): each header section below is sent by alice (AUTH, STARTTLS)
# with MAIL FROM:<alice@example.test>; every spoof must be refused and nothing stored or
# queued; every legitimate way of writing one of her own addresses must be accepted.

SPOOFS = [
    # obsolete syntax (RFC 5322 §4.5.3): white space before the colon is still From:
    "From: Alice <alice@example.test>\r\nFrom : CEO <bob@example.test>",
    "From : CEO <bob@example.test>\r\nFrom: alice@example.test",
    "FROM\t: bob@example.test\r\nFrom: alice@example.test",
    "fRoM   :bob@example.test\r\nFrom: alice@example.test",
    "From : CEO <bob@example.test>",
    # several From: fields (RFC 5322 §3.6: exactly one), even when all are hers
    "From: alice@example.test\r\nFrom: bob@example.test",
    "From: alice@example.test\r\nFrom: alice@example.test",
    # several mailboxes: every one must be hers
    "From: alice@example.test, bob@example.test",
    "From: bob@example.test, Alice <alice@example.test>",
    # display-name / encoded-word / comment tricks: the address is what counts
    "From: =?utf-8?q?alice@example.test?= <bob@example.test>",
    "From: \"alice@example.test\" <bob@example.test>",
    "From: bob@example.test (alice@example.test)",
    "From: (alice@example.test) bob@example.test",
    "From: =?utf-8?q?=3Calice@example.test=3E?=",
    "From: =?utf-8?q?alice?=@example.test",
    # malformed values a reader might take either way
    "From: alice@example.test <bob@example.test>",
    "From: <alice@example.test> bob@example.test",
    "From: alice@example.test)<bob@example.test>",
    "From: Alice <alice@example.test",
    "From: alice@example.test\r\n bob@example.test",
    "From: <>",
    "From:",
    "From: alice@[127.0.0.1]",
    # folding hides nothing
    "From: CEO\r\n <bob@example.test>",
    "From: CEO\r\n\t<bob@example.test>",
    # group syntax (From: is a mailbox-list)
    "From: team: alice@example.test;",
    "From: team: bob@example.test;",
    "From: undisclosed-recipients:;",
    # quoted local parts, case, IDNA: the same mailbox as bob's
    "From: \"bob\"@example.test",
    "From: BOB@EXAMPLE.TEST",
    "From: Bob <bob@Example.Test>",
    "From: bob@example.test.",
    # Sender: (RFC 5322 §3.6.2) must be hers too, and there is at most one
    "From: alice@example.test\r\nSender: bob@example.test",
    "From: alice@example.test\r\nSender: alice@example.test\r\nSender: alice@example.test",
    # a line that is no header field: refused rather than guessed at
    "X-Junk no colon here\r\nFrom: alice@example.test",
    "From\x00: bob@example.test\r\nFrom: alice@example.test",
    # no From: at all
    "Subject: anonymous",
]

LEGIT = [
    "From: Alice <alice@example.test>",
    "From: alice@example.test",
    "From:alice@example.test",
    "From: ALICE@Example.TEST",
    "From: \"alice\"@example.test",
    "From: \"Smith, Alice\" <alice@example.test>",
    "From: =?utf-8?q?Al=C3=AFce?= <alice@example.test>",
    "From: alice@example.test (Alice at work)",
    "From: Alice\r\n <alice@example.test>",
    "From: <alice+news@example.test>",
    "From: sales@example.test",  # an alias that points to her
    "From: alice@example.test, Sales <sales@example.test>",
    "From : alice@example.test",  # obsolete syntax, her own address
    "From: Sales <sales@example.test>\r\nSender: Alice <alice@example.test>",
    "From: carl@xn--bcher-kva.test",  # IDNA: A-label ...
    "From: carl@bücher.test",  # ... and U-label of the same domain (RFC 6532)
]


def _send_as(stack: Stack, headers: str) -> tuple[int, bytes]:
    with client(stack) as c:
        c.login(*ALICE)
        assert c.mail("alice@example.test")[0] == 250
        assert c.rcpt("bob@example.test")[0] == 250
        assert c.rcpt("x@remote.test")[0] == 250
        code, text = c.docmd("DATA")
        assert code == 354
        c.send(headers.encode("utf-8") + b"\r\nSubject: test\r\n\r\nbody\r\n.\r\n")
        return c.getreply()


def test_from_spoof_variants_are_refused(stack: Stack, remote: Remote, directory: Any) -> None:
    bob_new = stack.cfg.storage.maildir_root / "example.test" / "bob" / "new"
    for headers in SPOOFS:
        code, text = _send_as(stack, headers)
        assert code in (550, 553, 554) and text[:5] in (b"5.6.0", b"5.7.1"), (headers, code, text)
        assert not (bob_new.is_dir() and list(bob_new.iterdir())), headers
        assert stack_queue(stack) == [], headers
    time.sleep(0.5)
    assert remote.messages == []


def test_from_legit_variants_are_accepted(stack: Stack, remote: Remote, directory: Any) -> None:
    directory.add_domain("bücher.test")
    directory.add_user("carl@bücher.test", "carl password 123")
    directory.add_alias("carl@bücher.test", ["alice@example.test"])  # she may write as carl
    bob_new = stack.cfg.storage.maildir_root / "example.test" / "bob" / "new"
    for n, headers in enumerate(LEGIT, 1):
        code, text = _send_as(stack, headers)
        assert code == 250, (headers, code, text)
        assert len(list(bob_new.iterdir())) == n, headers
    assert wait_for(lambda: len(remote.messages) == len(LEGIT))


def stack_queue(stack: Stack) -> list[str]:
    from mailstack.queue import QueueStore

    return QueueStore(stack.cfg.queue.dir).list()


def test_nul_in_a_submitted_message_is_refused(stack: Stack, remote: Remote) -> None:
    """One NUL rule everywhere (MX, LMTP, submission, IMAP APPEND): refused, nothing queued."""
    code, text = _send_as(stack, "From: alice@example.test\r\nX-Bin: a\x00b")
    assert (code, text[:5]) == (554, b"5.6.0")
    bob_new = stack.cfg.storage.maildir_root / "example.test" / "bob" / "new"
    assert not (bob_new.is_dir() and list(bob_new.iterdir()))
    assert stack_queue(stack) == []


def test_submission_has_its_own_connection_caps(tmp_path: Path, dns: TestDNS, remote: Remote,
                                                directory: Any) -> None:
    import socket

    cfg = submission_config(tmp_path, dns, remote.port, submission={"max_connections_per_ip": 2})
    s = Stack(cfg, directory, ("submission",))
    socks = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port(s)), timeout=10)
            socks.append(sock)
        replies = [sock.recv(1024) for sock in socks]
        assert [r[:3] for r in replies] == [b"220", b"220", b"421"]
        assert replies[2].startswith(b"421 4.7.0")
    finally:
        for sock in socks:
            sock.close()
        s.stop()
