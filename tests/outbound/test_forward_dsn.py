"""The sender's DSN request and REQUIRETLS carried onto what delivery queues, and into an
LMTP MDA (``[smtp] mda``).

- an alias to a remote address (RFC 3461 §5.2.7): the forward keeps RET and ENVID, the
  alias's NOTIFY, and an ORCPT naming the alias when the sender gave none, in its queue
  envelope and on the wire to a next hop that offers DSN (a scripted peer, ``DSNSink``);
  REQUIRETLS stays on the forward (RFC 8689 §4.2);
- the MX in front of our LMTP service passes NOTIFY/ORCPT/RET/ENVID over LMTP (the LMTP
  server offers DSN), so a NOTIFY=SUCCESS delivery gets its "delivered" notice.

The MX runs in-process or through our LMTP service; both are real servers on loopback.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.config import Config
from mailstack.queue import QueueStore
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import REMOTE_IP, Remote, Stack, make_config
from tests.outbound.test_dsn import DSNSink, wait_for
from tests.outbound.test_queue_runner import run, runner_for

MESSAGE = (b"From: Carol <carol@sender.test>\r\nTo: fwd@example.test\r\nSubject: forwarded with DSN\r\n"
           b"Message-ID: <fwd-dsn@sender.test>\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n\r\nHello.\r\n")


@pytest.fixture(params=["in-process", "lmtp"])
def mx_cfg(request: pytest.FixtureRequest, tmp_path: Path, dns: TestDNS, remote: Remote) -> Config:
    smtp: dict[str, Any] = {"listen": [f"127.0.0.1:{free_port()}"]}
    sections: dict[str, Any] = {}
    if request.param == "lmtp":
        lmtp = f"127.0.0.1:{free_port()}"
        smtp["mda"] = lmtp
        sections["lmtp"] = {"listen": [lmtp]}
    return make_config(tmp_path, dns, remote.port, smtp=smtp, **sections)


@pytest.fixture
def mx(mx_cfg: Config) -> Iterator[Stack]:
    from mailstack.directory import Directory

    d = Directory(mx_cfg.database.url)
    d.migrate()
    d.add_domain("example.test")
    d.add_user("alice@example.test", "correct horse battery staple")
    d.add_alias("fwd@example.test", ["dave@remote.test"])
    s = Stack(mx_cfg, d, ("smtp",) + (("lmtp",) if mx_cfg.smtp.mda else ()))  # no queue runner: we look
    s.directory = d  # type: ignore[attr-defined]
    yield s
    s.stop()
    d.close()


def mx_client(stack: Stack, *, starttls: bool = False) -> smtplib.SMTP:
    host, port = stack.cfg.smtp.listen[0].host, stack.cfg.smtp.listen[0].port
    c = smtplib.SMTP(host, port, timeout=10)
    c.ehlo("client.sender.test")
    if starttls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        c.starttls(context=ctx)
        c.ehlo("client.sender.test")
    return c


def queued(cfg: Config) -> list[tuple[Any, bytes]]:
    store = QueueStore(cfg.queue.dir)
    return [store.load(q) for q in store.list()]


def test_a_forward_keeps_the_dsn_request_onto_the_next_hop(mx: Stack, mx_cfg: Config, dns: TestDNS,
                                                           tmp_path: Path) -> None:
    with mx_client(mx) as c:
        c.sendmail("carol@sender.test", ["fwd@example.test"], MESSAGE, mail_options=["RET=HDRS", "ENVID=env+2B1"],
                   rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    assert wait_for(lambda: len(queued(mx_cfg)) == 1)
    ((env, _data),) = queued(mx_cfg)
    assert env.recipients == ("dave@remote.test",)
    # RFC 3461 §5.2.7: the alias passes the request on; ORCPT names what the sender wrote
    assert env.extra["dsn"] == {"ret": "HDRS", "envid": "env+1",
                                "rcpts": {"dave@remote.test": {"notify": ["FAILURE", "SUCCESS"],
                                                               "orcpt": "rfc822;fwd@example.test"}}}
    assert not env.extra.get("requiretls")
    # and on the wire, to a next hop that offers DSN
    port = free_port(REMOTE_IP)
    sink = DSNSink(REMOTE_IP, port)
    cfg = make_config(tmp_path, dns, port)
    run(runner_for(cfg, mx.directory).run_once())  # type: ignore[attr-defined]
    sink.close()
    commands = [ln for ln in sink.lines if ln[:4] in (b"MAIL", b"RCPT")]
    assert commands[0].startswith(b"MAIL FROM:<SRS0=") and commands[0].endswith(b" RET=HDRS ENVID=env+2B1\r\n")
    assert commands[1:] == [b"RCPT TO:<dave@remote.test> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;fwd@example.test\r\n"]


def test_a_forward_keeps_requiretls(mx: Stack, mx_cfg: Config) -> None:
    with mx_client(mx, starttls=True) as c:
        c.sendmail("carol@sender.test", ["fwd@example.test"], MESSAGE, mail_options=["REQUIRETLS"],
                   rcpt_options=["NOTIFY=NEVER", "ORCPT=rfc822;Fwd+40Example.Test"])
    assert wait_for(lambda: len(queued(mx_cfg)) == 1)
    ((env, _data),) = queued(mx_cfg)
    assert env.extra.get("requiretls") is True  # RFC 8689 §4.2 (through our LMTP MDA too)
    assert env.extra["dsn"]["rcpts"] == {"dave@remote.test": {"notify": [], "orcpt": "rfc822;Fwd@Example.Test"}}


def test_notify_success_through_an_lmtp_mda_is_reported(mx: Stack, mx_cfg: Config) -> None:
    with mx_client(mx) as c:
        c.sendmail("carol@sender.test", ["alice@example.test"], MESSAGE, mail_options=["ENVID=e-42"],
                   rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice+40Example.Test"])
    assert wait_for(lambda: len(queued(mx_cfg)) == 1)
    time.sleep(0.3)
    ((env, data),) = queued(mx_cfg)  # the "delivered" notice to carol, nothing else
    assert env.sender == "" and env.recipients == ("carol@sender.test",)
    text = data.decode()
    assert "Original-Envelope-Id: e-42\r\n" in text
    assert "Original-Recipient: rfc822; Alice@Example.Test\r\n" in text
    assert "Action: delivered\r\n" in text


class LMTPSink:
    """A scripted LMTP server (TCP on loopback) that records the commands it gets and
    offers DSN or not."""

    def __init__(self, dsn: bool) -> None:
        import socket
        import threading

        self.lines: list[bytes] = []
        self.dsn = dsn
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            f = conn.makefile("rb")
            conn.sendall(b"220 lmtp.sink LMTP\r\n")
            rcpts = 0
            while True:
                line = f.readline()
                if not line:
                    return
                self.lines.append(line)
                verb = line[:4].upper()
                if verb == b"LHLO":
                    conn.sendall(b"250-lmtp.sink\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
                                 + (b"250-DSN\r\n" if self.dsn else b"") + b"250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    rcpts += 1
                    conn.sendall(b"250 2.1.5 OK\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    conn.sendall(b"250 2.0.0 stored\r\n" * rcpts)
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 OK\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize("offers_dsn", [True, False])
def test_lmtp_client_passes_dsn_parameters_only_where_offered(offers_dsn: bool) -> None:
    import asyncio

    from mailstack.config import ListenAddress
    from mailstack.mail.dsnrequest import DSNRequest, RecipientRequest
    from mailstack.smtp.mda import LMTPClient

    sink = LMTPSink(offers_dsn)
    client = LMTPClient(ListenAddress("tcp", "127.0.0.1", sink.port), helo="mx.example.test", timeout=10)
    dsn = DSNRequest("FULL", "id 1", {"a@example.test": RecipientRequest(frozenset({"SUCCESS"}), "rfc822;A@x.test"),
                                      "b@example.test": RecipientRequest(frozenset(), None)})
    results = asyncio.run(client.deliver("s@sender.test", ["a@example.test", "b@example.test"], [], MESSAGE,
                                         queue_id="Q1", client=None, smtputf8=False, body_8bit=False, dsn=dsn))
    sink.close()
    assert [r.reply.code for r in results] == [250, 250]
    commands = [ln for ln in sink.lines if ln[:4] in (b"MAIL", b"RCPT")]
    if offers_dsn:  # RFC 3461 §4
        assert commands == [b"MAIL FROM:<s@sender.test> RET=FULL ENVID=id+201\r\n",
                            b"RCPT TO:<a@example.test> NOTIFY=SUCCESS ORCPT=rfc822;A@x.test\r\n",
                            b"RCPT TO:<b@example.test> NOTIFY=NEVER\r\n"]
    else:  # a server without DSN would refuse the parameters (555)
        assert commands == [b"MAIL FROM:<s@sender.test>\r\n", b"RCPT TO:<a@example.test>\r\n",
                            b"RCPT TO:<b@example.test>\r\n"]
