"""Fixtures for the one login path: MX, submission, IMAP and POP3 in one process, as
``mailstack serve`` runs them (one event loop, one shared ``Authenticator``), on free
loopback ports, plus raw asyncio clients that can bind to any 127.0.0.x source.

``login_stack(tmp_path, slow=..., **auth)``: users ``alice@example.test`` and
``bob@example.test`` (password ``secret``); ``slow=True`` hashes them with the
production argon2 parameters (~0.2 s per check, the cost that starved the MX), else
with cheap test parameters. ``auth`` overrides ``[auth]`` keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailstack import net
from mailstack.auth import Authenticator
from mailstack.config import Config, config_from_dict
from mailstack.directory import Directory, Passwords
from mailstack.serve import SERVICES
from mailstack.service import ServiceContext, limits_for
from tests.helpers import free_port, wait_listening

PASSWORD = "secret"
ALICE = "alice@example.test"
BOB = "bob@example.test"
SERVICES_UNDER_TEST = ("smtp", "submission", "imap", "pop3")


def make_config(tmp_path: Path, **auth: Any) -> Config:
    ports = iter(free_port() for _ in range(16))
    raw: dict[str, Any] = {
        "hostname": "mx.example.test",
        "database": {"url": f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}"},
        "storage": {"maildir_root": str(tmp_path / "mailboxes")},
        "tls": {"cert_file": str(tmp_path / "var/tls/cert.pem"), "key_file": str(tmp_path / "var/tls/key.pem")},
        "queue": {"dir": str(tmp_path / "var/queue"), "dkim_dir": str(tmp_path / "var/dkim")},
        "checks": {"enabled": False},
        "auth": {"allow_plaintext_on_loopback": True, **auth},
        "smtp": {"listen": [f"127.0.0.1:{next(ports)}"], "max_connections_per_ip": 1000},
        "submission": {"listen": [f"127.0.0.1:{next(ports)}"]},
        "imap": {"listen": [f"127.0.0.1:{next(ports)}"]},
        "pop3": {"listen": [f"127.0.0.1:{next(ports)}"]},
    }
    (tmp_path / "etc").mkdir(exist_ok=True)
    return config_from_dict(raw, tmp_path / "etc" / "mailstack.toml")


def make_directory(config: Config, slow: bool) -> Directory:
    d = Directory(config.database.url, passwords=Passwords() if slow else Passwords.fast())
    d.migrate()
    if d.get_domain("example.test") is None:
        d.add_domain("example.test")
        for user in (ALICE, BOB):
            d.add_user(user, PASSWORD)
    return d


@dataclass
class LoginStack:
    config: Config
    directory: Directory
    auth: Authenticator
    loop: asyncio.AbstractEventLoop

    def port(self, service: str) -> int:
        return self.config.listeners(service)[0][0].port


@contextlib.contextmanager
def login_stack(tmp_path: Path, *, slow: bool = False, **auth: Any) -> Iterator[LoginStack]:
    config = make_config(tmp_path, **auth)
    directory = make_directory(config, slow)
    net.ensure_certificate(config.tls, config.hostname)
    tls = net.load_tls_contexts(config.tls)
    shared = Authenticator.from_config(config, directory)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="auth-test-loop", daemon=True)
    thread.start()
    running: list[Any] = []

    async def start_all() -> None:
        for name in SERVICES_UNDER_TEST:
            module, func = SERVICES[name].split(":")
            start = getattr(importlib.import_module(module), func)
            ctx = ServiceContext(config=config, directory=directory, tls=tls, limits=limits_for(config, name),
                                 auth=shared)
            running.append(await start(ctx))

    async def stop_all() -> None:
        await asyncio.gather(*(s.stop(1.0) for s in running))

    try:
        asyncio.run_coroutine_threadsafe(start_all(), loop).result(15)
        yield LoginStack(config, directory, shared, loop)
    finally:
        asyncio.run_coroutine_threadsafe(stop_all(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shared.close()
        directory.close()


# ---------------------------------------------------------------------------
# ``mailstack serve`` as its own process


def serve_config(tmp_path: Path, services: dict[str, int], auth: dict[str, int] | None = None) -> Path:
    """A config under ``tmp_path/etc`` with the given services on loopback ports, and a
    SQLite directory holding alice and bob (cheap hashes). ``auth``: ``[auth]`` keys."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    conf = etc / "mailstack.toml"
    text = """hostname = "mx.example.test"
[database]
url = "sqlite:///../var/mailstack.db"
[storage]
maildir_root = "../mailboxes"
[tls]
cert_file = "../var/tls/cert.pem"
key_file = "../var/tls/key.pem"
[queue]
dir = "../var/queue"
[auth]
""" + "".join(f"{k} = {v}\n" for k, v in (auth or {}).items())
    text += "".join(f'[{name}]\nlisten = ["127.0.0.1:{port}"]\n' for name, port in services.items())
    conf.write_text(text)
    d = Directory(f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}", passwords=Passwords.fast())
    d.migrate()
    d.add_domain("example.test")
    for user in (ALICE, BOB):
        d.add_user(user, PASSWORD)
    d.close()
    return conf


def serve_process(conf: Path, services: dict[str, int], stderr: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """``mailstack --config CONF serve SERVICE...`` as its own process; returns once each of
    the services' ports accepts. The caller stops it (SIGTERM)."""
    env = {**os.environ, "MAILSTACK_STOP_GRACE": "1"}
    env.pop("JOURNAL_STREAM", None)  # log lines with their own time stamp, as in a log file
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(conf), "serve", *services],
                            env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    for port in services.values():
        wait_listening(port, proc)
    return proc


# ---------------------------------------------------------------------------
# raw clients (one reply line each), bound to a chosen loopback source address


async def _open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0), limit=1 << 20)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def imap_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def imap_login(port: int, source: str, user: str, password: str, *, go: asyncio.Event | None = None) -> bytes:
    """The tagged reply to ``a1 LOGIN``."""
    reader, writer = await _open(port, source)
    try:
        await reader.readline()  # greeting
        if go is not None:
            await go.wait()
        writer.write(f"a1 LOGIN {imap_quote(user)} {imap_quote(password)}\r\n".encode())
        while True:
            line = await reader.readline()
            if not line or line.startswith(b"a1 "):
                return line.rstrip()
    finally:
        await _close(writer)


async def pop3_login(port: int, source: str, user: str, password: str, *, go: asyncio.Event | None = None) -> bytes:
    """The reply to ``PASS``."""
    reader, writer = await _open(port, source)
    try:
        await reader.readline()
        if go is not None:
            await go.wait()
        writer.write(f"USER {user}\r\n".encode())
        await reader.readline()
        writer.write(f"PASS {password}\r\n".encode())
        return (await reader.readline()).rstrip()
    finally:
        await _close(writer)


async def smtp_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line.rstrip()


async def smtp_auth(port: int, source: str, user: str, password: str, *, go: asyncio.Event | None = None) -> bytes:
    """The reply to ``AUTH PLAIN <initial response>``."""
    reader, writer = await _open(port, source)
    try:
        await smtp_reply(reader)
        writer.write(b"EHLO client.test\r\n")
        await smtp_reply(reader)
        if go is not None:
            await go.wait()
        ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        writer.write(f"AUTH PLAIN {ir}\r\n".encode())
        return await smtp_reply(reader)
    finally:
        await _close(writer)


LOGIN = {"imap": imap_login, "pop3": pop3_login, "submission": smtp_auth}


def outcome(service: str, reply: bytes) -> str:
    """``ok``, ``failed`` or ``busy`` from a protocol's reply line (anything else: the line)."""
    if service == "imap":
        table = {b"a1 OK": "ok", b"a1 NO [AUTHENTICATIONFAILED]": "failed", b"a1 NO [UNAVAILABLE]": "busy"}
    elif service == "pop3":
        table = {b"+OK": "ok", b"-ERR [AUTH]": "failed", b"-ERR [SYS/TEMP]": "busy"}
    else:
        table = {b"235 2.7.0": "ok", b"535 5.7.8": "failed", b"454 4.7.0": "busy"}
    for prefix, name in table.items():
        if reply.startswith(prefix):
            return name
    return reply.decode("utf-8", "replace")
