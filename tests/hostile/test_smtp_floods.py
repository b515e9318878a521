"""Floods against the real MX on loopback: while each runs, other clients are still served.

- NOOP tricklers from several addresses take every connection slot, one byte at a
  time, and reconnect when dropped: a newcomer still gets in (the session with the
  least progress makes room) and delivers;
- address harvesters pipeline thousands of RCPT TO for unknown users: each is slowed
  and cut at the hard error limit, and a normal sender is not slowed meanwhile;
- one address opens a hundred connections: only its per-IP share is let in, others
  are served.

Clients come from distinct 127.0.0.0/8 source addresses, as on the Internet they
would from distinct hosts. Timing bounds are generous ("did not hang").
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from typing import Any


from tests.smtp.conftest import MXServer, mx_factory  # noqa: F401 (the MX fixture, shared)

MSG = b"From: a@example.org\r\nSubject: flood test\r\n\r\nhello\r\n"


def connect(port: int, source_ip: str, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source_ip, 0))


def deliver(port: int, source_ip: str, n: int = 1) -> float:
    """Deliver ``n`` messages from ``source_ip``; returns the seconds it took."""
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="legit.example.org", timeout=20,
                      source_address=(source_ip, 0)) as c:
        for _ in range(n):
            assert c.sendmail("s@example.org", ["alice@example.test"], MSG) == {}
    return time.monotonic() - t0


class Trickler(threading.Thread):
    """Holds one connection slot: sends "NOOP\\r\\n" one byte at a time, reconnects when dropped."""

    def __init__(self, port: int, source_ip: str, stop: threading.Event, pause: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.port, self.source_ip, self.stop_event, self.pause = port, source_ip, stop, pause
        self.connects = 0
        self.dropped = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                s = connect(self.port, self.source_ip, timeout=2)
            except OSError:
                time.sleep(0.1)
                continue
            self.connects += 1
            try:
                s.settimeout(self.pause)
                while not self.stop_event.is_set():
                    for ch in b"NOOP\r\n":
                        s.sendall(bytes([ch]))
                        try:
                            if s.recv(4096) == b"":
                                raise ConnectionResetError
                        except socket.timeout:
                            pass
            except OSError:
                self.dropped += 1
            finally:
                s.close()


def test_noop_tricklers_cannot_hold_the_mx(mx_factory: Any) -> None:
    mx = mx_factory(smtp={"max_connections": 20, "max_connections_per_ip": 5})
    stop = threading.Event()
    tricklers = [Trickler(mx.port, f"127.0.1.{i}", stop) for i in range(1, 5) for _ in range(5)]
    try:
        for t in tricklers:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(t.connects for t in tricklers) < 20:
            time.sleep(0.05)
        time.sleep(1.5)  # every slot taken, trickling, and idle for longer than EVICT_AFTER
        for i in range(5):
            took = deliver(mx.port, f"127.0.2.{i + 1}")
            assert took < 10, f"a newcomer waited {took:.1f}s"
        assert len(mx.messages("alice")) == 5
    finally:
        stop.set()
        for t in tricklers:
            t.join(5)
    assert sum(t.dropped for t in tricklers) >= 5  # made room for each newcomer


class Harvester(threading.Thread):
    def __init__(self, port: int, source_ip: str) -> None:
        super().__init__(daemon=True)
        self.port, self.source_ip = port, source_ip
        self.replies: list[bytes] = []

    def run(self) -> None:
        s = connect(self.port, self.source_ip, timeout=60)
        try:
            s.sendall(b"EHLO harvest.example.org\r\nMAIL FROM:<h@example.org>\r\n"
                      + b"".join(b"RCPT TO:<guess%d@example.test>\r\n" % i for i in range(5000)))
            buf = b""
            while True:
                data = s.recv(65536)
                if not data:
                    break
                buf += data
            self.replies = [ln for ln in buf.split(b"\r\n") if ln]
        except OSError:
            pass
        finally:
            s.close()


def test_recipient_harvesting_flood_is_cut_and_slows_nobody_else(mx_factory: Any) -> None:
    mx = mx_factory(smtp={"error_sleep": 0.2})
    harvesters = [Harvester(mx.port, f"127.0.3.{i}") for i in range(1, 9)]
    for h in harvesters:
        h.start()
    time.sleep(0.5)  # they are in the tarpit now
    took = deliver(mx.port, "127.0.4.1", n=5)
    assert took < 10, f"a normal sender took {took:.1f}s for 5 messages during the flood"
    for h in harvesters:
        h.join(60)
        assert not h.is_alive()
        unknown = [ln for ln in h.replies if ln.startswith(b"550 5.1.1")]
        assert len(unknown) == 20  # smtpd_hard_error_limit, not 5000
        assert h.replies[-1].startswith(b"421 4.7.0")
    assert len(mx.messages("alice")) == 5


def test_connection_flood_from_one_address(mx_factory: Any) -> None:
    mx = mx_factory(smtp={"max_connections": 50})  # max_connections_per_ip: the default, 10
    socks = []
    try:
        for _ in range(100):
            socks.append(connect(mx.port, "127.0.5.1"))
        banners = [s.recv(1024)[:3] for s in socks]
        assert banners.count(b"220") == 10 and banners.count(b"421") == 90
        assert deliver(mx.port, "127.0.5.2") < 10
    finally:
        for s in socks:
            s.close()
    assert len(mx.messages("alice")) == 1
