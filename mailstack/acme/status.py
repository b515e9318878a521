"""What ``mailstack cert status`` reports: per host name, the certificate that serves it.

One row per name of ``renewal.hostnames`` (every name this installation certifies): the
installed ``[tls]`` certificate's issuer and end when it names the host, else an ``error``
saying why not. Read only; never raises for what it finds on disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from mailstack.config import Config

__all__ = ["CertStatus", "cert_status"]


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


def cert_status(config: Config, names: Iterable[str], now: float | None = None) -> list[CertStatus]:
    from cryptography import x509

    now = time.time() if now is None else now
    path = config.tls.cert_file
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as e:
        return [CertStatus(n, None, None, None, f"{path}: cannot read: {e.strerror or e}") for n in names]
    except ValueError:
        return [CertStatus(n, None, None, None, f"{path}: not a PEM certificate") for n in names]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        covered = {str(n).lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        covered = set()
    not_after = cert.not_valid_after_utc
    days = math.floor((not_after.timestamp() - now) / 86400)
    issuer = cert.issuer.rfc4514_string()
    rows = []
    for n in names:
        wildcard = "*." + n.partition(".")[2]
        error = None if (n.lower() in covered or wildcard in covered) else "not named by the certificate"
        if error is None and days < 0:
            error = "expired"
        rows.append(CertStatus(n, issuer, not_after.isoformat(), days, error))
    return rows
