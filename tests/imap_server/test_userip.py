"""Connection caps of the IMAP service (imap/userip.py), as Dovecot: per user and address
once logged in (mail_max_userip_connections), per address before login; an office behind
one address with many users is not locked out by a per-address cap on everything."""

from __future__ import annotations

import imaplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USERS, IMAPServer, make_server


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[IMAPServer]:
    yield from make_server(tmp_path, imap={"max_userip_connections": 2, "max_unauthenticated_per_ip": 3})


def test_sessions_per_user_and_address(capped: IMAPServer) -> None:
    alice, bob = USERS[0], USERS[1]
    first, second = capped.client(alice), capped.client(alice)
    third = capped.client(None)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\] Maximum number of connections from user\+IP"):
        third.login(alice, PASSWORD)
    assert third.state == "NONAUTH"  # still connected, not logged in
    others = [capped.client(bob), capped.client(bob)]  # another user behind the same address: fine
    first.logout()
    third.login(alice, PASSWORD)  # a session of alice ended: room again
    for c in (second, third, *others):
        c.logout()


def test_logged_in_sessions_do_not_count_against_the_address(capped: IMAPServer) -> None:
    """Three connections may wait for their login; logged-in ones make room for more."""
    logged = [capped.client(USERS[0]), capped.client(USERS[0]), capped.client(USERS[1]), capped.client(USERS[1])]
    waiting = [socket.create_connection(("127.0.0.1", capped.port), timeout=10) for _ in range(3)]
    for w in waiting:
        assert w.recv(4096).startswith(b"* OK")
    extra = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
    assert extra.recv(4096).startswith(b"* BYE [UNAVAILABLE] Too many connections from your address")
    extra.close()
    waiting.pop().close()
    deadline = time.monotonic() + 10
    while True:  # one waiting connection ended: once the server has seen it go, a new one is let in
        again = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
        greeting = again.recv(4096)
        again.close()
        if greeting.startswith(b"* OK") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert greeting.startswith(b"* OK"), greeting
    for w in waiting:
        w.close()
    for c in logged:
        c.logout()
