"""IMAP fixtures: a real server (``mailstack.imap.server.start``) on free loopback ports.

``imap`` starts the service in an event loop on a background thread (imaplib, imapclient,
mbsync are blocking clients), with a temp Maildir root, a temp SQLite directory (cheap
argon2), a self-signed certificate, users ``alice@example.test`` / ``bob@example.test``
(password ``secret``, bob with a 1 MB quota); ``imap.deliver(user, data)`` puts mail in
through storage, as the MDA does. Everything is stopped and removed after the test.
"""

from __future__ import annotations

import asyncio
import imaplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailstack import net
from mailstack.config import Config, config_from_dict
from mailstack.directory import Directory, Passwords
from mailstack.imap.server import IMAPService, start
from mailstack.storage import Maildir
from tests.helpers import free_port, running_service

PASSWORD = "secret"
USERS = ("alice@example.test", "bob@example.test")


def message(subject: str = "Hello", body: str = "Hi there.\n", sender: str = "carol@example.org",
            to: str = "alice@example.test", extra: str = "") -> bytes:
    return (f"From: Carol <{sender}>\nTo: {to}\nSubject: {subject}\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n"
            f"Message-ID: <{abs(hash((subject, body)))}@example.org>\n{extra}\n{body}").encode()


@dataclass
class IMAPServer:
    config: Config
    directory: Directory
    loop: asyncio.AbstractEventLoop
    service: IMAPService
    port: int
    tls_port: int
    cert_file: Path
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def maildir(self, user: str = "alice@example.test") -> Maildir:
        local, _, domain = user.partition("@")
        md = Maildir.for_user(self.config.storage.maildir_root, domain, local)
        md.ensure()
        return md

    def deliver(self, user: str, data: bytes, folder: str | None = None) -> str:
        return self.maildir(user).deliver(data, folder)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert_file))
        ctx.check_hostname = False
        return ctx

    def client(self, user: str | None = "alice@example.test", password: str = PASSWORD) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        if user:
            c.login(user, password)
        return c

    def tls_client(self, user: str | None = "alice@example.test") -> imaplib.IMAP4_SSL:
        c = imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=self.client_context(), timeout=10)
        if user:
            c.login(user, PASSWORD)
        return c


def make_server(tmp_path: Path, **overrides: Any) -> Iterator[IMAPServer]:
    port, tls_port = free_port(), free_port()
    while tls_port == port:
        tls_port = free_port()
    raw: dict[str, Any] = {
        "hostname": "mx.example.test",
        "database": {"url": f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}"},
        "storage": {"maildir_root": str(tmp_path / "mailboxes")},
        "tls": {"cert_file": str(tmp_path / "tls" / "cert.pem"), "key_file": str(tmp_path / "tls" / "key.pem")},
        "auth": {"allow_plaintext_on_loopback": True},
        "imap": {"listen": [f"127.0.0.1:{port}"], "tls_listen": [f"127.0.0.1:{tls_port}"], "poll_interval": 0.2},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    config = config_from_dict(raw, tmp_path / "mailstack.toml")
    config.storage.maildir_root.mkdir(parents=True, exist_ok=True)
    directory = Directory(config.database.url, passwords=Passwords.fast())
    directory.migrate()
    if directory.get_domain("example.test") is None:  # a restart on the same store keeps them
        directory.add_domain("example.test")
        directory.add_user(USERS[0], PASSWORD)
        directory.add_user(USERS[1], PASSWORD, quota_bytes=1024 * 1024)

    try:
        with running_service(start, config, directory, net.ConnectionLimits(200, 100)) as (loop, service):
            yield IMAPServer(config, directory, loop, service, port, tls_port, config.tls.cert_file, tmp_path)
    finally:
        directory.close()


@pytest.fixture
def imap(tmp_path: Path) -> Iterator[IMAPServer]:
    yield from make_server(tmp_path)
