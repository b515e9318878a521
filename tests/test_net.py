"""mailstack.net: certificates, TLS contexts, TCP and unix listeners, peers, limits."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mailstack import net
from mailstack.config import ListenAddress, TLSConfig
from tests.helpers import free_port, require_ipv6_loopback


def tls_config(tmp_path: Path) -> TLSConfig:
    return TLSConfig(cert_file=tmp_path / "tls" / "cert.pem", key_file=tmp_path / "tls" / "key.pem")


# ---------------------------------------------------------------------------
# ensure_certificate


def test_ensure_certificate_makes_a_pair_when_both_are_absent(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    assert net.ensure_certificate(tls, "mx.example.test") is True
    assert stat.S_IMODE(tls.key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test", "localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
    # no temp files left behind, and the pair loads
    assert sorted(p.name for p in tls.cert_file.parent.iterdir()) == ["cert.pem", "key.pem"]
    net.server_context(tls.cert_file, tls.key_file)


def test_ensure_certificate_leaves_an_existing_pair_alone(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, "mx.example.test")
    before = (tls.cert_file.read_bytes(), tls.key_file.read_bytes())
    assert net.ensure_certificate(tls, "other.example.test") is False
    assert (tls.cert_file.read_bytes(), tls.key_file.read_bytes()) == before


@pytest.mark.parametrize("missing", ["cert_file", "key_file"])
def test_half_a_pair_is_an_error_naming_the_missing_file(tmp_path: Path, missing: str) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, "mx.example.test")
    gone: Path = getattr(tls, missing)
    kept = tls.key_file if missing == "cert_file" else tls.cert_file
    kept_bytes = kept.read_bytes()
    gone.unlink()
    with pytest.raises(net.TLSError) as e:
        net.ensure_certificate(tls, "mx.example.test")
    assert str(e.value).startswith(f"[tls] {missing}: {gone} does not exist")
    assert "\n" not in str(e.value)
    assert not gone.exists() and kept.read_bytes() == kept_bytes


def test_localhost_hostname_is_not_repeated_in_the_san(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, "localhost")
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_unusable_certificate_is_one_line(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    tls.cert_file.parent.mkdir()
    tls.cert_file.write_text("not a certificate\n")
    tls.key_file.write_text("not a key\n")
    with pytest.raises(net.TLSError) as e:
        net.load_tls_contexts(tls)
    assert str(e.value).startswith(f"[tls] cannot load {tls.cert_file}")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------
# TLS contexts


def test_server_context_is_tls12_or_newer(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, "mx.example.test")
    ctxs = net.load_tls_contexts(tls)
    assert ctxs.server.minimum_version == ssl.TLSVersion.TLSv1_2
    names = {c["name"] for c in ctxs.server.get_ciphers()}
    assert not any("CBC" in n or "RC4" in n or "3DES" in n or n.startswith("AES") for n in names)
    assert ctxs.client.verify_mode == ssl.CERT_NONE and not ctxs.client.check_hostname


def _handshake(port: int, client: ssl.SSLContext, server_name: str = "localhost") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client.wrap_socket(raw, server_hostname=server_name) as s:
            s.sendall(b"ping\n")
            data = s.recv(100)
            assert data == b"ping\n"
            return str(s.version())


class Echo(asyncio.Protocol):
    open_transports: set[asyncio.Transport] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        assert isinstance(transport, asyncio.Transport)
        Echo.open_transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        Echo.open_transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def shut(*servers: asyncio.Server) -> None:
    """Close listeners and the connections they accepted (3.11's Server.close() leaves those)."""
    for s in servers:
        s.close()
    for t in list(Echo.open_transports):
        t.abort()
    for s in servers:
        await s.wait_closed()
    await asyncio.sleep(0.01)  # let connection_lost run


def test_implicit_tls_listener_handshakes_and_refuses_tls11(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    net.ensure_certificate(tls, "mx.example.test")
    ctxs = net.load_tls_contexts(tls)
    port = free_port()

    async def main() -> None:
        server = await net.start_listener(ListenAddress("tcp", "127.0.0.1", port), Echo, ssl=ctxs.server)
        try:
            verifying = ssl.create_default_context(cafile=str(tls.cert_file))
            version = await asyncio.to_thread(_handshake, port, verifying, "mx.example.test")
            assert version in ("TLSv1.2", "TLSv1.3")
            assert await asyncio.to_thread(_handshake, port, net.client_context()) in ("TLSv1.2", "TLSv1.3")
            old = net.client_context()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, on purpose
                old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers TLS 1.1
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.to_thread(_handshake, port, old)
        finally:
            await shut(server)

    asyncio.run(main())


# ---------------------------------------------------------------------------
# listeners


def _echo_roundtrip(family: int, address: Any) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(address)
        s.sendall(b"hello")
        return s.recv(100)


def test_tcp_listener_and_address_in_use() -> None:
    port = free_port()
    address = ListenAddress("tcp", "127.0.0.1", port)

    async def main() -> None:
        server = await net.start_listener(address, Echo)
        try:
            assert await asyncio.to_thread(_echo_roundtrip, socket.AF_INET, ("127.0.0.1", port)) == b"hello"
            with pytest.raises(net.ListenError) as e:
                await net.start_listener(address, Echo)
            assert str(e.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
        finally:
            await shut(server)

    asyncio.run(main())


def test_ipv6_listener_next_to_ipv4_on_the_same_port() -> None:
    require_ipv6_loopback()
    port = free_port()

    async def main() -> None:
        v4 = await net.start_listener(ListenAddress("tcp", "127.0.0.1", port), Echo)
        v6 = await net.start_listener(ListenAddress("tcp", "::1", port), Echo)
        try:
            assert await asyncio.to_thread(_echo_roundtrip, socket.AF_INET6, ("::1", port)) == b"hello"
            assert str(ListenAddress("tcp", "::1", port)) == f"[::1]:{port}"
        finally:
            await shut(v4, v6)

    asyncio.run(main())


def _unix_address(tmp_path: Path) -> tuple[ListenAddress, Path]:
    # AF_UNIX paths are limited to ~107 bytes: keep them short
    path = tmp_path / "run" / "l.sock"
    return ListenAddress("unix", path=path), path


def test_unix_listener_makes_the_parent_and_is_0660(tmp_path: Path) -> None:
    address, path = _unix_address(tmp_path)

    async def main() -> None:
        server = await net.start_listener(address, Echo)
        try:
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            assert await asyncio.to_thread(_echo_roundtrip, socket.AF_UNIX, str(path)) == b"hello"
        finally:
            await shut(server)

    asyncio.run(main())


def test_unix_listener_replaces_a_stale_socket(tmp_path: Path) -> None:
    address, path = _unix_address(tmp_path)
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    assert path.exists()

    async def main() -> None:
        server = await net.start_listener(address, Echo)
        try:
            assert await asyncio.to_thread(_echo_roundtrip, socket.AF_UNIX, str(path)) == b"hello"
        finally:
            await shut(server)

    asyncio.run(main())


def test_unix_listener_never_steals_a_live_socket(tmp_path: Path) -> None:
    address, path = _unix_address(tmp_path)
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        inode = path.stat().st_ino

        async def main() -> None:
            with pytest.raises(net.ListenError) as e:
                await net.start_listener(address, Echo)
            assert str(e.value) == f"cannot listen on unix:{path}: address already in use"

        asyncio.run(main())
        assert path.stat().st_ino == inode


def test_unix_listener_never_removes_a_regular_file(tmp_path: Path) -> None:
    address, path = _unix_address(tmp_path)
    path.parent.mkdir()
    path.write_text("precious")

    async def main() -> None:
        with pytest.raises(net.ListenError) as e:
            await net.start_listener(address, Echo)
        assert "is not a socket" in str(e.value)

    asyncio.run(main())
    assert path.read_text() == "precious"


# ---------------------------------------------------------------------------
# peers


class FakeTransport(asyncio.BaseTransport):
    def __init__(self, **extra: Any) -> None:
        super().__init__(extra)


@pytest.mark.parametrize(
    ("peer", "ip", "loopback"),
    [
        (("127.0.0.1", 1234), "127.0.0.1", True),
        (("127.8.9.10", 1234), "127.8.9.10", True),
        (("::1", 1234, 0, 0), "::1", True),
        (("::ffff:127.0.0.1", 1234, 0, 0), "127.0.0.1", True),  # IPv4-mapped
        (("192.0.2.7", 25), "192.0.2.7", False),
        (("2001:db8::1", 25, 0, 0), "2001:db8::1", False),
        (("fe80::1%eth0", 25, 0, 2), "fe80::1", False),
        (None, None, False),  # unknown: not loopback
    ],
)
def test_peer_ip_and_loopback(peer: Any, ip: str | None, loopback: bool) -> None:
    t = FakeTransport(peername=peer)
    assert net.peer_ip(t) == ip
    assert net.is_loopback_peer(t) is loopback


def test_unix_socket_peer_is_loopback() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert net.is_loopback_peer(FakeTransport(peername="", socket=a)) is True
        assert net.peer_ip(FakeTransport(peername="", socket=a)) is None
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------
# limits


def test_connection_limits() -> None:
    limits = net.ConnectionLimits(max_total=3, max_per_ip=2)
    assert limits.acquire("192.0.2.1") and limits.acquire("192.0.2.1")
    assert not limits.acquire("192.0.2.1")  # per-IP cap
    assert limits.acquire(None)  # unix peer: total only
    assert not limits.acquire("192.0.2.2")  # total cap
    assert limits.active == 3 and limits.count("192.0.2.1") == 2
    limits.release("192.0.2.1")
    assert limits.acquire("192.0.2.2")
    for ip in ("192.0.2.1", None, "192.0.2.2"):
        limits.release(ip)
    assert limits.active == 0 and limits.count("192.0.2.1") == 0
    with pytest.raises(RuntimeError):
        limits.release("192.0.2.1")


def test_inflight_waits_for_work_and_times_out() -> None:
    async def main() -> None:
        inflight = net.InFlight()
        assert await inflight.wait_idle(0)
        release = asyncio.Event()

        async def work() -> None:
            async with inflight.hold():
                await release.wait()

        task = asyncio.create_task(work())
        await asyncio.sleep(0)
        assert inflight.count == 1
        assert not await inflight.wait_idle(0.05)
        asyncio.get_running_loop().call_later(0.05, release.set)
        assert await inflight.wait_idle(5)
        await task

    asyncio.run(main())


def test_umask_does_not_loosen_the_key(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        tls = tls_config(tmp_path)
        net.ensure_certificate(tls, "mx.example.test")
    finally:
        os.umask(old)
    assert stat.S_IMODE(tls.key_file.stat().st_mode) == 0o600
