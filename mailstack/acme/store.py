"""The files of ACME: ``[acme] dir`` holds the account key and the challenge answers.

Layout under ``[acme] dir`` (0700):

- ``account.key``: the account's RSA key (PEM, 0600), made on first use and kept: the CA
  knows the account by it (RFC 8555 §7.3.1 ``onlyReturnExisting`` finds it again);
- ``challenges/<token>``: the key authorization of a pending http-01 challenge
  (RFC 8555 §8.3), written by whichever process orders (``mailstack cert renew`` or the
  renewal task in ``serve``), read by the ``http`` service of any process;
- ``renew.lock``: held while an order runs, so two processes never order at once.

Certificates go to the SNI store, one per host name (``net.install_certificate``); the
mail host's also where ``[tls] cert_file``/``key_file`` say (``install``): the default
pair. Every write is atomic (temp file, fsync, rename): a crash leaves the old pair or
the new one, never half of one. The tls-alpn-01 challenge certificates live in
``alpn/`` (see ``mailstack.acme.alpn``).
"""

from __future__ import annotations

import re
from pathlib import Path

from mailstack.config import Config
from mailstack.storage.safeio import make_dirs, write_durable

__all__ = [
    "TOKEN_RE",
    "account_key_path",
    "challenge_dir",
    "install",
    "read_challenge",
    "remove_challenge",
    "write_challenge",
]

# RFC 8555 §8.3: the token is base64url (§6.1 of RFC 4648, no padding); at least 128 bits
# of entropy, and no CA sends kilobytes: anything else is not a token of ours.
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,256}")
MAX_KEY_AUTHORIZATION = 1024  # token + "." + a JWK thumbprint (43 chars): far below


def acme_dir(config: Config) -> Path:
    return config.acme.dir


def account_key_path(config: Config) -> Path:
    return acme_dir(config) / "account.key"


def challenge_dir(config: Config) -> Path:
    return acme_dir(config) / "challenges"


def lock_path(config: Config) -> Path:
    return acme_dir(config) / "renew.lock"


def write_challenge(config: Config, token: str, key_authorization: str) -> None:
    if not TOKEN_RE.fullmatch(token):
        raise ValueError(f"not an ACME token: {token[:40]!r}")
    directory = challenge_dir(config)
    make_dirs(directory, 0o700)
    # 0644 would do (the answer is public by design); 0600 keeps it the service user's
    write_durable(directory / token, key_authorization.encode("ascii"), 0o600)


def remove_challenge(config: Config, token: str) -> None:
    if TOKEN_RE.fullmatch(token):
        try:
            (challenge_dir(config) / token).unlink()
        except FileNotFoundError:
            pass


def read_challenge(challenges: Path, token: str) -> bytes | None:
    """The answer to ``GET /.well-known/acme-challenge/<token>``; None when there is none
    (or the token is not one: no path of ours is ever built from anything else)."""
    if not TOKEN_RE.fullmatch(token):
        return None
    try:
        with (challenges / token).open("rb") as f:
            data = f.read(MAX_KEY_AUTHORIZATION + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_KEY_AUTHORIZATION else None


def install(config: Config, fullchain_pem: bytes, key_pem: bytes) -> None:
    """Put a certificate pair where ``[tls]`` says, key first (0600), each atomically.

    The mail host's certificate lands here too (besides its SNI store folder). Between the two renames a reader could see the new key with the
    old certificate: TLS contexts are only (re)loaded at start or on reload, after both.
    """
    tls = config.tls
    make_dirs(tls.key_file.parent, 0o700)
    make_dirs(tls.cert_file.parent, 0o700)
    write_durable(tls.key_file, key_pem, 0o600)
    write_durable(tls.cert_file, fullchain_pem, 0o644)  # a certificate is public
