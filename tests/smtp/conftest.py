"""SMTP/LMTP fixtures: the real MX and LMTP services on free loopback ports.

``mx`` starts ``mailstack.smtp.mx:start`` and ``mailstack.smtp.lmtp:start`` (LMTP on a
unix socket and a TCP port) in an event loop on a background thread (smtplib, swaks
and Postfix are blocking/external clients), with a temp Maildir root, queue dir, SQLite
directory and self-signed certificate. Domain ``example.test``; users ``alice``, ``bob``,
``carol`` (disabled), ``tiny`` (quota 2000 bytes); aliases ``team`` -> alice, bob;
``fwd`` -> alice and ``someone@remote.example``; ``loop1`` <-> ``loop2``; catch-all
``@catchall.test`` -> bob. ``mx.restart()`` stops and starts the services on the
same ports and store.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailstack import net
from mailstack.config import Config, config_from_dict
from mailstack.directory import Directory, Passwords
from mailstack.queue import QueueStore
from mailstack.service import ServiceContext, limits_for
from mailstack.smtp import lmtp, mx
from mailstack.storage import Maildir
from tests.helpers import free_port

DOMAIN = "example.test"


@dataclass
class MXServer:
    config: Config
    directory: Directory
    port: int
    lmtp_port: int
    lmtp_socket: Path
    tmp: Path
    tls: net.TLSContexts
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None
    services: list[Any] = field(default_factory=list)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self.loop.run_forever, name="smtp-test-loop", daemon=True)
            self.thread.start()
        for name, start in (("smtp", mx.start), ("lmtp", lmtp.start)):
            if not self.config.listeners(name):
                continue
            ctx = ServiceContext(config=self.config, directory=self.directory, tls=self.tls,
                                 limits=limits_for(self.config, name))
            self.services.append(self.call(start(ctx)))

    def stop(self) -> None:
        for s in self.services:
            self.call(s.stop(2.0), timeout=20)
        self.services = []

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self.call(asyncio.sleep(0.3))  # let the last connection_lost callbacks run
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)
        self.loop.close()
        self.directory.close()

    def call(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- helpers ----------------------------------------------------------------------

    def client(self, **kw: Any) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example.org", timeout=15, **kw)
        return c

    def lmtp_client(self) -> smtplib.LMTP:
        c = smtplib.LMTP(str(self.lmtp_socket), local_hostname="client.example.org", timeout=15)
        return c

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.config.tls.cert_file))
        ctx.check_hostname = False
        return ctx

    def maildir(self, user: str, domain: str = DOMAIN) -> Maildir:
        return Maildir.for_user(self.config.storage.maildir_root, domain, user)

    def messages(self, user: str, folder: str | None = None, domain: str = DOMAIN) -> list[bytes]:
        root = self.maildir(user, domain).root
        if folder:
            root = root / f".{folder}"
        out = []
        for sub in ("new", "cur"):
            d = root / sub
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    out.append(p.read_bytes())
        return out

    @property
    def queue(self) -> QueueStore:
        return QueueStore(self.config.queue.dir)


def make_config(tmp_path: Path, **overrides: Any) -> tuple[Config, int, int, Path]:
    port, lmtp_port = free_port(), free_port()
    sock = tmp_path / "var" / "lmtp.sock"
    raw: dict[str, Any] = {
        "hostname": "mx.example.test",
        "database": {"url": f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}"},
        "storage": {"maildir_root": str(tmp_path / "mailboxes")},
        "queue": {"dir": str(tmp_path / "var" / "queue")},
        "tls": {"cert_file": str(tmp_path / "tls" / "cert.pem"), "key_file": str(tmp_path / "tls" / "key.pem")},
        "smtp": {"listen": [f"127.0.0.1:{port}"], "max_message_size": 100_000},
        "lmtp": {"listen": [f"unix:{sock}", f"127.0.0.1:{lmtp_port}"]},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    config = config_from_dict(raw, tmp_path / "mailstack.toml")
    return config, port, lmtp_port, sock


def populate(directory: Directory) -> None:
    directory.add_domain(DOMAIN)
    directory.add_domain("catchall.test")
    for u in ("alice", "bob", "carol"):
        directory.add_user(f"{u}@{DOMAIN}", "secret")
    directory.add_user(f"tiny@{DOMAIN}", "secret", quota_bytes=2000)
    directory.set_enabled(f"carol@{DOMAIN}", False)
    directory.add_user("bob@catchall.test", "secret")
    directory.add_alias(f"team@{DOMAIN}", [f"alice@{DOMAIN}", f"bob@{DOMAIN}"])
    directory.add_alias(f"fwd@{DOMAIN}", [f"alice@{DOMAIN}", "someone@remote.example"])
    directory.add_alias(f"loop1@{DOMAIN}", [f"loop2@{DOMAIN}"])
    directory.add_alias(f"loop2@{DOMAIN}", [f"loop1@{DOMAIN}"])
    directory.add_alias("@catchall.test", ["bob@catchall.test"])


def make_server(tmp_path: Path, **overrides: Any) -> MXServer:
    config, port, lmtp_port, sock = make_config(tmp_path, **overrides)
    for p in (config.storage.maildir_root, config.queue.dir, sock.parent):
        p.mkdir(parents=True, exist_ok=True)
    net.ensure_certificate(config.tls, config.hostname)
    tls = net.load_tls_contexts(config.tls)
    directory = Directory(config.database.url, passwords=Passwords.fast())
    directory.migrate()
    populate(directory)
    server = MXServer(config, directory, port, lmtp_port, sock, tmp_path, tls)
    server.start()
    return server


@pytest.fixture
def mx_server(tmp_path: Path) -> Iterator[MXServer]:
    server = make_server(tmp_path)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def mx_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[MXServer] = []

    def factory(**overrides: Any) -> MXServer:
        s = make_server(tmp_path, **overrides)
        made.append(s)
        return s

    try:
        yield factory
    finally:
        for s in made:
            s.close()
