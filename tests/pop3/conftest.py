"""POP3 fixtures: a real server (``mailstack.pop3.server.start``) on free loopback ports.

``pop3`` starts the service in an event loop on a background thread (poplib, fetchmail
and getmail are blocking clients), with a temp Maildir root, a temp SQLite directory
(cheap argon2), a self-signed certificate, users ``alice@example.test`` /
``bob@example.test`` (password ``secret``); ``pop3.deliver(user, data)`` puts mail in
through storage. Everything is stopped and removed after the test.
"""

from __future__ import annotations

import asyncio
import poplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailstack import net
from mailstack.config import Config, config_from_dict
from mailstack.directory import Directory, Passwords
from mailstack.pop3.server import POP3Service, start
from mailstack.storage import Maildir
from tests.helpers import free_port, running_service

PASSWORD = "secret"
USERS = ("alice@example.test", "bob@example.test")


@dataclass
class POP3Server:
    config: Config
    directory: Directory
    loop: asyncio.AbstractEventLoop
    service: POP3Service
    port: int
    tls_port: int
    cert_file: Path
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def maildir(self, user: str) -> Maildir:
        local, _, domain = user.partition("@")
        md = Maildir.for_user(self.config.storage.maildir_root, domain, local)
        md.ensure()
        return md

    def deliver(self, user: str, data: bytes) -> str:
        return self.maildir(user).deliver(data)

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, user: str | None = None, password: str = PASSWORD) -> poplib.POP3:
        c = poplib.POP3("127.0.0.1", self.port, timeout=10)
        if user:
            c.user(user)
            c.pass_(password)
        return c

    def tls_client(self, user: str | None = None) -> poplib.POP3_SSL:
        c = poplib.POP3_SSL("127.0.0.1", self.tls_port, timeout=10, context=self.client_context())
        if user:
            c.user(user)
            c.pass_(PASSWORD)
        return c

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert_file))
        ctx.check_hostname = False  # the self-signed cert names mx.example.test and 127.0.0.1
        return ctx


def make_server(tmp_path: Path, **overrides: Any) -> Iterator[POP3Server]:
    port, tls_port = free_port(), free_port()
    raw: dict[str, Any] = {
        "hostname": "mx.example.test",
        "database": {"url": f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}"},
        "storage": {"maildir_root": str(tmp_path / "mailboxes")},
        "tls": {"cert_file": str(tmp_path / "tls" / "cert.pem"), "key_file": str(tmp_path / "tls" / "key.pem")},
        "auth": {"allow_plaintext_on_loopback": True},
        "pop3": {"listen": [f"127.0.0.1:{port}"], "tls_listen": [f"127.0.0.1:{tls_port}"]},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    config = config_from_dict(raw, tmp_path / "mailstack.toml")
    config.storage.maildir_root.mkdir(parents=True, exist_ok=True)
    directory = Directory(config.database.url, passwords=Passwords.fast())
    directory.migrate()
    directory.add_domain("example.test")
    for u in USERS:
        directory.add_user(u, PASSWORD)

    try:
        with running_service(start, config, directory, net.ConnectionLimits(100, 50)) as (loop, service):
            yield POP3Server(config, directory, loop, service, port, tls_port, config.tls.cert_file, tmp_path)
    finally:
        directory.close()


@pytest.fixture
def pop3(tmp_path: Path) -> Iterator[POP3Server]:
    yield from make_server(tmp_path)
