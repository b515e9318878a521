"""DKIM (RFC 6376, RFC 8463): key generation and storage, signing.

Keys live in files, one per (domain, selector)::

    <keys dir>/<domain>/<selector>.key     0600, in a 0700 directory

where ``<keys dir>`` is ``[queue] dkim_dir`` (default ``../var/dkim``, beside the queue). An RSA key is a
PKCS#1 PEM (``-----BEGIN RSA PRIVATE KEY-----``), an Ed25519 key the base64 of its
32-byte seed (dkimpy's and OpenDKIM's format). Every ``*.key`` of a domain signs its
outbound mail, so an RSA and an Ed25519 key give the usual dual signature (RFC 8463
§3 recommends it); to retire a key, remove its file after its DNS record is gone.

Invariants:
- a key is written through the durable-write helper (temp, fsync, rename, fsync dir),
  mode 0600, and never overwritten by ``generate_key`` (rotation is a new selector);
- signing is relaxed/relaxed (RFC 6376 §3.4.2, §3.4.4) over dkimpy's default header
  set (RFC 6376 §5.4.1 "SHOULD" list, those present), with From: signed one extra time
  (oversigned) so that nobody can add a second From: without breaking the signature;
- the signing domain ``d=`` is the From: domain (DMARC alignment, RFC 7489 §3.1.1), as
  ``mailstack.mail.author.signing_domain`` reads it (one From: with one mailbox);
  mail whose From: domain has no key goes out unsigned;
- verification is ``mailstack.mail.authcheck.verify_dkim``'s, the one verifier (the
  MX's, for mail from elsewhere); the tests check our signatures with it too.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dkim as dkimpy  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils

from mailstack.mail import author as author_mod
from mailstack.mail import headers
from mailstack.storage.safeio import make_dirs, write_durable

__all__ = [
    "DKIMError",
    "DKIMKey",
    "generate_key",
    "keys_dir",
    "load_keys",
    "txt_record",
    "sign",
    "sign_for_from",
    "from_domain",
]

log = logging.getLogger(__name__)

Algorithm = Literal["rsa", "ed25519"]
# dkimpy signs RSA with Python integers (~7 ms per message here, most of the cost of
# sending). PKCS#1 v1.5 signatures are deterministic, so OpenSSL (through `cryptography`)
# computes the very same bytes in a fraction of the time: dkimpy's signer is pointed at it.
# tests/outbound/test_dkim_openssl_signer.py checks byte equality with dkimpy's own function.
_OPENSSL_KEYS: dict[int, rsa.RSAPrivateKey] = {}
_DIGESTS = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


def openssl_rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """``dkim.crypto.RSASSA_PKCS1_v1_5_sign`` (same arguments, same result) on OpenSSL."""
    key = _OPENSSL_KEYS.get(private_key["modulus"])
    if key is None:
        public = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
        key = rsa.RSAPrivateNumbers(
            p=private_key["prime1"], q=private_key["prime2"], d=private_key["privateExponent"],
            dmp1=private_key["exponent1"], dmq1=private_key["exponent2"], iqmp=private_key["coefficient"],
            public_numbers=public,
        ).private_key()
        if len(_OPENSSL_KEYS) > 256:
            _OPENSSL_KEYS.clear()
        _OPENSSL_KEYS[private_key["modulus"]] = key
    algorithm = _DIGESTS[digest.name]()
    return key.sign(digest.digest(), padding.PKCS1v15(), asym_utils.Prehashed(algorithm))


dkimpy.RSASSA_PKCS1_v1_5_sign = openssl_rsa_sign  # the name dkimpy's signer calls

_SELECTOR_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
RSA_BITS = 2048


class DKIMError(Exception):
    """A key that cannot be made, read or used; ``str()`` is one line."""


@dataclass(frozen=True)
class DKIMKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private: bytes  # as stored on disk
    public_b64: str  # the p= value

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def keys_dir(config: object) -> Path:
    """``[queue] dkim_dir`` (default ``../var/dkim``, next to the queue)."""
    path: Path = config.queue.dkim_dir  # type: ignore[attr-defined]
    return path


def _check_names(domain: str, selector: str) -> None:
    if not _SELECTOR_RE.match(selector):
        raise DKIMError(f"selector {selector!r}: letters, digits, hyphens and dots only")
    if not _SELECTOR_RE.match(domain) or "." not in domain:
        raise DKIMError(f"domain {domain!r} is not a domain name")


def _public_from_private(algorithm: Algorithm, private: bytes) -> str:
    from cryptography.hazmat.primitives import serialization

    if algorithm == "rsa":
        key = serialization.load_pem_private_key(private, password=None)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = base64.b64decode(private.strip())
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return base64.b64encode(pub).decode()


def _algorithm_of(private: bytes) -> Algorithm:
    return "rsa" if private.lstrip().startswith(b"-----BEGIN") else "ed25519"


def generate_key(directory: Path, domain: str, selector: str = "mail", algorithm: Algorithm = "rsa") -> DKIMKey:
    """Make and store a new key; DKIMError if that selector already has one."""
    from cryptography.hazmat.primitives import serialization

    domain = domain.rstrip(".").lower()
    _check_names(domain, selector)
    if algorithm == "rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa

        k = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        # PKCS#1 ("RSA PRIVATE KEY"): the form dkimpy and OpenDKIM read.
        private = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    elif algorithm == "ed25519":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        private = base64.b64encode(seed) + b"\n"
    else:
        raise DKIMError(f"algorithm {algorithm!r}: rsa or ed25519")
    ddir = directory / domain
    path = ddir / f"{selector}.key"
    try:
        make_dirs(ddir, 0o700)  # <dkim_dir>/<domain>/ and any missing parent: 0700, umask or not
        if path.exists():
            raise DKIMError(f"{path} already exists; choose another --selector (rotation) or remove it")
        write_durable(path, private, mode=0o600)
    except OSError as e:
        raise DKIMError(f"cannot write {e.filename or path}: {(e.strerror or str(e)).lower()}") from None
    return DKIMKey(domain, selector, algorithm, private, _public_from_private(algorithm, private))


def load_keys(directory: Path, domain: str) -> list[DKIMKey]:
    """Every key of ``domain`` (sorted by selector); [] when it has none."""
    domain = domain.rstrip(".").lower()
    ddir = directory / domain
    if not _SELECTOR_RE.match(domain) or not ddir.is_dir():
        return []
    out: list[DKIMKey] = []
    for path in sorted(ddir.glob("*.key")):
        try:
            st = path.stat()
            stamp = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
            key = _CACHE.get(stamp)
            if key is None:  # parsing a PEM costs ~30 ms: keep it while the file is unchanged
                private = path.read_bytes()
                algorithm = _algorithm_of(private)
                key = DKIMKey(domain, path.stem, algorithm, private, _public_from_private(algorithm, private))
                if len(_CACHE) > 1000:
                    _CACHE.clear()
                _CACHE[stamp] = key
            out.append(key)
        except (OSError, ValueError) as e:
            log.error("dkim: cannot use key %s: %s", path, e)
    return out


_CACHE: dict[tuple[str, int, int, int], DKIMKey] = {}


def txt_record(key: DKIMKey) -> str:
    """The TXT value to publish at ``<selector>._domainkey.<domain>`` (RFC 6376 §3.6.1)."""
    k = "rsa" if key.algorithm == "rsa" else "ed25519"
    return f"v=DKIM1; k={k}; p={key.public_b64}"


def zone_line(key: DKIMKey) -> str:
    """A zone-file line; the value split in 255-byte strings (RFC 1035 §3.3.14)."""
    value = txt_record(key)
    parts = " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250))
    return f"{key.record_name}. 3600 IN TXT ( {parts} )" if len(value) > 250 else f"{key.record_name}. 3600 IN TXT {parts}"


def from_addresses(message: bytes) -> list[str]:
    """The addresses of every From: header field, as ``mail.author`` reads them (lenient)."""
    out: list[str] = []
    for f in headers.header_fields(message, strict=False):
        if f.key == "from":
            try:
                out.extend(str(m.address) for m in author_mod.parse_mailboxes(f.value))
            except author_mod.AuthorError:
                continue
    return out


def from_domain(message: bytes) -> str | None:
    """The DKIM signing domain: the single From: mailbox's (``mail.author.signing_domain``)."""
    return author_mod.signing_domain(message)


def sign(message: bytes, keys: list[DKIMKey]) -> bytes:
    """``message`` with one DKIM-Signature per key prepended (CRLF line ends kept)."""
    headers: list[bytes] = []
    for key in keys:
        algo = b"rsa-sha256" if key.algorithm == "rsa" else b"ed25519-sha256"
        try:
            sig = dkimpy.sign(message, key.selector.encode(), key.domain.encode(), key.private,
                              canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=algo,
                              linesep=b"\r\n")
        except dkimpy.DKIMException as e:
            raise DKIMError(f"dkim: cannot sign for {key.domain} with {key.selector}: {e}") from None
        headers.append(sig)
    return b"".join(headers) + message


def sign_for_from(message: bytes, directory: Path) -> bytes:
    """Sign with the keys of the From: domain, if it has any; else the message unchanged."""
    domain = from_domain(message)
    if domain is None:
        return message
    keys = load_keys(directory, domain)
    return sign(message, keys) if keys else message
