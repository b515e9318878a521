"""Networking shared by every server: listeners, TLS contexts, peer checks, limits.

Invariants:
- server TLS is TLS 1.2 or newer with forward-secret AEAD ciphers only (Mozilla's
  "intermediate" profile); the outbound client context is opportunistic (RFC 7435:
  encrypt when offered, verify nothing) and is never used where a user authenticates;
- ``ensure_certificate`` makes a self-signed pair only when *both* ``[tls]`` files are
  absent, writes the key 0600 before the certificate, each through the durable-write
  helper (temp, fsync, rename, fsync dir), under a lock so that services starting at
  once never pair one run's key with another run's certificate;
- a unix socket listener never removes a socket something still listens on, nor a file
  that is not a socket; it is chmod 0660 before it accepts anything (the MTA that
  delivers over LMTP runs as another user: it joins our group, as with Dovecot's
  ``unix_listener lmtp { mode = 0660 }``), and a folder made for it is 0750 (the group
  may reach the socket, nobody else may even look); the TLS folder made for a
  self-signed pair is 0700 and both files in it 0600;
- every TLS listener shares ``TLSContexts.server``, whose SNI callback picks the context
  of the name asked for (store: ``<tls dir>/certs/<hostname>/``) or the mail host's;
  a reload swaps the whole set at once and never touches a session already open;
- every listener failure is a ``ListenError`` whose ``str()`` is one line naming the
  address: ``cannot listen on 127.0.0.1:2525: address already in use``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import fcntl
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import AbstractSet, Any, Protocol
from pathlib import Path

from mailstack import metrics
from mailstack.config import ListenAddress, TLSConfig
from mailstack.storage.safeio import make_dirs, write_durable

__all__ = [
    "CertificateSet",
    "ConnectionLimits",
    "HelloAnswer",
    "InFlight",
    "ListenError",
    "TLSContexts",
    "TLSError",
    "bind_listener",
    "certificate_dir",
    "client_context",
    "close_shared_listeners",
    "ensure_certificate",
    "install_certificate",
    "is_loopback_peer",
    "load_certificate_set",
    "load_tls_contexts",
    "log_listener",
    "open_listeners",
    "peer_ip",
    "server_context",
    "start_listener",
    "use_listener_source",
]

log = logging.getLogger(__name__)

# Mozilla "intermediate" (TLS 1.2 part; TLS 1.3 suites are fixed by OpenSSL and all good).
SERVER_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
CERT_VALID_DAYS = 825  # Apple clients refuse TLS server certificates valid for longer
UNIX_SOCKET_MODE = 0o660
UNIX_SOCKET_DIR_MODE = 0o750  # a folder made for a unix socket: the group may reach it
TLS_DIR_MODE = 0o700  # a folder made for the self-signed key and certificate


class TLSError(Exception):
    """A ``[tls]`` file that cannot be used; ``str()`` is one line naming the file."""


class ListenError(Exception):
    """A listener that cannot be opened; ``str()`` is one line naming the address."""

    def __init__(self, address: ListenAddress, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason


# ---------------------------------------------------------------------------
# TLS


class TLSContexts:
    """The TLS contexts every listener shares, swapped as a whole on reload.

    ``server`` is one fixed "front" context handed to every listener (implicit TLS and
    STARTTLS alike); its SNI callback (RFC 6066 §3) hands each handshake to the context of
    the name the client asked for, from the current certificate set, else the default
    one (the mail host's). ``reload()`` builds a new set and swaps one reference, so a
    listener never holds a stale certificate and a session already open keeps the one it
    was given. ``client`` is the opportunistic context for outbound SMTP.
    """

    def __init__(self, certs: CertificateSet, client: ssl.SSLContext) -> None:
        self._certs = certs
        self.client = client
        self.server = certs.default_context()
        self.server.sni_callback = self._choose

    @property
    def certificates(self) -> CertificateSet:
        return self._certs

    def _choose(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                _front: ssl.SSLContext) -> None:
        # OpenSSL calls this with server_name None as well when the client sent no SNI:
        # it gets the default context of the *current* set, not the front's own copy.
        sslobj.context = self._certs.pick(server_name)

    def hello_front(self, answer: HelloAnswer) -> ssl.SSLContext:
        """A front context of its own for one kind of listener, like ``server`` but asking
        ``answer(server_name, client_hello)`` first: a context it returns serves the
        handshake instead of the set's (the https listener answers RFC 8737 tls-alpn-01
        this way: which certificate to send depends on the ALPN the client offered, and
        the SNI callback alone does not see that).

        The ClientHello (the handshake message, header included) is taken from OpenSSL's
        message callback, which sees it before the SNI callback runs. That callback is
        CPython's ``SSLContext._msg_callback`` (private, there since 3.8; no public hook
        shows the offered ALPN before the certificate is chosen): should it disappear,
        ``answer`` gets ``b""`` and every handshake is served from the set as usual.
        """
        front = _hardened_server_context()  # never serves itself: the SNI callback always picks
        hellos: weakref.WeakKeyDictionary[object, bytes] = weakref.WeakKeyDictionary()

        def record(conn: object, direction: str, _version: object, content_type: object,
                   msg_type: object, data: bytes) -> None:
            if (direction == "read" and content_type == ssl._TLSContentType.HANDSHAKE  # type: ignore[attr-defined]
                    and msg_type == ssl._TLSMessageType.CLIENT_HELLO):  # type: ignore[attr-defined]
                with contextlib.suppress(TypeError):  # an object without weak references
                    hellos[conn] = bytes(data[:MAX_CLIENT_HELLO])

        def choose(sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                   _front: ssl.SSLContext) -> None:
            hello = hellos.pop(sslobj, b"")
            try:
                chosen = answer(server_name, hello)
            except Exception:  # an error in a hook never fails a handshake: serve as usual
                log.exception("TLS hello hook failed")
                chosen = None
            sslobj.context = chosen or self._certs.pick(server_name)

        with contextlib.suppress(AttributeError, TypeError, ValueError):
            front._msg_callback = record  # type: ignore[attr-defined]
        front.sni_callback = choose
        return front

    def swap(self, certs: CertificateSet) -> None:
        """Make ``certs`` the set new handshakes choose from (one reference assignment)."""
        self._certs = certs

    def reload(self, tls: TLSConfig, hostname: str) -> CertificateSet:
        """Read the certificates again and swap them in; TLSError (nothing changes) when the
        default pair cannot be used. A per-name pair that cannot be read keeps its old
        context (logged), so a half-finished renewal never takes a name off the air."""
        self._certs = load_certificate_set(tls, hostname, previous=self._certs)
        return self._certs


# answer(server_name, ClientHello message) -> a context to serve that handshake, or None
HelloAnswer = Callable[[str | None, bytes], "ssl.SSLContext | None"]
MAX_CLIENT_HELLO = 65536  # bytes of a ClientHello kept for the hook (a handshake message is < 2^24)


@dataclass(frozen=True)
class CertificateSet:
    """One generation of server contexts: the default and one per hostname (lower case)."""

    default: ssl.SSLContext
    by_name: dict[str, ssl.SSLContext]
    files: dict[str, Path]  # name -> its cert.pem ("" = the default), for status reports

    def default_context(self) -> ssl.SSLContext:
        return self.default

    def pick(self, server_name: str | None) -> ssl.SSLContext:
        if server_name:
            ctx = self.by_name.get(server_name.rstrip(".").lower())
            if ctx is not None:
                return ctx
        return self.default


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS >= 1.2, modern AEAD ciphers, no compression or renegotiation; raises TLSError."""
    ctx = _hardened_server_context()
    for label, path in (("cert_file", cert_file), ("key_file", key_file)):
        if not path.exists():
            raise TLSError(f"[tls] {label}: {path} does not exist")
    try:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except PermissionError as e:
        raise TLSError(f"[tls] cannot read {e.filename or cert_file}: permission denied") from None
    except (ssl.SSLError, OSError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise TLSError(f"[tls] cannot load {cert_file} with {key_file}: {str(reason).lower()}") from None
    return ctx


def _hardened_server_context() -> ssl.SSLContext:
    """A server context with our protocol settings and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SERVER_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # No TLS 1.3 session tickets. They arrive right after the handshake, and a client that
    # reads and writes one SSL socket from two threads (imaplib2, so offlineimap) then
    # deadlocks on its first command after STARTTLS: measured here, 1 in ~6 sessions hung
    # with tickets, 0 in 60 without. Mail sessions are long-lived; resumption gains little.
    ctx.num_tickets = 0
    return ctx


def client_context() -> ssl.SSLContext:
    """Opportunistic TLS for outbound SMTP (RFC 7435): encrypt, verify nothing.

    MX certificates are rarely valid for the MX host name; refusing them would only push
    the mail back to plaintext. Policies that demand verification (MTA-STS, DANE) build
    their own verifying context.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def load_tls_contexts(tls: TLSConfig, hostname: str = "") -> TLSContexts:
    """The shared contexts from ``[tls]`` and the certificate store (the default pair must
    exist: see ensure_certificate); ``hostname`` is the mail host (``hostname`` key)."""
    return TLSContexts(load_certificate_set(tls, hostname), client_context())


# ---------------------------------------------------------------------------
# the certificate store: one pair per hostname, chosen by SNI
#
# Layout (no config key: it follows ``[tls] cert_file``, the folder the units may write):
#   <folder of cert_file>/certs/<hostname>/cert.pem   (full chain, leaf first)
#   <folder of cert_file>/certs/<hostname>/key.pem    (0600)
# The default, for clients without SNI or asking for a name without a pair, is the mail
# host's pair in the store when there is one, else ``[tls] cert_file``/``key_file``: like
# Postfix's ``smtpd_tls_chain_files`` plus ``tls_server_sni_maps``, or Dovecot's
# ``local_name`` blocks over the global ``ssl_cert``.

STORE_DIR_NAME = "certs"
MAX_STORE_NAMES = 1000  # pairs read per reload; more is a misconfiguration, not a mail host
_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def certificate_dir(tls: TLSConfig) -> Path:
    """The store's folder: ``<folder of [tls] cert_file>/certs``."""
    return tls.cert_file.parent / STORE_DIR_NAME


def normalize_hostname(hostname: str) -> str:
    """Lower case, no trailing dot, A-labels only; ValueError (one line) for anything else.

    Wildcards are refused: SNI selection here is by exact name (ACME http-01, the only
    challenge served, cannot certify a wildcard anyway)."""
    name = hostname.strip().rstrip(".").lower()
    if not _HOSTNAME_RE.fullmatch(name):
        raise ValueError(f"{hostname!r} is not a host name")
    return name


def install_certificate(tls: TLSConfig, hostname: str, cert_pem: bytes, key_pem: bytes) -> Path:
    """Put a certificate chain and its key in the store for ``hostname``; the folder.

    Both are checked first (they must load together as a server pair: TLSError otherwise,
    nothing written). The key is written 0600 before the certificate, each durably (temp,
    fsync, rename), under the store's lock, so a reading ``reload`` sees the old pair, or
    the new one, or at worst a mismatch it refuses while keeping the old context. Takes
    effect for new connections at the next reload (``TLSContexts.reload``, or SIGHUP).
    """
    try:
        name = normalize_hostname(hostname)
    except ValueError as e:
        raise TLSError(f"cannot install a certificate: {e}") from None
    _check_pair(cert_pem, key_pem, name)
    folder = certificate_dir(tls) / name
    try:
        make_dirs(folder, TLS_DIR_MODE)
        with _locked_dir(folder.parent):
            write_durable(folder / "key.pem", key_pem, mode=0o600)
            write_durable(folder / "cert.pem", cert_pem, mode=0o600)
    except OSError as e:
        raise TLSError(f"cannot write {e.filename or folder}: {(e.strerror or str(e)).lower()}") from None
    log.info("installed a certificate for %s in %s", name, folder)
    return folder


def _check_pair(cert_pem: bytes, key_pem: bytes, name: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        c, k = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        write_durable(k, key_pem, mode=0o600)
        write_durable(c, cert_pem, mode=0o600)
        try:
            server_context(c, k)
        except TLSError:
            raise TLSError(f"the certificate and key for {name} do not load together as a server pair") from None


def load_certificate_set(tls: TLSConfig, hostname: str = "",
                         previous: CertificateSet | None = None) -> CertificateSet:
    """Read ``[tls]`` and the store. TLSError when the default cannot be used; a store pair
    that cannot be loaded is logged and skipped (or keeps its ``previous`` context)."""
    default = server_context(tls.cert_file, tls.key_file)
    by_name: dict[str, ssl.SSLContext] = {}
    files: dict[str, Path] = {"": tls.cert_file}
    store = certificate_dir(tls)
    lock = _locked_dir(store) if store.is_dir() else contextlib.nullcontext()
    with lock:
        entries = sorted(store.iterdir())[:MAX_STORE_NAMES] if store.is_dir() else []
        for folder in entries:
            try:
                name = normalize_hostname(folder.name)
            except ValueError:
                continue  # not ours (a stray file, an editor's backup)
            if not folder.is_dir() or name != folder.name:
                continue
            try:
                by_name[name] = server_context(folder / "cert.pem", folder / "key.pem")
                files[name] = folder / "cert.pem"
            except TLSError as e:
                kept = previous.by_name.get(name) if previous else None
                log.error("certificate for %s not loaded (%s)%s", name, e,
                          "; keeping the one in use" if kept else "")
                if kept is not None and previous is not None:
                    by_name[name] = kept
                    files[name] = previous.files[name]
    host = hostname.rstrip(".").lower()
    if host in by_name:
        default = by_name[host]
        files[""] = files[host]
    return CertificateSet(default=default, by_name=by_name, files=files)


def ensure_certificate(tls: TLSConfig, hostname: str) -> bool:
    """Make a self-signed pair when both ``[tls]`` files are absent; True when it made one.

    One file present and the other absent is a TLSError naming the missing one: guessing
    which half to replace could throw away a real key or certificate.
    """
    cert, key = tls.cert_file, tls.key_file
    state = _pair_state(cert, key)
    if state is not None:
        return state
    for d in {cert.parent, key.parent}:
        try:
            make_dirs(d, TLS_DIR_MODE)
        except OSError as e:
            raise TLSError(f"[tls] cannot create {d}: {(e.strerror or str(e)).lower()}") from None
    with _locked_dir(key.parent):
        state = _pair_state(cert, key)  # another process may have made it meanwhile
        if state is not None:
            return state
        key_pem, cert_pem = _self_signed(hostname)
        try:
            write_durable(key, key_pem, mode=0o600)
            write_durable(cert, cert_pem, mode=0o600)  # public, but nobody else needs it
        except OSError as e:
            raise TLSError(f"[tls] cannot write {e.filename or key}: {(e.strerror or str(e)).lower()}") from None
    log.warning("made a self-signed certificate for %s in %s (replace it with a real one)", hostname, cert)
    return True


def _pair_state(cert: Path, key: Path) -> bool | None:
    """False when both exist, None when both are absent; TLSError for half a pair."""
    has_cert, has_key = cert.exists(), key.exists()
    if has_cert and has_key:
        return False
    if has_cert:
        raise TLSError(f"[tls] key_file: {key} does not exist but cert_file {cert} does; "
                       "restore the key or remove both to get a self-signed pair")
    if has_key:
        raise TLSError(f"[tls] cert_file: {cert} does not exist but key_file {key} does; "
                       "restore the certificate or remove both to get a self-signed pair")
    return None


@contextlib.contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM): RSA-2048, SAN = hostname, localhost, 127.0.0.1, ::1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    host = hostname.rstrip(".").lower() or "localhost"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    dns_names = list(dict.fromkeys([host, "localhost"]))
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in dns_names]
        + [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------------------
# listeners

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


async def start_listener(
    address: ListenAddress, protocol_factory: ProtocolFactory, ssl: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Listen on a TCP (IPv4/IPv6) or unix socket address; raises ListenError (one line)."""
    loop = asyncio.get_running_loop()
    if _listener_source is not None:  # a worker: the supervisor bound it (mailstack.supervisor)
        shared = _listener_source(address)
        try:
            if shared.family == socket.AF_UNIX:
                server = await loop.create_unix_server(protocol_factory, sock=shared, ssl=ssl)
            else:
                server = await loop.create_server(protocol_factory, sock=shared, ssl=ssl)
            _shared_servers.append(server)
            return server
        except OSError as e:
            shared.close()
            raise ListenError(address, _reason(e)) from None
    if address.kind == "unix":
        assert address.path is not None
        sock = _bind_unix(address, address.path)
        try:
            return await loop.create_unix_server(protocol_factory, sock=sock, ssl=ssl)
        except OSError as e:
            sock.close()
            raise ListenError(address, _reason(e)) from None
    try:
        # asyncio sets IPV6_V6ONLY, so "0.0.0.0:25" and "[::]:25" can both be listed.
        return await loop.create_server(protocol_factory, address.host, address.port, ssl=ssl,
                                        reuse_address=True, backlog=128)
    except OSError as e:
        raise ListenError(address, _reason(e)) from None


def log_listener(name: str, address: ListenAddress | str, tls: bool) -> None:
    """The one INFO line per listener opened: ``smtp listening on 127.0.0.1:2525``
    (in a worker other than the first, DEBUG: the supervisor's workers share one socket)."""
    log.log(logging.INFO if _log_listeners else logging.DEBUG, "%s listening on %s%s", name, address, " (implicit TLS)" if tls else "")


async def open_listeners(
    name: str,
    listeners: Iterable[tuple[ListenAddress, bool]],
    factory_for: Callable[[ListenAddress, bool], ProtocolFactory],
    tls_context: ssl.SSLContext,
) -> list[asyncio.Server]:
    """Open every (address, implicit_tls) listener of service ``name`` and log each; all or none.

    ``factory_for(address, implicit_tls)`` gives the protocol factory of that listener.
    On a failure the listeners opened so far are closed and the ListenError propagates.
    """
    servers: list[asyncio.Server] = []
    try:
        for address, implicit_tls in listeners:
            server = await start_listener(
                address, factory_for(address, implicit_tls), ssl=tls_context if implicit_tls else None
            )
            servers.append(server)
            log_listener(name, address, implicit_tls)
    except BaseException:
        for s in servers:
            s.close()
        raise
    return servers


# ---------------------------------------------------------------------------
# listeners bound by another process (mailstack.supervisor)

ListenerSource = Callable[[ListenAddress], socket.socket]
_listener_source: ListenerSource | None = None
_log_listeners = True
_shared_servers: list[asyncio.Server] = []


def use_listener_source(source: ListenerSource | None, *, log_listeners: bool = True) -> None:
    """From now on ``start_listener`` takes its sockets from ``source(address)`` (a worker
    of ``mailstack.supervisor``: the supervisor binds each address once and passes the
    socket on; ``source`` raises ListenError when it cannot); None: bind them here again.

    Process-wide on purpose: which process binds is a fact about the process (like its
    umask), not about a service, and every service opens its listeners through here.
    """
    global _listener_source, _log_listeners
    _listener_source = source
    _log_listeners = log_listeners


def close_shared_listeners() -> None:
    """Stop accepting on every listener taken from the source (a worker that stops: its
    supervisor hears STOPPING=1 only after this, so nothing is accepted any more once it
    tells systemd); the services' own ``close()`` later is a no-op."""
    for server in _shared_servers:
        server.close()
    _shared_servers.clear()


def bind_listener(address: ListenAddress) -> socket.socket:
    """A listening, non-blocking socket on ``address``, opened as ``start_listener`` opens
    one (TCP: SO_REUSEADDR, IPV6_V6ONLY, backlog 128; unix: the stale-socket and 0660
    rules above); ListenError (one line) when it cannot be. A host name is bound at its
    first address (``getaddrinfo`` order); list each address to listen on several."""
    if address.kind == "unix":
        assert address.path is not None
        return _bind_unix(address, address.path)
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ListenError(address, (e.strerror or str(e)).lower()) from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ListenError(address, _reason(e)) from None
    sock.setblocking(False)
    return sock


def _bind_unix(address: ListenAddress, path: Path) -> socket.socket:
    try:
        make_dirs(path.parent, UNIX_SOCKET_DIR_MODE)
    except OSError as e:
        raise ListenError(address, f"cannot create {path.parent}: {_reason(e)}") from None
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ListenError(address, _reason(e)) from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(address, "the path exists and is not a socket")
        if _unix_socket_alive(path):
            raise ListenError(address, "address already in use")
        log.info("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, UNIX_SOCKET_MODE)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ListenError(address, _reason(e)) from None
    sock.setblocking(False)
    return sock


def _unix_socket_alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as e:
        # ECONNREFUSED: a socket file nobody listens on. Anything else (EAGAIN: the
        # backlog is full, EACCES): someone may well be there; do not steal the path.
        return e.errno != errno.ECONNREFUSED
    finally:
        probe.close()
    return True


def _reason(e: OSError) -> str:
    if e.errno:
        return os.strerror(e.errno).lower()
    return str(e).lower()


# ---------------------------------------------------------------------------
# peers and limits


def peer_ip(transport: asyncio.BaseTransport) -> str | None:
    """The client's IP as text (IPv4-mapped IPv6 unwrapped), None for a unix socket peer."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    host = peer[0].split("%", 1)[0]  # fe80::1%eth0
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def is_loopback_peer(transport: asyncio.BaseTransport) -> bool:
    """True for 127.0.0.0/8, ::1 (and ::ffff:127.x) and unix socket peers; False when unknown."""
    sock = transport.get_extra_info("socket")
    if sock is not None and getattr(sock, "family", None) == socket.AF_UNIX:
        return True
    ip = peer_ip(transport)
    return ip is not None and ipaddress.ip_address(ip).is_loopback


class ConnectionLimits:
    """Concurrent connection caps of one service: in total and per client IP.

    ``acquire(ip)`` when a connection is accepted (False = refuse it, e.g. SMTP 421 4.7.0),
    ``release(ip)`` exactly once when an acquired connection ends. ``ip`` None (a unix
    socket peer) counts toward the total only. Event-loop confined: not thread-safe.
    """

    def __init__(self, max_total: int, max_per_ip: int, service: str = "") -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._total = 0
        self._per_ip: dict[str, int] = {}
        # named: counted for GET /metrics (mailstack_connections_total, _open)
        self.service = service
        if service:
            metrics.watch_connections(self)

    @property
    def active(self) -> int:
        return self._total

    def count(self, ip: str | None) -> int:
        return self._per_ip.get(ip, 0) if ip is not None else 0

    def acquire(self, ip: str | None, *, count_refusal: bool = True) -> bool:
        """Take a slot for a connection from ``ip``; False = over a cap. ``count_refusal``
        False: the caller may still admit it another way (it calls ``note_refused`` if not)."""
        if self._total >= self.max_total or (ip is not None and self._per_ip.get(ip, 0) >= self.max_per_ip):
            if count_refusal:
                self.note_refused()
            return False
        if ip is not None:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._total += 1
        if self.service:
            metrics.inc(metrics.CONNECTIONS, self.service, "accepted")
        return True

    def note_refused(self) -> None:
        """Count a connection refused over the caps."""
        if self.service:
            metrics.inc(metrics.CONNECTIONS, self.service, "refused")

    def release(self, ip: str | None) -> None:
        if self._total <= 0:
            raise RuntimeError("ConnectionLimits.release() without acquire()")
        self._total -= 1
        if ip is not None:
            n = self._per_ip.get(ip, 0) - 1
            if n > 0:
                self._per_ip[ip] = n
            else:
                self._per_ip.pop(ip, None)


class InFlight:
    """Counts units of work (an SMTP transaction, an IMAP APPEND) that a stop should await.

    ``async with inflight.hold(): ...`` around the work; ``await inflight.wait_idle(t)``
    returns True once none is left, False when ``t`` seconds passed first.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        if self._count == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class SessionHost(Protocol):
    """What a line-protocol service gives its connections: a session coroutine per
    connection, and the set of live connections (for a bounded stop)."""

    connections: set[Any]

    def session(self, conn: Any) -> Coroutine[Any, Any, None]: ...


class StreamConnection(asyncio.Protocol):
    """One client connection of a line-protocol server (IMAP, POP3): an inbox, read and
    drain waiters with flow control both ways, STARTTLS, and the session task.

    Invariants: reading pauses while more than ``MAX_INBOX`` unprocessed bytes wait, so a
    client cannot make the server buffer without bound; ``start_tls`` drops only what
    arrived *before* the handshake (RFC 2595 §4, RFC 3501 §6.2.1), never what came through
    TLS: a client may send its first command with the end of the handshake."""

    MAX_INBOX = 64 * 1024

    def __init__(self, host: SessionHost, implicit_tls: bool) -> None:
        self.service = host
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.inbox = bytearray()
        self.eof = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self.task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.service.session(self))
        self.service.connections.add(self)
        self.task.add_done_callback(lambda _t: self.service.connections.discard(self))

    def data_received(self, data: bytes) -> None:
        self.inbox += data
        if len(self.inbox) > self.MAX_INBOX and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake_reader()
        w, self._drain_waiter = self._drain_waiter, None
        if w is not None and not w.done():
            w.set_exception(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        w, self._drain_waiter = self._drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    # -- for the session
    def _wake_reader(self) -> None:
        w, self._read_waiter = self._read_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_readable(self) -> None:
        """Until something is in the inbox, or the client is gone."""
        while not self.inbox and not self.eof:
            self._read_waiter = asyncio.get_running_loop().create_future()
            await self._read_waiter

    async def read(self) -> bytes:
        """Everything received so far; b"" at EOF."""
        await self.wait_readable()
        data = bytes(self.inbox)
        self.inbox.clear()
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        if self._write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    async def start_tls(self, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        self.inbox.clear()  # nothing sent before the handshake counts
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(self.transport, self, context, server_side=True, ssl_handshake_timeout=30)
        if new is None:
            raise ConnectionResetError("TLS handshake failed")
        self.transport = new  # bytes received from here on came through TLS: keep them

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def stop_sessions(name: str, servers: list[asyncio.Server], inflight: "InFlight",
                        connections: AbstractSet[StreamConnection], goodbye: bytes, grace: float) -> None:
    """The bounded stop of a line-protocol service: stop accepting, let the work in flight
    (an UPDATE, a command) finish for up to ``grace`` seconds, then say ``goodbye`` to every
    client, close and cancel its session, and wait for the listeners to be gone."""
    for s in servers:
        s.close()
    if not await inflight.wait_idle(grace):
        log.warning("%s: %d operation(s) still running after %.0fs", name, inflight.count, grace)
    for conn in list(connections):
        conn.write(goodbye)
        conn.close()
        if conn.task is not None:
            conn.task.cancel()
    tasks = [c.task for c in list(connections) if c.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=max(grace, 1.0))
    for s in servers:
        await s.wait_closed()
