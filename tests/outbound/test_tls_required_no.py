"""``TLS-Required: No`` (RFC 8689 §5) end to end: submission -> queue -> a remote MX that
MTA-STS (``enforce``) would refuse, because its certificate is not from the trusted CA.

- from an authenticated submission user, the field lifts the policy: the message goes
  out over opportunistic TLS, the field kept in it;
- the same message without the field is held (the policy check is still there);
- with REQUIRETLS as well, REQUIRETLS wins (RFC 8689 §5: the field "MUST be ignored"):
  nothing vouches for REQUIRETLS here, so it comes back to the sender;
- on the MX the field is kept in the delivered message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.queue import QueueStore
from mailstack.smtp.tlspolicy import tls_required_no
from tests.dnsserver import TestDNS
from tests.outbound.conftest import Remote, Stack, submission_config
from tests.outbound.test_submission import ALICE, client, wait_for
from tests.outbound.test_transport_security import (PolicyServer, TestCA, ca, maillog,  # noqa: F401 - fixtures
                                                    policy_server, restart_with_cert)

BODY = b"From: <alice@example.test>\r\nTo: <x@remote.test>\r\nSubject: no tls needed\r\n"
NO_TLS = BODY + b"TLS-Required: No\r\n\r\nHi.\r\n"
PLAIN = BODY + b"\r\nHi.\r\n"


@pytest.fixture
def sts_stack(tmp_path: Path, dns: TestDNS, remote: Remote, directory: Any, ca: TestCA,  # noqa: F811
              policy_server: PolicyServer) -> Iterator[Stack]:  # noqa: F811
    restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test", self_signed=True))  # fails MTA-STS
    dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=trn1")
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    cfg = submission_config(tmp_path, dns, remote.port,
                            queue={"tls_ca_file": str(tmp_path / "ca.pem"), "mta_sts_port": policy_server.port})
    s = Stack(cfg, directory, ("submission", "queue"))
    yield s
    s.stop()


def test_tls_required_no_lifts_mta_sts_and_the_field_is_kept(sts_stack: Stack, remote: Remote,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    with client(sts_stack) as c:
        c.login(*ALICE)
        c.sendmail("alice@example.test", ["x@remote.test"], PLAIN)
        c.sendmail("alice@example.test", ["x@remote.test"], NO_TLS)
    assert wait_for(lambda: len(remote.messages) == 1, 20)
    time.sleep(0.5)
    (got,) = remote.messages  # only the one that asked for it
    assert got.tls  # opportunistic TLS was still used
    assert b"\r\nTLS-Required: No\r\n" in got.data
    store = QueueStore(sts_stack.cfg.queue.dir)
    (held,) = store.list()  # the plain one waits for a valid certificate
    assert b"TLS-Required" not in store.load(held)[1]
    lines = maillog(caplog)
    assert any("event=delivered" in ln and "tls=opportunistic" in ln for ln in lines)
    assert any("event=deferred" in ln and "tls=mta-sts" in ln for ln in lines)


def test_requiretls_wins_over_tls_required_no(sts_stack: Stack, remote: Remote) -> None:
    with client(sts_stack) as c:
        c.login(*ALICE)
        c.sendmail("alice@example.test", ["x@remote.test"], NO_TLS, mail_options=["REQUIRETLS"])
    store = QueueStore(sts_stack.cfg.queue.dir)

    def tried() -> dict[str, Any] | None:
        for qid in store.list():
            extra = store.load(qid)[0].extra
            if extra.get("last_error"):
                return extra
        return None

    assert wait_for(lambda: tried() is not None, 20)
    extra = tried()
    assert extra is not None
    # RFC 8689 §5: the field is ignored; the MTA-STS check stands and holds the message
    assert extra.get("requiretls") and not extra.get("tls_optional")
    assert "4.7.5" in extra["last_error"]
    assert remote.messages == []


@pytest.mark.parametrize("header,expected", [
    (b"TLS-Required: No\r\n", True),
    (b"tls-required:   NO  \r\n", True),  # RFC 8689 §5: case-insensitive
    (b"TLS-Required: Yes\r\n", False),  # no other value is defined: nothing lifted
    (b"X-TLS-Required: No\r\n", False),
    (b"", False),
])
def test_tls_required_no_field(header: bytes, expected: bool) -> None:
    assert tls_required_no(b"From: a@b.test\r\n" + header + b"\r\nTLS-Required: No\r\n") is expected  # body ignored


def test_on_the_mx_the_field_is_kept_and_lifts_nothing(tmp_path: Path, dns: TestDNS, remote: Remote) -> None:
    """A stranger's ``TLS-Required: No`` reaches the mailbox and the forward as written,
    but the forward is not marked to skip MTA-STS/DANE (only submission users may ask)."""
    import smtplib

    from mailstack.directory import Directory
    from tests.helpers import free_port
    from tests.outbound.conftest import make_config

    cfg = make_config(tmp_path, dns, remote.port, smtp={"listen": [f"127.0.0.1:{free_port()}"]})
    d = Directory(cfg.database.url)
    d.migrate()
    d.add_domain("example.test")
    d.add_user("alice@example.test", "correct horse battery staple")
    d.add_alias("fwd@example.test", ["dave@remote.test"])
    s = Stack(cfg, d, ("smtp",))
    try:
        with smtplib.SMTP(cfg.smtp.listen[0].host, cfg.smtp.listen[0].port, timeout=10) as c:
            c.sendmail("carol@sender.test", ["alice@example.test", "fwd@example.test"],
                       NO_TLS.replace(b"<x@remote.test>", b"<fwd@example.test>"))
    finally:
        s.stop()
        d.close()
    new = cfg.storage.maildir_root / "example.test" / "alice" / "new"
    (mail,) = list(new.iterdir())
    assert b"\nTLS-Required: No\n" in mail.read_bytes()  # Maildir files hold LF line ends
    store = QueueStore(cfg.queue.dir)
    (qid,) = store.list()
    env, data = store.load(qid)
    assert env.recipients == ("dave@remote.test",) and b"\r\nTLS-Required: No\r\n" in data
    assert "tls_optional" not in env.extra
