"""What ``mailstack cert status`` reports: per host name, the certificate that serves it.

One row per name of ``renewal.hostnames`` (every name this installation certifies), from
the certificate a TLS client asking for that name by SNI gets: the name's own pair in the
SNI store (``<tls dir>/certs/<name>/``) when there is one, else the default (the mail
host's pair in the store, else ``[tls] cert_file``). Its issuer and end, and an ``error``
when it does not name the host, has expired or cannot be read. Read only; never raises
for what it finds on disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailstack import net
from mailstack.config import Config

__all__ = ["CertStatus", "cert_status", "serving_certificate"]


@dataclass(frozen=True)
class CertStatus:
    hostname: str
    issuer: str | None
    not_after: str | None  # ISO 8601, UTC
    days_left: int | None  # whole days; negative once expired
    error: str | None

    def as_json(self) -> dict[str, object]:
        return {"hostname": self.hostname, "issuer": self.issuer, "not_after": self.not_after,
                "days_left": self.days_left, "error": self.error}


def serving_certificate(config: Config, name: str) -> Path:
    """The certificate file SNI picks for ``name`` (as ``net.load_certificate_set`` does)."""
    store = net.certificate_dir(config.tls)
    for candidate in (name, config.hostname):
        try:
            path = store / net.normalize_hostname(candidate) / "cert.pem"
        except ValueError:
            continue
        if path.is_file():
            return path
    return config.tls.cert_file


def cert_status(config: Config, names: Iterable[str], now: float | None = None) -> list[CertStatus]:
    now = time.time() if now is None else now
    return [_one(serving_certificate(config, n), n, now) for n in names]


def _one(path: Path, name: str, now: float) -> CertStatus:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as e:
        return CertStatus(name, None, None, None, f"{path}: cannot read: {e.strerror or e}")
    except ValueError:
        return CertStatus(name, None, None, None, f"{path}: not a PEM certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        covered = {str(n).lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        covered = set()
    not_after = cert.not_valid_after_utc
    days = math.floor((not_after.timestamp() - now) / 86400)
    issuer = cert.issuer.rfc4514_string()
    wildcard = "*." + name.partition(".")[2]
    error = None if (name.lower() in covered or wildcard in covered) else "not named by the certificate"
    if error is None and days < 0:
        error = "expired"
    return CertStatus(name, issuer, not_after.isoformat(), days, error)
