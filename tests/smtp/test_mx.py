"""The MX against a real server on loopback: smtplib and raw-socket transcripts."""

from __future__ import annotations

import logging
import re
import select
import smtplib
import socket
import time

import pytest

from tests.smtp.conftest import MXServer

MSG = b"From: a@example.org\r\nSubject: test\r\n\r\nhello\r\n"


class Raw:
    """A byte-level SMTP client: send exactly what a test says, read reply lines."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            ln = self.line()
            lines.append(ln)
            if ln[3:4] != b"-":
                return int(ln[:3]), lines

    def cmd(self, data: bytes) -> tuple[int, list[bytes]]:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()

    def __del__(self) -> None:  # tests that stop early must not leak the socket
        self.sock.close()


def session(port: int) -> Raw:
    r = Raw(port)
    code, _ = r.reply()
    assert code == 220
    assert r.cmd(b"EHLO client.example.org\r\n")[0] == 250
    return r


# ---------------------------------------------------------------------------- 1. service


def test_banner_and_ehlo_keywords(mx_server: MXServer) -> None:
    r = Raw(mx_server.port)
    code, lines = r.reply()
    assert code == 220 and lines[0].startswith(b"220 mx.example.test ESMTP")
    code, lines = r.cmd(b"EHLO client.example.org\r\n")
    assert code == 250 and lines[0] == b"250-mx.example.test"
    kws = {ln[4:].split(b" ")[0] for ln in lines[1:]}
    assert {b"SIZE", b"8BITMIME", b"SMTPUTF8", b"PIPELINING", b"ENHANCEDSTATUSCODES", b"STARTTLS"} <= kws
    assert b"250-SIZE 100000" in lines
    assert b"AUTH" not in kws
    # not offered, not taken (aiosmtpd's own AUTH said 538 "encryption required")
    assert r.cmd(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")[1] == [b"503 5.5.1 Authentication not enabled"]
    assert r.cmd(b"NOOP\r\n")[1] == [b"250 2.0.0 OK"]
    code, lines = r.cmd(b"QUIT\r\n")
    assert code == 221 and lines[0].startswith(b"221 2.0.0")
    r.close()


def test_deliver_with_received_return_path_delivered_to(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.ehlo()
        c.sendmail("sender@example.org", ["alice@example.test"], MSG)
    [m] = mx_server.messages("alice")
    assert b"\r\n" not in m  # LF on disk
    head = m.split(b"\n\n", 1)[0].decode()
    lines = head.split("\n")
    assert lines[0] == "Return-Path: <sender@example.org>"
    assert lines[1] == "Delivered-To: alice@example.test"
    assert lines[2].startswith("Received: from client.example.org ([127.0.0.1])")
    assert "by mx.example.test (mailstack) with ESMTP id " in head
    assert m.endswith(b"\n\nhello\n")
    name = next((mx_server.maildir("alice").root / "new").iterdir()).name
    assert f",S={len(m)}," in name


def test_starttls(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.ehlo()
        c.starttls(context=mx_server.client_context())
        code, msg = c.ehlo()
        assert code == 250 and b"STARTTLS" not in msg
        c.sendmail("sender@example.org", ["bob@example.test"], MSG)
    [m] = mx_server.messages("bob")
    assert b"with ESMTPS id" in m
    assert b"version=TLSv1.3" in m or b"version=TLSv1.2" in m


def test_starttls_discards_pipelined_plaintext(mx_server: MXServer) -> None:
    import ssl

    r = session(mx_server.port)
    r.sock.sendall(b"STARTTLS\r\nRSET\r\n")  # RSET injected before the handshake
    assert r.reply()[0] == 220
    tls = mx_server.client_context().wrap_socket(r.sock, server_hostname="mx.example.test")
    tls.sendall(b"NOOP\r\n")
    data = tls.recv(1000)
    assert data.startswith(b"250 2.0.0"), data  # the reply to NOOP, not to the injected RSET
    tls.sendall(b"MAIL FROM:<a@example.org>\r\n")
    assert tls.recv(1000).startswith(b"503")  # RFC 3207 §4.2: EHLO again first
    tls.close()
    del ssl


def test_smtputf8_and_8bitmime(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    assert r.cmd("MAIL FROM:<jörg@exämple.org> SMTPUTF8 BODY=8BITMIME\r\n".encode())[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    assert r.cmd(b"DATA\r\n")[0] == 354
    code, lines = r.cmd("Subject: grüße\r\n\r\nÄ\r\n.\r\n".encode())
    assert code == 250, lines
    [m] = mx_server.messages("alice")
    assert "Return-Path: <jörg@exämple.org>".encode() in m
    assert b"with UTF8SMTP id" in m
    # without SMTPUTF8 a non-ASCII address is refused
    code, lines = r.cmd("MAIL FROM:<jörg@example.org>\r\n".encode())
    assert code == 553 and b"5.6.7" in lines[0]


# ---------------------------------------------------------------------------- 2. recipients


def rcpt(mx: MXServer, address: str, sender: str = "s@example.org") -> tuple[int, bytes]:
    with mx.client() as c:
        c.ehlo()
        c.mail(sender)
        return c.rcpt(address)


def test_unknown_user(mx_server: MXServer) -> None:
    code, msg = rcpt(mx_server, "nobody@example.test")
    assert code == 550 and msg.startswith(b"5.1.1")


def test_not_our_domain_is_not_relayed(mx_server: MXServer) -> None:
    code, msg = rcpt(mx_server, "victim@elsewhere.example")
    assert code == 554 and msg.startswith(b"5.7.1")
    # not even from loopback, not with a local sender
    code, msg = rcpt(mx_server, "victim@elsewhere.example", sender="alice@example.test")
    assert code == 554
    # source routes and %-hacks do not open a relay either
    assert rcpt(mx_server, "<@example.test:victim@elsewhere.example>")[0] in (501, 554)
    assert rcpt(mx_server, "victim%elsewhere.example@example.test")[0] == 550


def test_disabled_user(mx_server: MXServer) -> None:
    code, msg = rcpt(mx_server, "carol@example.test")
    assert code == 550 and msg.startswith(b"5.2.1")


def test_case_insensitive_local_part(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["ALICE@Example.TEST"], MSG)
    assert len(mx_server.messages("alice")) == 1


def test_alias_with_several_targets(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["team@example.test"], MSG)
    assert len(mx_server.messages("alice")) == 1
    assert len(mx_server.messages("bob")) == 1
    assert b"Delivered-To: bob@example.test\n" in mx_server.messages("bob")[0]


def test_alias_and_direct_recipient_get_one_copy(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["team@example.test", "alice@example.test"], MSG)
    assert len(mx_server.messages("alice")) == 1


def test_catch_all(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["anything@catchall.test"], MSG)
    assert len(mx_server.messages("bob", domain="catchall.test")) == 1


def test_alias_loop_is_refused(mx_server: MXServer) -> None:
    # loop1 -> loop2 -> loop1: no user at the end; never an endless expansion
    code, _ = rcpt(mx_server, "loop1@example.test")
    assert code == 550


def test_plus_tag_into_existing_folder(mx_server: MXServer) -> None:
    md = mx_server.maildir("alice")
    md.ensure()
    md.create_folder("lists")
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["alice+lists@example.test"], MSG)
        c.sendmail("s@example.org", ["alice+nosuchfolder@example.test"], MSG)
    assert len(mx_server.messages("alice", folder="lists")) == 1
    inbox = mx_server.messages("alice")
    assert len(inbox) == 1  # no folder "nosuchfolder": INBOX
    assert b"Delivered-To: alice@example.test" in inbox[0]


def test_forward_to_remote_target_is_queued(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["fwd@example.test"], MSG)
    assert len(mx_server.messages("alice")) == 1
    [qid] = mx_server.queue.list()
    env, data = mx_server.queue.load(qid)
    assert env.recipients == ("someone@remote.example",)
    # SRS (mail.forward): the sender rewritten into the alias's domain, the original kept aside
    assert env.sender.startswith("SRS0=") and env.sender.endswith("=example.org=s@example.test")
    assert env.extra["orig_sender"] == "s@example.org"
    assert data.startswith(b"Delivered-To: fwd@example.test\r\n")


def test_over_quota(mx_server: MXServer) -> None:
    # SIZE= already over: refused at RCPT
    with mx_server.client() as c:
        c.ehlo()
        c.mail("s@example.org", ["SIZE=5000"])
        code, msg = c.rcpt("tiny@example.test")
        assert code == 452 and msg.startswith(b"4.2.2")
    # no SIZE=: refused after DATA, temporarily
    r = session(mx_server.port)
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<tiny@example.test>\r\n")[0] == 250
    assert r.cmd(b"DATA\r\n")[0] == 354
    code, lines = r.cmd(MSG + b"x" * 3000 + b"\r\n.\r\n")
    assert code == 452 and b"4.2.2" in lines[0]
    r.close()
    assert mx_server.messages("tiny") == []
    # small enough: fine
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["tiny@example.test"], MSG)
    assert len(mx_server.messages("tiny")) == 1
    assert (mx_server.maildir("tiny").root / "maildirsize").exists()


def test_too_many_recipients(mx_factory: object) -> None:
    mx = mx_factory(smtp={"max_recipients": 5})  # type: ignore[operator]
    r = session(mx.port)
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    for _ in range(5):
        assert r.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    code, lines = r.cmd(b"RCPT TO:<bob@example.test>\r\n")
    assert code == 452 and b"4.5.3" in lines[0]
    assert r.cmd(b"DATA\r\n")[0] == 354
    assert r.cmd(b"x\r\n.\r\n")[0] == 250
    assert len(mx.messages("alice")) == 1
    r.close()


def test_default_limit_is_100_recipients(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    r.sock.sendall(b"MAIL FROM:<s@example.org>\r\n" + b"RCPT TO:<alice@example.test>\r\n" * 101)
    assert r.reply()[0] == 250
    codes = [r.reply()[0] for _ in range(101)]
    assert codes[:100] == [250] * 100 and codes[100] == 452
    r.close()


def test_partial_recipients_mixed(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        refused = c.sendmail("s@example.org", ["alice@example.test", "nobody@example.test"], MSG)
    assert list(refused) == ["nobody@example.test"]
    assert len(mx_server.messages("alice")) == 1


# ---------------------------------------------------------------------------- 3/4. never 250 unless on disk


def test_mda_failure_is_temporary_never_250(mx_server: MXServer) -> None:
    md = mx_server.maildir("bob")
    md.ensure()
    # new/ is not a directory any more: the real delivery code fails on the real file
    # system (a chmod would not stop root, which CI runs as).
    (md.root / "new").rmdir()
    (md.root / "new").write_bytes(b"")
    try:
        with mx_server.client() as c:
            with pytest.raises(smtplib.SMTPDataError) as e:
                c.sendmail("s@example.org", ["bob@example.test"], MSG)
            assert 400 <= e.value.smtp_code < 500
        assert list((md.root / "cur").iterdir()) == []
    finally:
        (md.root / "new").unlink()
        (md.root / "new").mkdir()


def test_mda_failure_breaks_storage(mx_server: MXServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailstack.storage import Maildir

    def broken(self: Maildir, data: bytes, folder: str | None = None) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Maildir, "deliver", broken)
    with mx_server.client() as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("s@example.org", ["bob@example.test"], MSG)
        assert e.value.smtp_code == 451
    # one of two recipients failing: the other is delivered, the failed one queued, 250
    calls = []

    def half(self: Maildir, data: bytes, folder: str | None = None) -> str:
        calls.append(self.root.name)
        if self.root.name == "bob":
            raise OSError(28, "No space left on device")
        return real(self, data, folder)

    monkeypatch.undo()
    real = Maildir.deliver
    monkeypatch.setattr(Maildir, "deliver", half)
    with mx_server.client() as c:
        assert c.sendmail("s@example.org", ["alice@example.test", "bob@example.test"], MSG) == {}
    assert len(mx_server.messages("alice")) == 1
    [qid] = mx_server.queue.list()
    env, _ = mx_server.queue.load(qid)
    assert env.recipients == ("bob@example.test",) and env.reason == "deferred"


# ---------------------------------------------------------------------------- 5. protection


def test_size_limit_from_size_param(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    code, lines = r.cmd(b"MAIL FROM:<s@example.org> SIZE=100001\r\n")
    assert code == 552 and b"5.3.4" in lines[0]
    r.close()


def test_size_limit_while_reading(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    assert r.cmd(b"DATA\r\n")[0] == 354
    line = b"x" * 998 + b"\r\n"
    r.sock.sendall(line * 150)  # 150 KB > 100 KB
    code, lines = r.cmd(b".\r\n")
    assert code == 552 and b"5.3.4" in lines[0]
    # the session goes on
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    r.close()
    assert mx_server.messages("alice") == []


@pytest.mark.parametrize(
    "payload",
    [
        b"Subject: a\r\n\r\nbody\n.\nMAIL FROM:<evil@example.org>\nRCPT TO:<bob@example.test>\nDATA\nSmuggled\n.\n",
        b"Subject: a\r\n\r\nbody\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSmuggled\r\n.\r\n",
        b"Subject: a\r\n\r\nbody\r\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSmuggled\r\n.\r\n",
    ],
    ids=["lf-dot-lf", "lf-dot-crlf", "crlf-dot-lf"],
)
def test_smtp_smuggling_never_starts_a_transaction(mx_server: MXServer, payload: bytes) -> None:
    r = session(mx_server.port)
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    assert r.cmd(b"DATA\r\n")[0] == 354
    code, _ = r.cmd(payload + b"\r\n.\r\n")  # the only real end
    assert code == 250
    r.cmd(b"QUIT\r\n")
    r.close()
    assert mx_server.messages("bob") == []  # no second message
    [m] = mx_server.messages("alice")
    assert b"MAIL FROM:<evil@example.org>" in m  # it is body text


def test_bare_cr_refused(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    r.cmd(b"MAIL FROM:<s@example.org>\r\n")
    r.cmd(b"RCPT TO:<alice@example.test>\r\n")
    r.cmd(b"DATA\r\n")
    code, lines = r.cmd(b"a\rb\r\n.\r\n")
    assert code == 550 and b"5.6.0" in lines[0]
    r.close()
    assert mx_server.messages("alice") == []


def test_loop_too_many_received(mx_server: MXServer) -> None:
    hops = b"".join(b"Received: from h%d by h%d; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i) for i in range(50))
    with mx_server.client() as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("s@example.org", ["alice@example.test"], hops + MSG)
        assert e.value.smtp_code == 554 and e.value.smtp_error.startswith(b"5.4.6")
    assert mx_server.messages("alice") == []
    # 49 foreign + ours = 50: fine
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["alice@example.test"], hops[: hops.index(b"Received: from h49")] + MSG)


def test_loop_repeated_delivered_to(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("s@example.org", ["alice@example.test"], b"Delivered-To: alice@example.test\r\n" + MSG)
        assert e.value.smtp_code == 554 and e.value.smtp_error.startswith(b"5.4.6")
        # a Delivered-To for someone else is no loop
        c.sendmail("s@example.org", ["alice@example.test"], b"Delivered-To: bob@example.test\r\n" + MSG)
    assert len(mx_server.messages("alice")) == 1


def test_idle_timeout(mx_factory: object) -> None:
    mx = mx_factory(smtp={"command_timeout": 0.5})  # type: ignore[operator]
    r = session(mx.port)
    time.sleep(1.2)
    code, lines = r.reply()
    assert code == 421 and b"4.4.2" in lines[0]
    # then the server closes: EOF (or a reset), not a read that merely times out
    with pytest.raises((EOFError, ConnectionResetError)):
        r.line()
    r.close()


def test_slow_command_timeout(mx_factory: object) -> None:
    """A client dribbling one command byte at a time, never ending the line, is cut at the
    timeout too: bytes that do not complete a command do not reset the timer
    (RFC 5321 §4.5.3.2). Without a timeout the dribble would go on for 8 s; the server
    must answer 421 4.4.2 and close long before."""
    mx = mx_factory(smtp={"command_timeout": 0.6})  # type: ignore[operator]
    r = session(mx.port)
    t0 = time.monotonic()
    dribble = b"NOOP " * 16  # 80 bytes at 0.1 s each, no line end
    for ch in dribble:
        if select.select([r.sock], [], [], 0.1)[0]:
            break  # the server spoke (its 421) or closed: stop sending
        r.sock.sendall(bytes([ch]))
    else:
        pytest.fail(f"still connected after dribbling for {time.monotonic() - t0:.1f}s")
    assert time.monotonic() - t0 < 5  # generous: the timeout is 0.6 s
    code, lines = r.reply()
    assert code == 421 and b"4.4.2" in lines[0], lines
    with pytest.raises((EOFError, ConnectionResetError)):
        r.line()
    r.close()


def test_connection_caps(mx_factory: object) -> None:
    mx = mx_factory(smtp={"max_connections": 3, "max_connections_per_ip": 2})  # type: ignore[operator]
    a, b = Raw(mx.port), Raw(mx.port)
    assert a.reply()[0] == 220 and b.reply()[0] == 220
    c = Raw(mx.port)
    code, lines = c.reply()
    assert code == 421 and b"4.7.0" in lines[0]
    c.close()
    a.cmd(b"QUIT\r\n")
    a.close()
    time.sleep(0.2)
    d = Raw(mx.port)
    assert d.reply()[0] == 220  # a slot came free
    d.close()
    b.close()


@pytest.mark.parametrize(
    "line, code",
    [
        (b"FOO\r\n", 500),
        (b"\xff\xfe\r\n", 500),
        (b"\r\n", 500),
        (b"MAIL\r\n", 501),
        (b"MAIL FROM:<>\r\nMAIL FROM:<>\r\n", 250),
        (b"RCPT TO:<alice@example.test>\r\n", 503),
        (b"DATA\r\n", 503),
        (b"MAIL FROM:<a@b> FOO=BAR\r\n", 555),
        (b"MAIL FROM:<a@b> SIZE=abc\r\n", 501),
        (b"MAIL FROM:a@b\r\n", 501),
        (b"EHLO\r\n", 501),
        (b"X" * 5000 + b"\r\n", 500),
        (b"VRFY alice@example.test\r\n", 252),
        (b"EXPN team\r\n", 502),
        (b"STARTTLS now\r\n", 501),
        (b"\x00\x01\x02\r\n", 500),
    ],
)
def test_garbage_gets_5xx_and_session_survives(mx_server: MXServer, line: bytes, code: int) -> None:
    r = session(mx_server.port)
    got, lines = r.cmd(line)
    assert got == code, lines
    assert all(re.match(rb"^\d{3}[ -]\d\.\d+\.\d+ ", ln) for ln in lines), lines
    assert b"Traceback" not in b"".join(lines)
    if line.count(b"\r\n") > 1:
        r.reply()
    assert r.cmd(b"NOOP\r\n")[0] == 250
    r.close()


def test_too_many_bogus_commands_closes(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    # aiosmtpd's BOGUS_LIMIT: the 5th unknown command is answered 502 and the connection closed
    codes = [r.cmd(b"BOGUS\r\n")[0] for _ in range(5)]
    assert codes == [500, 500, 500, 500, 502]
    with pytest.raises((EOFError, ConnectionResetError)):
        r.line()
    r.close()


def test_null_sender_and_rset(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    assert r.cmd(b"MAIL FROM:<>\r\n")[0] == 250
    assert r.cmd(b"RSET\r\n")[1] == [b"250 2.0.0 OK"]
    assert r.cmd(b"MAIL FROM:<>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<bob@example.test>\r\n")[0] == 250
    assert r.cmd(b"DATA\r\n")[0] == 354
    assert r.cmd(MSG + b".\r\n")[0] == 250
    [m] = mx_server.messages("bob")
    assert m.startswith(b"Return-Path: <>\n")


def test_pipelining(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    r.sock.sendall(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\n"
                   b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [r.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
    assert r.cmd(MSG + b".\r\n")[0] == 250
    assert len(mx_server.messages("alice")) == 1 and len(mx_server.messages("bob")) == 1


# ---------------------------------------------------------------------------- 6. mail log


def test_mail_log_lines(mx_server: MXServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.maillog")
    with mx_server.client() as c:
        c.sendmail("s@example.org", ["alice@example.test", "nobody@example.test"], MSG)
    lines = [r.getMessage() for r in caplog.records if r.name == "mailstack.maillog"]
    rejected = [ln for ln in lines if ln.startswith("event=rejected")]
    delivered = [ln for ln in lines if ln.startswith("event=delivered")]
    accepted = [ln for ln in lines if ln.startswith("event=accepted")]
    assert len(rejected) == 1 and "to=<nobody@example.test>" in rejected[0] and 'reply="550 5.1.1' in rejected[0]
    assert len(delivered) == 1 and "to=<alice@example.test>" in delivered[0]
    assert len(accepted) == 1
    qid = re.search(r"id=([0-9A-F]{18})", accepted[0]).group(1)  # type: ignore[union-attr]
    assert f"id={qid}" in delivered[0]
    for ln in (rejected[0], delivered[0], accepted[0]):
        assert re.match(r"^event=\w+ id=\S+ service=smtp client=127\.0\.0\.1 from=<s@example\.org> to=\S+ size=\S+ "
                        r"status=\w+ reply=", ln), ln


def test_mail_log_cannot_be_forged(mx_server: MXServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.maillog")
    r = session(mx_server.port)
    r.cmd(b'MAIL FROM:<"x\\"\\ event=delivered"@example.org>\r\n')
    r.cmd(b"RCPT TO:<nobody@example.test>\r\n")
    r.close()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "mailstack.maillog"]
    assert lines
    token = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)(?: |$)')
    for ln in lines:
        keys = [m.group(1) for m in token.finditer(ln)]
        assert "".join(m.group(0) for m in token.finditer(ln)) == ln  # the whole line tokenises
        assert keys[:9] == ["event", "id", "service", "client", "from", "to", "size", "status", "reply"], keys
        assert keys.count("event") == 1
