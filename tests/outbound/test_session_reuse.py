"""Outbound SMTP sessions are reused per destination (Postfix's connection cache).

The queue service runs as ``mailstack serve queue`` runs it (``start_background``), against
the aiosmtpd sink on 127.0.0.23 (``tests.outbound.conftest``), which records the client's
address and port with every message: one peer = one connection. Covered: several
messages, each with several recipients in one transaction, over one connection; the
per-session message cap; a burst staying within ``max_per_domain`` connections without a
batching delay; a parked session that the server dropped (while idle, or at the ``RSET``
that starts its next use, or with a ``421``) replaced by a fresh one with every message
delivered exactly once; and a destination whose DANE policy asks for more never carried
by a session made without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.config import Config
from mailstack.dns import resolver_from_config
from mailstack.net import client_context
from mailstack.queue import QueueStore
from mailstack.smtp.queue_runner import QueueRunner
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import REMOTE_IP, Remote, SinkHandler, make_config
from tests.outbound.test_transport_security import (PolicyServer, TestCA, maillog, restart_with_cert, secure_config,
                                                     server_context)

RCPTS = ["a@remote.test", "b@remote.test", "c@remote.test"]


def message(n: int) -> bytes:
    return (f"From: <alice@example.test>\r\nTo: <a@remote.test>\r\nSubject: reuse {n}\r\n"
            f"Message-ID: <reuse{n}@example.test>\r\n\r\nMessage number {n}.\r\n").encode()


def subjects(remote: Remote) -> list[str]:
    return sorted(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in remote.messages)


async def serving(cfg: Config) -> QueueRunner:
    """The queue service, as ``mailstack serve queue`` starts it."""
    runner = QueueRunner(cfg, QueueStore(cfg.queue.dir), resolver_from_config(cfg.dns), client_tls=client_context())
    runner.start_background()
    return runner


async def delivered(store: QueueStore, remote: Remote, n: int, timeout: float = 30.0) -> None:
    """Until the sink holds ``n`` messages and the queue is empty (the round is over, so
    its session is parked)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(remote.messages) < n or await asyncio.to_thread(store.list):
        if loop.time() > deadline:
            raise AssertionError(f"{len(remote.messages)} of {n} messages arrived; queue {store.list()}")
        await asyncio.sleep(0.02)


async def send_one_by_one(cfg: Config, remote: Remote, count: int, first: int = 0) -> None:
    store = QueueStore(cfg.queue.dir)
    for i in range(first, first + count):
        await asyncio.to_thread(store.enqueue, "alice@example.test", RCPTS, message(i))
        await delivered(store, remote, i + 1)


def test_messages_to_one_domain_share_one_connection_and_one_transaction_each(cfg: Config, remote: Remote) -> None:
    async def main() -> None:
        runner = await serving(cfg)
        try:
            await send_one_by_one(cfg, remote, 5)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert subjects(remote) == [f"reuse {i}" for i in range(5)]  # each once
    assert all(m.recipients == RCPTS for m in remote.messages)  # one transaction per message, all recipients
    assert len({m.peer for m in remote.messages}) == 1  # one connection for all five


@pytest.mark.parametrize(("limit", "connections"), [(2, 3), (0, 1)])
def test_messages_per_session_are_capped(tmp_path: Path, dns: TestDNS, remote: Remote, limit: int,
                                         connections: int) -> None:
    cfg = make_config(tmp_path, dns, remote.port, queue={"connection_reuse_limit": limit})

    async def main() -> None:
        runner = await serving(cfg)
        try:
            await send_one_by_one(cfg, remote, 5)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert subjects(remote) == [f"reuse {i}" for i in range(5)]
    assert len({m.peer for m in remote.messages}) == connections  # 2 + 2 + 1 with a cap of 2


def test_no_cache_time_means_a_connection_per_round(tmp_path: Path, dns: TestDNS, remote: Remote) -> None:
    cfg = make_config(tmp_path, dns, remote.port, queue={"connection_cache_time": 0})

    async def main() -> None:
        runner = await serving(cfg)
        try:
            await send_one_by_one(cfg, remote, 3)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert len({m.peer for m in remote.messages}) == 3


def test_a_burst_is_sent_at_once_over_at_most_max_per_domain_connections(tmp_path: Path, dns: TestDNS,
                                                                         remote: Remote) -> None:
    """No batching delay, and still no connection per message: what arrives while a round
    sends waits for the next scan and takes the parked sessions."""
    cfg = make_config(tmp_path, dns, remote.port, queue={"max_per_domain": 2})
    store = QueueStore(cfg.queue.dir)

    def burst() -> None:
        for i in range(20):
            store.enqueue("alice@example.test", RCPTS, message(i))

    async def main() -> None:
        runner = await serving(cfg)
        try:
            t = threading.Thread(target=burst)  # as submission enqueues: from worker threads
            t.start()
            await asyncio.to_thread(t.join)
            await delivered(store, remote, 20)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert subjects(remote) == sorted(f"reuse {i}" for i in range(20))
    assert len({m.peer for m in remote.messages}) <= 2


# ---------------------------------------------------------------------------
# a remote that drops sessions


class DroppingSink(SinkHandler):
    """The sink, plus: ``drop_idle()`` closes every connection that carried a message (as a
    server's idle timeout does); ``on_rset``: ``"close"`` closes the connection at the RSET
    that starts a session's next transaction, ``"421"`` answers it with 421 (RFC 5321 §3.8);
    ``pipelining``: EHLO offers PIPELINING (aiosmtpd reads pipelined commands but does not
    say so), so the client sends RSET, MAIL and RCPT as one group (RFC 2920 §3.1)."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[Any] = []
        self.on_rset = ""
        self.rsets = 0
        self.pipelining = False
        self.pipelined_rsets = 0  # RSETs that arrived with the MAIL after them already read
        self.stall: asyncio.Event | None = None  # set: DATA hangs until the client goes away
        self.in_data: list[Any] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING"] + responses[-1:] if self.pipelining else responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.servers.append(server)
        if self.stall is not None:
            self.in_data.append(server)
            await asyncio.sleep(3600)  # cancelled by aiosmtpd when the connection is lost
        return await super().handle_DATA(server, session, envelope)

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.rsets += 1
        # the rest of the group is in the server's read buffer already (aiosmtpd has no public view of it)
        self.pipelined_rsets += b"MAIL FROM:" in bytes(getattr(server._reader, "_buffer", b""))
        if self.on_rset == "close":
            server.transport.close()
        if self.on_rset:
            return "421 4.4.2 sink closing connection"
        return "250 OK"

    def drop_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        done = threading.Event()

        def close_all() -> None:
            for s in self.servers:
                if s.transport is not None:
                    s.transport.close()
            done.set()

        loop.call_soon_threadsafe(close_all)
        assert done.wait(5)


@pytest.fixture
def dropping() -> Iterator[Remote]:
    r = Remote(REMOTE_IP, free_port(REMOTE_IP), DroppingSink())
    r.start()
    yield r
    r.stop()


def test_a_parked_session_the_server_dropped_is_replaced(tmp_path: Path, dns: TestDNS, dropping: Remote) -> None:
    cfg = make_config(tmp_path, dns, dropping.port)
    sink = dropping.handler
    assert isinstance(sink, DroppingSink)

    async def main() -> None:
        runner = await serving(cfg)
        try:
            await send_one_by_one(cfg, dropping, 1)
            sink.drop_idle(dropping.controller.loop)
            await asyncio.sleep(0.2)  # the FIN reaches the parked session
            await send_one_by_one(cfg, dropping, 2, first=1)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert subjects(dropping) == ["reuse 0", "reuse 1", "reuse 2"]  # none lost, none twice
    peers = [m.peer for m in dropping.messages]
    assert peers[0] != peers[1] and peers[1] == peers[2]  # a new connection, then reused again


def test_with_pipelining_rset_mail_and_rcpt_go_as_one_group(tmp_path: Path, dns: TestDNS, dropping: Remote) -> None:
    cfg = make_config(tmp_path, dns, dropping.port)
    sink = dropping.handler
    assert isinstance(sink, DroppingSink)
    sink.pipelining = True

    async def main() -> None:
        runner = await serving(cfg)
        try:
            await send_one_by_one(cfg, dropping, 4)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert subjects(dropping) == [f"reuse {i}" for i in range(4)]
    assert all(m.recipients == RCPTS for m in dropping.messages)
    assert len({m.peer for m in dropping.messages}) == 1
    assert sink.rsets == 3 and sink.pipelined_rsets == 3  # RFC 2920 §3.1: one group, one round trip


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.parametrize("how", ["close", "421"])
def test_a_session_dropped_when_reused_is_retried_on_a_fresh_one(tmp_path: Path, dns: TestDNS, dropping: Remote,
                                                                 how: str, pipelining: bool,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The drop shows only when the session is used again: the RSET fails, the message
    goes over a new connection in the same attempt (nothing deferred, nothing twice)."""
    cfg = make_config(tmp_path, dns, dropping.port, queue={"max_per_domain": 1})
    sink = dropping.handler
    assert isinstance(sink, DroppingSink)
    sink.on_rset = how
    sink.pipelining = pipelining
    caplog.set_level("INFO", logger="mailstack.maillog")
    store = QueueStore(cfg.queue.dir)

    async def main() -> None:
        runner = await serving(cfg)
        try:
            await send_one_by_one(cfg, dropping, 2)  # across rounds: a parked session
            for i in range(2, 6):  # in one round: a session used again at once
                await asyncio.to_thread(store.enqueue, "alice@example.test", RCPTS, message(i))
            await delivered(store, dropping, 6)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert subjects(dropping) == [f"reuse {i}" for i in range(6)]
    assert sink.rsets >= 1
    assert len({m.peer for m in dropping.messages}) == 6  # each session failed at its second use
    lines = maillog(caplog)
    assert not [x for x in lines if "event=deferred" in x]
    assert len([x for x in lines if "event=delivered" in x]) == 6


def test_stopping_mid_transaction_closes_the_connection(tmp_path: Path, dns: TestDNS, dropping: Remote) -> None:
    """A round cut short by the service's stop (its grace is over) leaves no socket open."""
    cfg = make_config(tmp_path, dns, dropping.port)
    sink = dropping.handler
    assert isinstance(sink, DroppingSink)
    sink.stall = asyncio.Event()

    async def main() -> None:
        runner = await serving(cfg)
        await asyncio.to_thread(QueueStore(cfg.queue.dir).enqueue, "alice@example.test", RCPTS, message(0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not sink.in_data:
            assert loop.time() < deadline, "the message never reached DATA"
            await asyncio.sleep(0.02)
        await runner.stop(0.2)

    asyncio.run(main())
    server = sink.in_data[0]
    deadline = time.monotonic() + 10
    while server.transport is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.transport is None  # the sink saw the connection go
    assert QueueStore(cfg.queue.dir).list() != []  # and the message is still queued


# ---------------------------------------------------------------------------
# TLS policy per session


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def policy_host(tmp_path: Path, ca: TestCA, dns: TestDNS) -> Iterator[PolicyServer]:
    server = PolicyServer(server_context(tmp_path, ca.issue("mta-sts.remote.test"), "sts"))
    dns.add("mta-sts.remote.test", "A", REMOTE_IP)
    yield server
    server.stop()


@pytest.mark.parametrize("policy", ["dane", "mta-sts"])
def test_a_policy_destination_never_reuses_a_session_made_without_it(
        tmp_path: Path, dns: TestDNS, remote: Remote, ca: TestCA, policy_host: PolicyServer, policy: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The same MX host, first with no policy (opportunistic TLS, the session is parked),
    then the domain publishes DANE TLSA records or an MTA-STS policy in enforce mode: the
    next message must not ride the parked session (made without that check) but a new one
    made under the policy, which is then reused in turn."""
    caplog.set_level("INFO", logger="mailstack.maillog")
    if policy == "dane":
        mx_cert = ca.issue("mx.remote.test", self_signed=True)  # DANE-EE: no CA needed
        restart_with_cert(remote, tmp_path, mx_cert)
        cfg = make_config(tmp_path, dns, remote.port, dns={"trusted_resolvers": [dns.address]})
    else:
        restart_with_cert(remote, tmp_path, ca.issue("mx.remote.test"))
        cfg = secure_config(tmp_path, dns, remote, ca, policy_host)
    tlsa = f"_{remote.port}._tcp.mx.remote.test"

    async def main() -> None:
        runner = await serving(cfg)
        try:
            await send_one_by_one(cfg, remote, 1)  # no policy yet: opportunistic TLS, session parked
            if policy == "dane":
                dns.add(tlsa, "TLSA", f"3 1 1 {hashlib.sha256(mx_cert.spki_der).hexdigest()}")
                dns.secure.add(tlsa)  # DNSSEC-validated: DANE applies (RFC 7672 §2.2)
            else:
                dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=reuse1")  # RFC 8461 §3.1
            await send_one_by_one(cfg, remote, 2, first=1)
        finally:
            await runner.stop(2.0)

    asyncio.run(main())
    assert all(m.tls for m in remote.messages)
    peers = [m.peer for m in remote.messages]
    assert peers[1] != peers[0]  # the parked opportunistic session was not used under the policy
    assert peers[2] == peers[1]  # the session made under the policy is reused for the next one
    tls = [x.split("tls=")[1].split()[0] for x in maillog(caplog) if "event=delivered" in x]
    assert tls == ["opportunistic", policy, policy]


def test_needs_8bit() -> None:
    from mailstack.smtp.outbound import _needs_8bit

    assert not _needs_8bit(b"Subject: plain\r\n\r\nascii only\r\n")
    assert _needs_8bit("Subject: caf\u00e9\r\n\r\n".encode())
    assert _needs_8bit(b"x" * 10000 + b"\x80")
