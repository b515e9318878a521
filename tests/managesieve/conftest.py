"""ManageSieve fixtures: a real server (``mailstack.managesieve.server.start``) on a free
loopback port, with a temp Maildir root, a temp SQLite directory (cheap argon2), a
self-signed certificate and users ``alice@example.test`` / ``bob@example.test`` (password
``secret``). ``Raw`` is a byte-level client for transcripts: it sends exactly what it is
given and reads one whole response (data lines, literals, the OK/NO/BYE line).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailstack import net
from mailstack.config import Config, config_from_dict
from mailstack.directory import Directory, Passwords
from mailstack.managesieve.server import ManageSieveService, start
from mailstack.sieve.store import ScriptStore
from mailstack.storage import Maildir
from tests.helpers import free_port, running_service

PASSWORD = "secret"
USERS = ("alice@example.test", "bob@example.test")
_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_STATUS = re.compile(rb"^(OK|NO|BYE)\b")


@dataclass
class SieveServer:
    config: Config
    directory: Directory
    loop: asyncio.AbstractEventLoop
    service: ManageSieveService
    port: int
    tmp: Path
    clients: list[Raw] = field(default_factory=list)

    def store(self, user: str) -> ScriptStore:
        local, _, domain = user.partition("@")
        return ScriptStore(Maildir.for_user(self.config.storage.maildir_root, domain, local).root)

    def home(self, user: str) -> Path:
        return self.store(user).home

    def raw(self) -> Raw:
        client = Raw(socket.create_connection(("127.0.0.1", self.port), timeout=10))
        self.clients.append(client)
        return client

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.config.tls.cert_file))
        ctx.check_hostname = False
        return ctx


class Raw:
    """A byte-level ManageSieve client."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed inside a literal")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self) -> bytes:
        """Everything up to and including the OK/NO/BYE line (literals inlined)."""
        out = []
        while True:
            line = self._line()
            m = _LITERAL.search(line)
            if m:
                line += b"\r\n" + self._exactly(int(m.group(1)))
                line += self._line()
            out.append(line)
            if _STATUS.match(line):
                return b"\r\n".join(out) + b"\r\n"

    def cmd(self, data: bytes) -> bytes:
        self.send(data + b"\r\n")
        return self.response()

    def greeting(self) -> bytes:
        return self.response()

    def starttls(self, ctx: ssl.SSLContext) -> bytes:
        assert self.cmd(b"STARTTLS").startswith(b"OK")
        self.sock = ctx.wrap_socket(self.sock)
        return self.response()  # RFC 5804 §2.2: the capabilities again, unasked

    def login(self, user: str = USERS[0], password: str = PASSWORD) -> bytes:
        import base64
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        return self.cmd(b'AUTHENTICATE "PLAIN" "' + token + b'"')

    def closed(self) -> bool:
        """True when the server has closed the connection (after reading what is left)."""
        self.sock.settimeout(5)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def make_server(tmp_path: Path, **overrides: Any) -> Iterator[SieveServer]:
    port = free_port()
    raw: dict[str, Any] = {
        "hostname": "mx.example.test",
        "database": {"url": f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}"},
        "storage": {"maildir_root": str(tmp_path / "mailboxes")},
        "tls": {"cert_file": str(tmp_path / "tls" / "cert.pem"), "key_file": str(tmp_path / "tls" / "key.pem")},
        "auth": {"allow_plaintext_on_loopback": True},
        "sieve": {"managesieve_listen": [f"127.0.0.1:{port}"]},
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
            server = SieveServer(config, directory, loop, service, port, tmp_path)
            try:
                yield server
            finally:
                for c in server.clients:
                    c.close()
    finally:
        directory.close()


@pytest.fixture
def sieve(tmp_path: Path) -> Iterator[SieveServer]:
    yield from make_server(tmp_path)


@pytest.fixture
def sieve_tls_only(tmp_path: Path) -> Iterator[SieveServer]:
    """Plaintext logins refused on loopback too: what a client elsewhere sees."""
    yield from make_server(tmp_path, auth={"allow_plaintext_on_loopback": False})
