"""tls-alpn-01 (RFC 8737): the challenge certificate, its store, and the https listener's answer.

The CA validates a name by a TLS handshake to port 443 with SNI = the name and ALPN
offering ``acme-tls/1`` (§3); it must get a self-signed certificate for exactly that name
carrying the critical ``id-pe-acmeIdentifier`` extension: the SHA-256 of the key
authorization (§3, §6.1). Everyone else (no ``acme-tls/1`` offered) gets the real
certificate of the name, and so does a CA asking for a name that has no challenge pending.

- ``challenge_certificate``: that certificate and a fresh key (PEM), no I/O;
- ``offered_alpn``: the protocol names a ClientHello offers (RFC 8446 §4.1.2, RFC 7301
  §3.1), no I/O, never raises: anything malformed offers nothing;
- ``write``/``remove``: ``<[acme] dir>/alpn/<name>.pem`` (key and certificate, 0600),
  written by whichever process orders (``cert renew`` or the renewal task of ``serve``),
  read by the https listener of any process, like the http-01 answers;
- ``Answerer``: the hook for ``net.TLSContexts.hello_front``.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from pathlib import Path

from mailstack import net
from mailstack.config import Config
from mailstack.storage.safeio import make_dirs, write_durable

__all__ = ["ACME_TLS_1", "Answerer", "challenge_certificate", "offered_alpn", "remove", "write"]

log = logging.getLogger(__name__)

ACME_TLS_1 = "acme-tls/1"  # RFC 8737 §6.2: the ALPN protocol name
ID_PE_ACME_IDENTIFIER = "1.3.6.1.5.5.7.1.31"  # RFC 8737 §6.1
CHALLENGE_VALID = datetime.timedelta(days=7)  # the CA only looks for minutes; the file is removed after
MAX_CHALLENGE_FILE = 16384  # a key and a certificate in PEM: ~1 KB

_HANDSHAKE_CLIENT_HELLO = 1
_EXT_ALPN = 16  # RFC 7301 §3.1


def challenge_certificate(hostname: str, key_authorization: str) -> bytes:
    """Key and certificate (PEM, key first) answering tls-alpn-01 for ``hostname`` (RFC 8737 §3)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME tls-alpn-01 challenge")])
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + CHALLENGE_VALID)
        # RFC 8737 §3: exactly one dNSName, the name being validated
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        # RFC 8737 §3: critical; extnValue is the DER OCTET STRING of the SHA-256 digest
        .add_extension(x509.UnrecognizedExtension(ObjectIdentifier(ID_PE_ACME_IDENTIFIER),
                                                  b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def offered_alpn(client_hello: bytes) -> tuple[str, ...]:
    """The ALPN protocol names of a ClientHello handshake message (type and length header
    included); () when it offers none or is not a well-formed ClientHello."""
    try:
        return _offered_alpn(memoryview(client_hello))
    except (IndexError, ValueError):
        return ()


def _offered_alpn(m: memoryview) -> tuple[str, ...]:
    def u(at: int, n: int) -> int:
        if at + n > len(m):
            raise ValueError("truncated")
        return int.from_bytes(m[at:at + n], "big")

    if u(0, 1) != _HANDSHAKE_CLIENT_HELLO:
        return ()
    end = min(len(m), 4 + u(1, 3))
    at = 4 + 2 + 32  # RFC 8446 §4.1.2: legacy_version, random
    at += 1 + u(at, 1)  # legacy_session_id
    at += 2 + u(at, 2)  # cipher_suites
    at += 1 + u(at, 1)  # legacy_compression_methods
    if at + 2 > end:
        return ()  # no extensions at all
    ext_end = min(end, at + 2 + u(at, 2))
    at += 2
    while at + 4 <= ext_end:
        typ, size = u(at, 2), u(at + 2, 2)
        at += 4
        if at + size > ext_end:
            raise ValueError("truncated extension")
        if typ == _EXT_ALPN:  # RFC 7301 §3.1: ProtocolNameList, each name 1..255 bytes
            names: list[str] = []
            p, stop = at + 2, min(at + size, at + 2 + u(at, 2))
            while p < stop:
                n = u(p, 1)
                if n == 0 or p + 1 + n > stop:
                    raise ValueError("bad protocol name")
                names.append(bytes(m[p + 1:p + 1 + n]).decode("ascii", "replace"))
                p += 1 + n
            return tuple(names)
        at += size
    return ()


def challenge_dir(config: Config) -> Path:
    return config.acme.dir / "alpn"


def _path(config: Config, hostname: str) -> Path:
    return challenge_dir(config) / f"{net.normalize_hostname(hostname)}.pem"  # ValueError: not a name


def write(config: Config, hostname: str, key_authorization: str) -> None:
    """Make and store the challenge certificate of ``hostname`` (0600, atomically)."""
    path = _path(config, hostname)
    make_dirs(path.parent, 0o700)
    write_durable(path, challenge_certificate(net.normalize_hostname(hostname), key_authorization), 0o600)


def remove(config: Config, hostname: str) -> None:
    try:
        _path(config, hostname).unlink()
    except (FileNotFoundError, ValueError):
        pass


class Answerer:
    """``net.HelloAnswer`` of the https listener: a handshake for a name with a pending
    challenge that offers ``acme-tls/1`` gets the challenge certificate, and the only
    protocol it can negotiate is ``acme-tls/1`` (RFC 8737 §4: used for nothing else).

    Runs inside the handshake, on the event loop: it reads one small file, and only for a
    client that offered ``acme-tls/1``; every other handshake costs one parse of its hello.
    """

    def __init__(self, config: Config) -> None:
        self.folder = challenge_dir(config)

    def __call__(self, server_name: str | None, client_hello: bytes) -> ssl.SSLContext | None:
        if not server_name or ACME_TLS_1 not in offered_alpn(client_hello):
            return None
        try:
            path = self.folder / f"{net.normalize_hostname(server_name)}.pem"
        except ValueError:
            return None
        try:
            if path.stat().st_size > MAX_CHALLENGE_FILE:
                return None
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §3: TLS 1.2 or higher
            ctx.load_cert_chain(str(path))
        except FileNotFoundError:
            return None  # no challenge pending for this name: the real certificate
        except (OSError, ssl.SSLError) as e:
            log.warning("acme: tls-alpn-01 answer for %s not usable: %s", server_name, e)
            return None
        ctx.set_alpn_protocols([ACME_TLS_1])
        log.info("acme: answered a tls-alpn-01 handshake for %s", server_name)
        return ctx
