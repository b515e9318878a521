"""The real ``http`` service on free loopback ports (plain and TLS), in a background loop.

Config: hostname ``mx.example.test``; local domain ``example.test`` (user alice);
IMAP 143-style STARTTLS + implicit TLS listeners, POP3 likewise, submission 587/465
style, all on loopback ports; MTA-STS mode ``enforce`` with two MX names.
``http.get(path, host=...)`` / ``http.post(...)`` are blocking ``http.client`` calls;
``http.raw(bytes)`` sends raw bytes and returns what came back until the server closes.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailstack import net
from mailstack.config import Config, config_from_dict
from mailstack.directory import Directory, Passwords
from mailstack.service import ServiceContext, limits_for


@dataclass
class HTTPServer:
    config: Config
    port: int
    tls_port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    service: Any
    directory: Directory

    def request(self, method: str, path: str, body: bytes | None = None, host: str | None = None,
                tls: bool = False, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if tls:
            ctx = ssl.create_default_context(cafile=str(self.config.tls.cert_file))
            ctx.check_hostname = False
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=10,
                                                                           context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            h = dict(headers or {})
            if host:
                h["Host"] = host
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: bytes, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, body=body, headers={"Content-Type": "text/xml"}, **kw)

    def raw(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)  # no half-close: aiohttp drops a connection at EOF; errors close it anyway
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk


def distinct_ports(n: int) -> list[int]:
    """n different free ports (each socket stays bound until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def make_config(tmp_path: Path, **http: Any) -> tuple[Config, int, int]:
    port, tls_port, *rest = distinct_ports(8)
    ports = dict(zip(("imap", "imaps", "pop3", "pop3s", "sub", "subs"), rest))
    raw: dict[str, Any] = {
        "hostname": "mx.example.test",
        "database": {"url": f"sqlite:///{tmp_path / 'mailstack.db'}"},
        "storage": {"maildir_root": str(tmp_path / "mailboxes")},
        "queue": {"dir": str(tmp_path / "queue")},
        "tls": {"cert_file": str(tmp_path / "tls" / "cert.pem"), "key_file": str(tmp_path / "tls" / "key.pem")},
        "imap": {"listen": [f"127.0.0.1:{ports['imap']}"], "tls_listen": [f"127.0.0.1:{ports['imaps']}"]},
        "pop3": {"listen": [f"127.0.0.1:{ports['pop3']}"], "tls_listen": [f"127.0.0.1:{ports['pop3s']}"]},
        "submission": {"listen": [f"127.0.0.1:{ports['sub']}"], "tls_listen": [f"127.0.0.1:{ports['subs']}"]},
        "http": {"listen": [f"127.0.0.1:{port}"], "tls_listen": [f"127.0.0.1:{tls_port}"],
                 "mta_sts_mode": "enforce", "mta_sts_mx": ["mx.example.test", "*.backup.example.test"],
                 "max_request_size": 4096, **http},
    }
    return config_from_dict(raw, tmp_path / "mailstack.toml"), port, tls_port


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HTTPServer]:
    yield from _serve(tmp_path, None)


@pytest.fixture
def http_limited(tmp_path: Path) -> Iterator[HTTPServer]:
    """At most one connection per client IP."""
    yield from _serve(tmp_path, net.ConnectionLimits(10, 1))


def _serve(tmp_path: Path, limits: net.ConnectionLimits | None) -> Iterator[HTTPServer]:
    from mailstack.http import server as http_mod

    config, port, tls_port = make_config(tmp_path)
    net.ensure_certificate(config.tls, config.hostname)
    tls = net.load_tls_contexts(config.tls)
    directory = Directory(config.database.url, passwords=Passwords.fast())
    directory.migrate()
    directory.add_domain("example.test")
    directory.add_user("alice@example.test", "secret")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="http-test-loop", daemon=True)
    thread.start()
    ctx = ServiceContext(config=config, directory=directory, tls=tls, limits=limits or limits_for(config, "http"))
    service = asyncio.run_coroutine_threadsafe(http_mod.start(ctx), loop).result(10)
    server = HTTPServer(config, port, tls_port, loop, thread, service, directory)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(service.stop(2.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        directory.close()
