from tests.smtp.conftest import MXServer


def test_smoke(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        code, msg = c.ehlo()
        print(code, msg)
        c.sendmail("a@example.org", ["alice@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
    print(mx_server.messages("alice"))
    assert len(mx_server.messages("alice")) == 1
