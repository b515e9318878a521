"""DSN (RFC 3461) end to end: submission -> queue -> remote, and back into the bounce.

The sink of tests/outbound/conftest.py (aiosmtpd) offers no DSN: success notices are
ours ("relayed"). ``DSNSink`` is a scripted byte-level peer that does offer DSN, to see
exactly what we pass on.
"""

from __future__ import annotations

import email
import socket
import threading
import time
from typing import Any

from mailstack.config import Config
from mailstack.queue import QueueStore
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import REMOTE_IP, Remote, Stack, make_config
from tests.outbound.test_queue_runner import inbox, run, runner_for
from tests.outbound.test_submission import client

ALICE = ("alice@example.test", "correct horse battery staple")
MSG = b"From: Alice <alice@example.test>\r\nTo: x@remote.test\r\nSubject: dsn round trip\r\n\r\nThe full body.\r\n"


def wait_for(pred: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_dsn_parameters_round_trip_into_bounce_and_relayed_notice(stack: Stack, remote: Remote) -> None:
    remote.refuse["nobody@remote.test"] = "550 5.1.1 <nobody@remote.test>: no such user"
    remote.refuse["quiet@remote.test"] = "550 5.1.1 <quiet@remote.test>: no such user"
    with client(stack) as c:
        c.login(*ALICE)
        assert c.has_extn("dsn")
        assert c.mail("alice@example.test", ["RET=FULL", "ENVID=QQ314159+2Bz"])[0] == 250
        assert c.rcpt("nobody@remote.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;Nobody+40Remote.Test"])[0] == 250
        assert c.rcpt("quiet@remote.test", ["NOTIFY=NEVER"])[0] == 250
        assert c.rcpt("x@remote.test", ["NOTIFY=SUCCESS"])[0] == 250
        assert c.data(MSG)[0] == 250
    alice = lambda: inbox(stack.cfg, "example.test", "alice")  # noqa: E731
    assert wait_for(lambda: len(alice()) >= 2), alice()
    time.sleep(0.5)  # nothing more arrives (no notice for quiet@)
    notices = {email.message_from_bytes(m)["Subject"]: m for m in alice()}
    assert set(notices) == {"Undelivered Mail Returned to Sender", "Successful Mail Delivery Report"}
    bounce = notices["Undelivered Mail Returned to Sender"]
    text = bounce.decode()  # Maildir files have LF line ends
    assert "Original-Envelope-Id: QQ314159+z\n" in text
    assert "Original-Recipient: rfc822; Nobody@Remote.Test\nFinal-Recipient: rfc822; nobody@remote.test\n" \
           "Action: failed\nStatus: 5.1.1\n" in text
    assert "quiet@remote.test" not in text  # NOTIFY=NEVER
    parts = [p.get_content_type() for p in email.message_from_bytes(bounce).get_payload()]
    assert parts == ["text/plain", "message/delivery-status", "message/rfc822"]  # RET=FULL
    assert "The full body." in text
    relayed = notices["Successful Mail Delivery Report"].decode()
    assert "Final-Recipient: rfc822; x@remote.test\nAction: relayed\nStatus: 2.0.0\n" in relayed
    assert "Original-Envelope-Id: QQ314159+z\n" in relayed
    assert "The full body." not in relayed
    assert [m.recipients for m in remote.messages] == [["x@remote.test"]]


class DSNSink:
    """A scripted SMTP server that offers DSN and records every command line it gets."""

    def __init__(self, host: str, port: int) -> None:
        self.lines: list[bytes] = []
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            f = conn.makefile("rb")
            conn.sendall(b"220 dsn.sink ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                self.lines.append(line)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-dsn.sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 DSN\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    conn.sendall(b"250 2.0.0 taken\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 OK\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_parameters_passed_to_a_dsn_server_and_no_relayed_notice(tmp_path: Any, dns: TestDNS,
                                                                 directory: Any) -> None:
    port = free_port(REMOTE_IP)
    sink = DSNSink(REMOTE_IP, port)
    cfg: Config = make_config(tmp_path, dns, port)
    store = QueueStore(cfg.queue.dir)
    dsn = {"ret": "HDRS", "envid": "id+1 x",
           "rcpts": {"x@remote.test": {"notify": ["FAILURE", "SUCCESS"], "orcpt": "rfc822;X=1@remote.test"},
                     "y@remote.test": {"notify": []}}}
    store.enqueue("alice@example.test", ["x@remote.test", "y@remote.test", "z@remote.test"], MSG,
                  extra={"dsn": dsn})
    run(runner_for(cfg, directory).run_once())
    sink.close()
    commands = [ln for ln in sink.lines if ln[:4] in (b"MAIL", b"RCPT")]
    assert commands == [
        b"MAIL FROM:<alice@example.test> RET=HDRS ENVID=id+2B1+20x\r\n",  # (the sink offers no SIZE)
        b"RCPT TO:<x@remote.test> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;X+3D1@remote.test\r\n",
        b"RCPT TO:<y@remote.test> NOTIFY=NEVER\r\n",
        b"RCPT TO:<z@remote.test>\r\n",
    ]
    assert store.list() == []  # delivered, and no "relayed" notice: the next hop reports
    assert inbox(cfg, "example.test", "alice") == []


def test_bdat_through_submission(stack: Stack, remote: Remote) -> None:
    """CHUNKING on submission: after AUTH, two chunks and ``BDAT 0 LAST``; DATA in between is 503."""
    with client(stack) as c:
        c.login(*ALICE)
        assert c.has_extn("chunking")
        assert c.mail("alice@example.test")[0] == 250
        assert c.rcpt("x@remote.test")[0] == 250
        a, b = MSG[:30], MSG[30:]
        c.send(b"BDAT %d\r\n%s" % (len(a), a))
        assert c.getreply()[0] == 250
        c.putcmd("DATA")
        assert c.getreply()[0] == 503
        c.send(b"BDAT %d\r\n%sBDAT 0 LAST\r\n" % (len(b), b))
        assert c.getreply()[0] == 250
        code, text = c.getreply()
        assert code == 250, text
    assert wait_for(lambda: len(remote.messages) == 1)
    data = remote.messages[0].data  # (submission adds Date: and Message-ID:)
    assert b"\r\nSubject: dsn round trip\r\n" in data and data.endswith(b"\r\n\r\nThe full body.\r\n")
