"""The Sender Rewriting Scheme (SRS), as libsrs2 and postsrsd write it: no I/O.

A forwarder that sends a message on with the original envelope sender fails that
sender's SPF; SRS rewrites the sender into an address of the forwarding domain that
carries the original one, signed, so that bounces come back here and are routed on:

    alice@origin.example  ->  SRS0=HHHH=TT=origin.example=alice@forwarder.example
    SRS0=HHHH=TT=origin.example=alice@hop1.example
                          ->  SRS1=GGGG=hop1.example==HHHH=TT=origin.example=alice@forwarder.example

- ``HHHH``: HMAC-SHA1 keyed with the secret over the lower-cased fields (SRS0: timestamp,
  host, local part; SRS1: first-hop host, the SRS0 remainder), base64, first ``HASH_LENGTH``
  characters (libsrs2's defaults, so postsrsd with the same secret file reads our
  addresses and we read its);
- ``TT``: days since the epoch mod 1024, two base32 characters (``A-Z2-7``); an address
  is good for ``MAX_AGE_DAYS`` days (postsrsd's default);
- SRS1 keeps the first hop (the one that can check the SRS0 hash), so a bounce to an SRS1
  address goes straight there.

Why our own ~150 lines rather than a PyPI package: ``pysrs`` was last released in 2018
(Python 2 era Milter code), ``srslib`` is a one-person package; the scheme is small and
tests/mail/test_srs.py checks it against postsrsd itself.

Invariants: ``reverse`` never returns an address whose hash does not check out or whose
timestamp is older than ``max_age_days`` (or in the future beyond the same window);
hash comparison is constant-time; several secrets verify (rotation), the first signs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SRS", "SRSError", "is_srs", "HASH_LENGTH", "MAX_AGE_DAYS"]

HASH_LENGTH = 4  # libsrs2 / postsrsd SRS_HASHLENGTH default
MAX_AGE_DAYS = 21  # libsrs2 / postsrsd maximum age of an SRS address
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PRECISION = 86400  # one timestamp unit: a day
_SLOTS = 1024  # 10 bits of days
_SEPARATORS = "=+-"  # libsrs2 accepts any of these after SRS0/SRS1
_SRS_RE = re.compile(r"^SRS[01][=+-]", re.IGNORECASE)


class SRSError(ValueError):
    """Not an SRS address we made, a forged or expired one; ``str()`` is one line."""


def is_srs(local: str) -> bool:
    """Does this local part look like an SRS address (``SRS0=...`` / ``SRS1=...``)?"""
    return bool(_SRS_RE.match(local))


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SRSError(f"{address!r} is not local@domain")
    return local, domain


@dataclass(frozen=True)
class SRS:
    """Rewrites senders into ``domain`` and reads them back, with ``secrets[0]`` signing."""

    secrets: Sequence[bytes]
    hash_length: int = HASH_LENGTH
    max_age_days: int = MAX_AGE_DAYS

    def __post_init__(self) -> None:
        if not self.secrets or not all(self.secrets):
            raise ValueError("SRS needs at least one non-empty secret")

    # -- pieces -------------------------------------------------------------------

    def _hash(self, secret: bytes, *fields: str) -> str:
        mac = hmac.new(secret, b"".join(f.lower().encode("utf-8") for f in fields), hashlib.sha1)
        return base64.b64encode(mac.digest()).decode("ascii")[: self.hash_length]

    def _check_hash(self, given: str, *fields: str) -> bool:
        if len(given) < self.hash_length:
            return False
        for secret in self.secrets:
            want = self._hash(secret, *fields)
            # libsrs2 also takes a hash an MTA has lower-cased on the way
            if hmac.compare_digest(given.encode(), want.encode()) or \
                    hmac.compare_digest(given.lower().encode(), want.lower().encode()):
                return True
        return False

    @staticmethod
    def timestamp(now: float) -> str:
        days = int(now // _PRECISION) % _SLOTS
        return _BASE32[days >> 5] + _BASE32[days & 31]

    def _check_timestamp(self, stamp: str, now: float) -> bool:
        if len(stamp) != 2 or not stamp.isascii() or any(c not in _BASE32 for c in stamp.upper()):
            return False
        then = (_BASE32.index(stamp[0].upper()) << 5) | _BASE32.index(stamp[1].upper())
        today = int(now // _PRECISION) % _SLOTS
        age = (today - then) % _SLOTS  # the counter wraps every 1024 days
        return age <= self.max_age_days

    # -- the two directions --------------------------------------------------------

    def forward(self, sender: str, domain: str, now: float | None = None) -> str:
        """``sender`` rewritten into ``domain`` (SRS0, or SRS1 for an SRS address)."""
        local, host = _split(sender)
        t = time.time() if now is None else now
        secret = self.secrets[0]
        if len(local) > 5 and local[:4].upper() == "SRS0" and local[4] in _SEPARATORS:
            rest = local[4:]  # starts with its separator: "=HHHH=TT=host=user"
            h = self._hash(secret, host, rest)
            return f"SRS1={h}={host}={rest}@{domain}"
        if len(local) > 5 and local[:4].upper() == "SRS1" and local[4] in _SEPARATORS:
            parts = local[5:].split("=", 2)  # hash, first hop, remainder
            if len(parts) == 3 and parts[1] and parts[2]:
                first_hop, rest = parts[1], parts[2]
                h = self._hash(secret, first_hop, rest)
                return f"SRS1={h}={first_hop}={rest}@{domain}"
        stamp = self.timestamp(t)
        h = self._hash(secret, stamp, host, local)
        return f"SRS0={h}={stamp}={host}={local}@{domain}"

    def reverse(self, address: str, now: float | None = None) -> str:
        """The address an SRS address stands for; SRSError for anything forged or stale."""
        local, _domain = _split(address)
        t = time.time() if now is None else now
        if not is_srs(local):
            raise SRSError("not an SRS address")
        kind, body = local[:4].upper(), local[5:]
        if kind == "SRS0":
            parts = body.split("=", 3)
            if len(parts) != 4 or not all(parts):
                raise SRSError("malformed SRS0 address")
            h, stamp, host, user = parts
            if not self._check_hash(h, stamp, host, user):
                raise SRSError("SRS hash does not match")
            if not self._check_timestamp(stamp, t):
                raise SRSError("SRS address has expired")
            return f"{user}@{host}"
        parts = body.split("=", 2)
        if len(parts) != 3 or not all(parts) or parts[2][0] not in _SEPARATORS:
            raise SRSError("malformed SRS1 address")
        h, host, rest = parts
        if not self._check_hash(h, host, rest):
            raise SRSError("SRS hash does not match")
        return f"SRS0{rest}@{host}"
