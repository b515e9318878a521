"""Fixtures for outbound mail: a loopback DNS, a "remote" MX on 127.0.0.23, a config.

- ``dns``: ``tests.dnsserver.TestDNS`` on 127.0.0.1 (UDP+TCP), cleared per test;
- ``remote``: an aiosmtpd sink on 127.0.0.23 (a free port) that records every message
  and can be told to refuse recipients (``remote.refuse[rcpt] = "550 5.1.1 ..."``) or
  to be down (``remote.stop()``);
- ``cfg``: a Config in ``tmp_path`` whose ``[dns]`` points at ``dns`` and whose
  ``[queue] smtp_port`` is the sink's port; ``remote.test`` has an MX to 127.0.0.23;
- ``directory``: a migrated SQLite directory with ``example.test`` and user
  ``alice@example.test``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailstack.config import Config, config_from_dict
from tests.dnsserver import TestDNS
from tests.helpers import free_port

REMOTE_IP = "127.0.0.23"


@pytest.fixture(scope="session")
def _dns_server() -> Iterator[TestDNS]:
    with TestDNS() as d:
        yield d


@pytest.fixture
def dns(_dns_server: TestDNS) -> Iterator[TestDNS]:
    _dns_server.clear()
    _dns_server.add("remote.test", "MX", "10 mx.remote.test")
    _dns_server.add("mx.remote.test", "A", REMOTE_IP)
    yield _dns_server
    _dns_server.clear()


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    peer: Any = None  # the client's (address, port): one per connection


class SinkHandler:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.refuse: dict[str, str] = {}
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content
                                          or envelope.content, session.ssl is not None, session.peer))
        self.event.set()
        return "250 2.0.0 OK queued"


@dataclass
class Remote:
    host: str
    port: int
    handler: SinkHandler = field(default_factory=SinkHandler)
    controller: Any = None

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def refuse(self) -> dict[str, str]:
        return self.handler.refuse

    def start(self, tls_context: Any = None) -> None:
        from aiosmtpd.controller import Controller

        kw: dict[str, Any] = {}
        if tls_context is not None:
            kw["tls_context"] = tls_context
        self.controller = Controller(self.handler, hostname=self.host, port=self.port, ready_timeout=5,
                                     server_hostname="mx.remote.test", ident="sink", **kw)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def remote() -> Iterator[Remote]:
    r = Remote(REMOTE_IP, free_port(REMOTE_IP))
    r.start()
    yield r
    r.stop()


def make_config(tmp_path: Path, dns: TestDNS, port: int, /, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "hostname": "mx.example.test",
        "database": {"url": f"sqlite:///{tmp_path}/var/mailstack.db"},
        "storage": {"maildir_root": str(tmp_path / "mailboxes")},
        "tls": {"cert_file": str(tmp_path / "var/tls/cert.pem"), "key_file": str(tmp_path / "var/tls/key.pem")},
        "queue": {"dir": str(tmp_path / "var/queue"), "dkim_dir": str(tmp_path / "var/dkim"),
                  "smtp_port": port, "connect_timeout": 3, "command_timeout": 10, "scan_interval": 0.2},
        "dns": {"nameservers": [dns.address], "timeout": 3},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    (tmp_path / "etc").mkdir(exist_ok=True)
    return config_from_dict(data, tmp_path / "etc" / "mailstack.toml")


@pytest.fixture
def cfg(tmp_path: Path, dns: TestDNS, remote: Remote) -> Config:
    return make_config(tmp_path, dns, remote.port)


@pytest.fixture
def directory(cfg: Config) -> Iterator[Any]:
    from mailstack.directory import Directory

    d = Directory(cfg.database.url)
    d.migrate()
    d.add_domain("example.test")
    d.add_user("alice@example.test", "correct horse battery staple")
    d.add_user("bob@example.test", "bob password 123")
    d.add_alias("sales@example.test", ["alice@example.test"])
    yield d
    d.close()


class Stack:
    """Services started in an asyncio loop on a background thread (so tests can use smtplib)."""

    def __init__(self, cfg: Config, directory: Any, services: tuple[str, ...]) -> None:
        import asyncio

        from mailstack import net
        from mailstack.service import ServiceContext, limits_for

        self.cfg = cfg
        net.ensure_certificate(cfg.tls, cfg.hostname)
        self.tls = net.load_tls_contexts(cfg.tls)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: list[Any] = []

        async def start_all() -> None:
            import importlib

            from mailstack.serve import SERVICES

            for name in services:
                mod, fn = SERVICES[name].split(":")
                start = getattr(importlib.import_module(mod), fn)
                ctx = ServiceContext(config=cfg, directory=directory, tls=self.tls, limits=limits_for(cfg, name))
                self.running.append(await start(ctx))

        asyncio.run_coroutine_threadsafe(start_all(), self.loop).result(15)

    def stop(self) -> None:
        import asyncio

        async def stop_all() -> None:
            for s in self.running:
                await s.stop(2.0)

        asyncio.run_coroutine_threadsafe(stop_all(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def submission_config(tmp_path: Path, dns: TestDNS, remote_port: int, **sections: dict[str, Any]) -> Config:
    sub = {"listen": [f"127.0.0.1:{free_port()}"], "tls_listen": [f"127.0.0.1:{free_port()}"]}
    sub.update(sections.pop("submission", {}))
    return make_config(tmp_path, dns, remote_port, submission=sub, **sections)


@pytest.fixture
def stack(tmp_path: Path, dns: TestDNS, remote: Remote, directory: Any, cfg: Config) -> Iterator[Stack]:
    scfg = submission_config(tmp_path, dns, remote.port)
    s = Stack(scfg, directory, ("submission", "queue"))
    yield s
    s.stop()
