"""REQUIRETLS (RFC 8689) on the receiving side: offered only over TLS, refused without it."""

from __future__ import annotations

from mailstack.replies import Reply
from mailstack.smtp import params as P
from tests.smtp.conftest import MXServer

MSG = b"From: <sender@example.org>\r\nTo: <bob@example.test>\r\nSubject: rt\r\n\r\nhello\r\n"


def test_parse_mail_requiretls() -> None:
    got = P.parse_mail("FROM:<a@example.org> REQUIRETLS", extended=True, max_size=1000)
    assert isinstance(got, P.MailArgs) and got.requiretls
    got = P.parse_mail("FROM:<a@example.org>", extended=True, max_size=1000)
    assert isinstance(got, P.MailArgs) and not got.requiretls
    bad = P.parse_mail("FROM:<a@example.org> REQUIRETLS=yes", extended=True, max_size=1000)
    assert isinstance(bad, Reply) and bad.code == 501


def test_requiretls_needs_tls_on_the_mx(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        code, msg = c.ehlo()
        assert b"REQUIRETLS" not in msg  # RFC 8689 §4.1: not offered in plaintext
        code, msg = c.mail("sender@example.org", ["REQUIRETLS"])
        assert (code, msg[:6]) == (530, b"5.7.10")
        c.starttls(context=mx_server.client_context())
        code, msg = c.ehlo()
        assert b"REQUIRETLS" in msg
        code, _ = c.mail("sender@example.org", ["REQUIRETLS"])
        assert code == 250
        code, _ = c.rcpt("bob@example.test")
        assert code == 250
        code, _ = c.data(MSG)
        assert code == 250
    assert len(mx_server.messages("bob")) == 1


def test_requiretls_refusal_changes_nothing(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.ehlo()
        assert c.mail("sender@example.org", ["REQUIRETLS"])[0] == 530
        c.sendmail("sender@example.org", ["bob@example.test"], MSG)  # the session goes on as before
    assert len(mx_server.messages("bob")) == 1
