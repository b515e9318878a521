"""IDLE on one host hears of mail stored by another, through PostgreSQL LISTEN/NOTIFY.

Host B's poller is slowed to an hour (``[imap] poll_interval = 3600``), as if its mail
root were an NFS mount where it cannot see other hosts' writes: a session idling on B
must still get ``* N EXISTS`` within 2 s of a message delivered on host A's MX, and of
one APPENDed on host A, and of flags set and a message expunged there. Both hosts run on one machine, where inotify could also tell B
(it cannot on NFS): so the test also listens on the channel itself and checks that host
A announced the folder (``tests/cluster/test_mailbus.py`` checks the listener's side).
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

from mailstack.directory import mailbus
from tests.cluster.conftest import PASSWORD, Cluster, Host, make_cluster
from tests.cluster.load import ALICE, message
from tests.cluster.sink import Sink
from tests.dnsserver import TestDNS

WITHIN = 2.0  # the bound, from the 250 on host A to the EXISTS on host B


@pytest.fixture
def slow_polling_cluster(tmp_path: Path, postgres_url: str, dns: TestDNS, sink: Sink) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, postgres_url, dns, sink, imap_poll=3600)
    try:
        for host in c.hosts:
            host.start()
        yield c
    finally:
        for host in c.hosts:
            host.stop()


class Idler:
    """A raw IMAP session: LOGIN, SELECT INBOX, IDLE; ``wait_for(b"* 1 EXISTS")``."""

    def __init__(self, host: Host) -> None:
        self.sock = socket.create_connection((host.ip, host.ports["imap"]), timeout=10)
        self.buf = b""
        self.read_until(b"\r\n")
        self.command(b"a LOGIN " + ALICE.encode() + b' "' + PASSWORD.encode() + b'"\r\n', b"a OK")
        self.command(b"b SELECT INBOX\r\n", b"b OK")
        self.command(b"c IDLE\r\n", b"+ ")

    def command(self, line: bytes, expect: bytes) -> bytes:
        self.sock.sendall(line)
        return self.read_until(expect)

    def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} within {timeout} s; got {self.buf[-300:]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed; got {self.buf[-300:]!r}")
            self.buf += chunk
        out, _, self.buf = self.buf.partition(marker)
        return out + marker

    def close(self) -> None:
        self.sock.close()


def wait_listening(host: Host, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while "mailbus: listening" not in host.log_text():
        assert time.monotonic() < deadline, f"host {host.name} never listened:\n{host.log_text()[-2000:]}"
        time.sleep(0.1)


def heard(conn: psycopg.Connection[Any], timeout: float) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=timeout, stop_after=1)]


def test_idle_on_b_hears_of_mail_stored_on_a(slow_polling_cluster: Cluster) -> None:
    a, b = slow_polling_cluster.hosts
    wait_listening(b)
    # what goes over the wire: on one machine inotify could also wake B, on NFS only this can
    engine = create_engine(slow_polling_cluster.db_url)
    spy = psycopg.connect(**mailbus.connect_params(engine), autocommit=True)
    engine.dispose()
    spy.execute(f"LISTEN {mailbus.CHANNEL}")
    idler = Idler(b)
    try:
        with smtplib.SMTP(a.ip, a.ports["smtp"], timeout=10) as s:
            s.sendmail("sender@outside.test", [ALICE], message("<idle-1@cluster.test>", "sender@outside.test", ALICE))
        idler.read_until(b"* 1 EXISTS", timeout=WITHIN)
        assert heard(spy, WITHIN) == ["example.test/alice"]

        m = imaplib.IMAP4(a.ip, a.ports["imap"], timeout=10)
        try:
            m.login(ALICE, PASSWORD)
            assert m.append("INBOX", None, None, message("<idle-2@cluster.test>", ALICE, ALICE))[0] == "OK"
            m.logout()
        finally:
            m.sock.close()
        idler.read_until(b"* 2 EXISTS", timeout=WITHIN)
        assert heard(spy, WITHIN) == ["example.test/alice"]

        # flags set and a message expunged on host A: B's idler hears of both as well
        m = imaplib.IMAP4(a.ip, a.ports["imap"], timeout=10)
        try:
            m.login(ALICE, PASSWORD)
            m.select("INBOX")
            assert m.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
            idler.read_until(b"\\Flagged", timeout=WITHIN)
            assert m.store("2", "+FLAGS", "(\\Deleted)")[0] == "OK" and m.expunge()[0] == "OK"
            idler.read_until(b"* 2 EXPUNGE", timeout=WITHIN)
            m.logout()
        finally:
            m.sock.close()
        idler.command(b"DONE\r\n", b"c OK")
    finally:
        idler.close()
        spy.close()
