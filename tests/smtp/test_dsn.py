"""DSN (RFC 3461) on the MX and LMTP: parameters in byte-level transcripts, success notices queued."""

from __future__ import annotations

import pytest

from mailstack.mail.dsnrequest import (DSNRequest, RecipientRequest, parse_notify, parse_orcpt, xtext_decode,
                                       xtext_encode)
from mailstack.queue import QueueStore
from tests.smtp.conftest import MXServer
from tests.smtp.test_mx import Raw, session

MSG = b"From: a@example.org\r\nSubject: dsn test\r\n\r\nthe body\r\n"


def queued(q: QueueStore) -> list[tuple[str, tuple[str, ...], bytes]]:
    out = []
    for qid in q.list():
        env, data = q.load(qid)
        out.append((env.sender, env.recipients, data))
    return out


def test_dsn_is_announced(mx_server: MXServer) -> None:
    r = Raw(mx_server.port)
    r.reply()
    code, lines = r.cmd(b"EHLO client.example.org\r\n")
    assert code == 250 and any(ln[4:] == b"DSN" for ln in lines)


@pytest.mark.parametrize("mail,rcpt,code", [
    (b"RET=FULL ENVID=abc+2Bdef", b"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+40example.test", 250),
    (b"RET=hdrs", b"NOTIFY=never", 250),
    (b"RET=ALL", b"", 501),
    (b"ENVID=bad+zz", b"", 501),
    (b"ENVID=" + b"x" * 101, b"", 501),
    (b"ENVID=ctl+0A", b"", 501),  # decodes to a control character
    (b"", b"NOTIFY=NEVER,SUCCESS", 501),
    (b"", b"NOTIFY=SUCCESS,SUCCESS", 501),
    (b"", b"NOTIFY=SOMETIMES", 501),
    (b"", b"ORCPT=alice@example.test", 501),  # no addr-type
    (b"", b"ORCPT=rfc822;", 501),
    (b"", b"FOO=bar", 555),
])
def test_dsn_parameters(mx_server: MXServer, mail: bytes, rcpt: bytes, code: int) -> None:
    r = session(mx_server.port)
    mail_code, mail_lines = r.cmd(b"MAIL FROM:<s@example.org>" + (b" " + mail if mail else b"") + b"\r\n")
    if mail_code != 250:
        assert mail_code == code and b"5.5.4" in mail_lines[0]
        assert r.cmd(b"NOOP\r\n")[0] == 250
        return
    got, lines = r.cmd(b"RCPT TO:<alice@example.test>" + (b" " + rcpt if rcpt else b"") + b"\r\n")
    assert got == code
    if code != 250:
        assert b"5.5.4" in lines[0]


def test_dsn_parameters_need_ehlo(mx_server: MXServer) -> None:
    r = Raw(mx_server.port)
    r.reply()
    assert r.cmd(b"HELO client.example.org\r\n")[0] == 250
    assert r.cmd(b"MAIL FROM:<s@example.org> RET=FULL\r\n")[0] == 501


@pytest.mark.parametrize("via_bdat", [False, True])
def test_notify_success_queues_a_delivered_dsn(mx_server: MXServer, via_bdat: bool) -> None:
    r = session(mx_server.port)
    assert r.cmd(b"MAIL FROM:<s@example.org> RET=FULL ENVID=QQ314159+2B1\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS ORCPT=rfc822;Alice+40Example.Test\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<bob@example.test>\r\n")[0] == 250  # no NOTIFY: no success notice
    if via_bdat:
        assert r.cmd(b"BDAT %d LAST\r\n%s" % (len(MSG), MSG))[0] == 250
    else:
        assert r.cmd(b"DATA\r\n")[0] == 354
        assert r.cmd(MSG + b".\r\n")[0] == 250
    assert len(mx_server.messages("alice")) == 1 and len(mx_server.messages("bob")) == 1
    [(sender, rcpts, dsn)] = queued(mx_server.queue)
    assert sender == "" and rcpts == ("s@example.org",)
    text = dsn.decode()
    assert "Subject: Successful Mail Delivery Report" in text
    assert "Original-Envelope-Id: QQ314159+1\r\n" in text
    assert "Original-Recipient: rfc822; Alice@Example.Test\r\nFinal-Recipient: rfc822; alice@example.test\r\n" \
           "Action: delivered\r\nStatus: 2.0.0\r\n" in text
    assert "bob@example.test" not in text
    assert "Content-Type: text/rfc822-headers" in text  # RET=FULL is for failures only
    assert "the body" not in text


def test_without_notify_success_nothing_is_queued(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    assert r.cmd(b"MAIL FROM:<s@example.org> RET=FULL\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test> NOTIFY=FAILURE,DELAY\r\n")[0] == 250
    assert r.cmd(b"DATA\r\n")[0] == 354
    assert r.cmd(MSG + b".\r\n")[0] == 250
    assert queued(mx_server.queue) == []


def test_deferred_recipient_carries_the_request_into_the_queue(mx_server: MXServer) -> None:
    """A recipient whose delivery fails temporarily after the transaction is queued with the
    sender's DSN request (extra["dsn"]), for the bounce or warning the runner may send."""
    md = mx_server.maildir("bob")
    md.ensure()
    (md.root / "new").rmdir()
    (md.root / "new").write_bytes(b"")  # bob's delivery fails (temporarily); alice's works
    try:
        r = session(mx_server.port)
        assert r.cmd(b"MAIL FROM:<s@example.org> RET=HDRS ENVID=e1\r\n")[0] == 250
        assert r.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
        assert r.cmd(b"RCPT TO:<bob@example.test> NOTIFY=DELAY ORCPT=rfc822;b+2Bx@example.test\r\n")[0] == 250
        assert r.cmd(b"DATA\r\n")[0] == 354
        assert r.cmd(MSG + b".\r\n")[0] == 250
    finally:
        (md.root / "new").unlink()
    q = mx_server.queue
    [qid] = q.list()
    env = q.envelope(qid)
    assert env.recipients == ("bob@example.test",)
    assert DSNRequest.from_extra(env.extra) == DSNRequest(
        "HDRS", "e1", {"bob@example.test": RecipientRequest(frozenset({"DELAY"}), "rfc822;b+x@example.test")})


def test_lmtp_notify_success(mx_server: MXServer) -> None:
    r = Raw(mx_server.lmtp_port)
    assert r.reply()[0] == 220
    code, lines = r.cmd(b"LHLO client.example.org\r\n")
    assert any(ln[4:] == b"DSN" for ln in lines)
    assert r.cmd(b"MAIL FROM:<s@example.org> ENVID=lmtp1\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<bob@example.test> NOTIFY=NEVER\r\n")[0] == 250
    r.sock.sendall(b"DATA\r\n")
    assert r.reply()[0] == 354
    r.sock.sendall(MSG + b".\r\n")
    assert [r.reply()[0], r.reply()[0]] == [250, 250]
    [(sender, rcpts, dsn)] = queued(mx_server.queue)
    assert sender == "" and rcpts == ("s@example.org",)
    assert b"Original-Envelope-Id: lmtp1\r\n" in dsn and b"Final-Recipient: rfc822; alice@example.test" in dsn
    assert b"bob@example.test" not in dsn


# ---------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("text,value", [
    ("abc", "abc"), ("a+2Bb", "a+b"), ("a+3Db", "a=b"), ("+41", "A"),
    ("a+2b", None), ("a=b", None), ("a b", None), ("+0D+0A", None), ("+", None), ("é", None),
])
def test_xtext_decode(text: str, value: str | None) -> None:
    assert xtext_decode(text) == value


@pytest.mark.parametrize("value", ["plain", "a+b=c", "sp ace", "tab\there", "ünï"])
def test_xtext_round_trip(value: str) -> None:
    enc = xtext_encode(value)
    assert enc.isascii() and " " not in enc and "=" not in enc
    if value.isascii() and value.isprintable():
        assert xtext_decode(enc) == value


def test_parse_notify_and_orcpt() -> None:
    assert parse_notify("NEVER") == frozenset()
    assert parse_notify("delay,Failure") == frozenset({"DELAY", "FAILURE"})
    assert parse_notify("") is None
    assert parse_orcpt("rfc822;a+40b") == "rfc822;a@b"
    assert parse_orcpt(";a") is None and parse_orcpt("rfc822") is None


def test_request_defaults_and_extra_round_trip() -> None:
    req = DSNRequest("FULL", "id1", {"a@x": RecipientRequest(frozenset(), None),
                                     "b@x": RecipientRequest(frozenset({"SUCCESS"}), "rfc822;B@x")})
    assert not req.wants("a@x", "failure") and not req.wants("a@x", "delay")  # NEVER
    assert req.wants("b@x", "success") and not req.wants("b@x", "failure")
    assert req.wants("c@x", "failure") and req.wants("c@x", "delay") and not req.wants("c@x", "success")
    assert DSNRequest.from_extra({"dsn": req.to_extra()}) == req
    assert DSNRequest.from_extra({}) == DSNRequest() and not DSNRequest()
