"""One ACME order (RFC 8555 §7.4) for a list of names, through the ``acme`` library.

``issue`` is blocking (``requests`` underneath): call it from a thread in asyncio code.
It registers the account (or finds it again by its key, §7.3.1), orders one certificate
naming the hosts given (the renewal orders one per host), answers each authorization by
the first challenge of ``challenge_types(config)`` the CA offers:
- http-01 (§8.3): the key authorization goes to the challenge store, the ``http`` service
  serves it;
- tls-alpn-01 (RFC 8737): the challenge certificate goes to ``alpn``'s store, the https
  listener of the ``http`` service hands it to a handshake offering ``acme-tls/1``;
then finalizes with a CSR of a fresh key, and returns the chain and that key. The
challenge files are removed whatever happens. Every failure is an ``ACMEError`` with a
one-line message.

The ``acme`` library dropped its tls-alpn-01 classes (5.x); ``_tls_alpn_01_class`` registers
the type again so the library parses it (a challenge of a type it does not know comes
back as ``UnrecognizedChallenge``, which cannot be answered).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailstack.acme import alpn, store
from mailstack.config import Config
from mailstack.storage.safeio import create_exclusive, make_dirs

__all__ = ["HTTP_01", "TLS_ALPN_01", "ACMEError", "Issued", "challenge_types", "issue"]

HTTP_01 = "http-01"
TLS_ALPN_01 = "tls-alpn-01"

log = logging.getLogger(__name__)

USER_AGENT = "mailstack-acme"
ORDER_TIMEOUT = 300.0  # seconds for the CA to validate and sign; Let's Encrypt takes seconds
ACCOUNT_KEY_BITS = 2048  # RS256, what every ACME CA takes


_TLS_ALPN_01_CLASS: Any = None


def _tls_alpn_01_class() -> Any:
    """The ``acme`` library's challenge class for tls-alpn-01, registered on first use
    (imported lazily: ``serve`` without ACME never loads the library)."""
    global _TLS_ALPN_01_CLASS
    if _TLS_ALPN_01_CLASS is None:
        from acme import challenges

        class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
            """RFC 8737 §3: the client answers with an empty object, like http-01."""

            typ = TLS_ALPN_01

        class TLSALPN01(challenges.KeyAuthorizationChallenge):
            """RFC 8737 §3: a token; the key authorization goes into the certificate."""

            response_cls = TLSALPN01Response
            typ = TLS_ALPN_01

            def validation(self, account_key: Any, **unused_kwargs: Any) -> str:
                return self.key_authorization(account_key)  # what goes into the certificate

        known = challenges.Challenge.TYPES.get(TLS_ALPN_01)
        if known is not None:  # a library version that has it again: use theirs
            _TLS_ALPN_01_CLASS = known
        else:
            challenges.ChallengeResponse.register(TLSALPN01Response)
            _TLS_ALPN_01_CLASS = challenges.Challenge.register(TLSALPN01)
    return _TLS_ALPN_01_CLASS


def challenge_types(config: Config) -> tuple[str, ...]:
    """The challenge types to answer, preferred first (``[acme] challenge``).

    ``auto``: http-01 when ``[http] listen`` has an address (port 80 in production), and
    tls-alpn-01 when ``[http] tls_listen`` has one (443): both when both serve, http-01
    first, as certbot prefers it. Nothing to answer with is an ACMEError.
    """
    choice = config.acme.challenge
    if choice != "auto":
        return (choice,)
    found = tuple(t for t, listen in ((HTTP_01, config.http.listen), (TLS_ALPN_01, config.http.tls_listen)) if listen)
    if not found:
        raise ACMEError("no [http] listen or tls_listen address to answer an ACME challenge on")
    return found


class ACMEError(Exception):
    """An order that did not give a certificate; ``str()`` is one line."""


@dataclass(frozen=True)
class Issued:
    fullchain_pem: bytes
    key_pem: bytes


def _account_key(config: Config) -> Any:
    from josepy.jwk import JWKRSA

    path = store.account_key_path(config)
    if not path.exists():
        make_dirs(path.parent, 0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=ACCOUNT_KEY_BITS)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            create_exclusive(path, pem, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ACMEError(f"{path}: not an RSA key")
    return JWKRSA(key=loaded)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def issue(config: Config, hostnames: list[str]) -> Issued:
    """A certificate for ``hostnames`` (the first is the subject) from ``[acme] directory_url``."""
    from acme import challenges, client, crypto_util, errors, messages

    cfg = config.acme
    if not cfg.directory_url:
        raise ACMEError("[acme] directory_url is not set")
    if not hostnames:
        raise ACMEError("no host names to certify")
    verify: Any = cfg.ca_file or True
    written: list[str] = []
    written_alpn: list[str] = []
    try:
        wanted = challenge_types(config)
        tls_alpn_01 = _tls_alpn_01_class()
        account_key = _account_key(config)
        net = client.ClientNetwork(account_key, verify_ssl=verify, user_agent=USER_AGENT)
        directory = client.ClientV2.get_directory(cfg.directory_url, net)
        acme = client.ClientV2(directory, net=net)
        reg = messages.NewRegistration.from_data(email=cfg.email or None, terms_of_service_agreed=True)
        try:
            acme.new_account(reg)
        except errors.ConflictError as e:  # RFC 8555 §7.3.1: this key has an account already
            net.account = messages.RegistrationResource(uri=e.location, body=messages.Registration())
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(key_pem, hostnames))
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated recently (the CA reuses authorizations)
            name = authz.body.identifier.value
            offered = {c.chall.typ: c for c in authz.body.challenges
                       if isinstance(c.chall, (challenges.HTTP01, tls_alpn_01))}
            typ = next((t for t in wanted if t in offered), None)
            if typ is None:
                raise ACMEError(f"{name}: the CA offers no {' or '.join(wanted)} challenge")
            chall = offered[typ]
            response = chall.chall.response(account_key)
            key_authorization = chall.chall.key_authorization(account_key)  # RFC 8555 §8.1
            if typ == HTTP_01:
                token = chall.chall.encode("token")
                store.write_challenge(config, token, key_authorization)
                written.append(token)
            else:
                alpn.write(config, name, key_authorization)
                written_alpn.append(name)
            acme.answer_challenge(chall, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        done = acme.poll_and_finalize(order, deadline)
        if not done.fullchain_pem:
            raise ACMEError("the CA finalized the order without a certificate")
        return Issued(done.fullchain_pem.encode("ascii"), key_pem)
    except ACMEError:
        raise
    except errors.ValidationError as e:
        problems = [f"{a.body.identifier.value}: {c.error.detail if c.error else c.status}"
                    for a in e.failed_authzrs for c in a.body.challenges if c.error is not None]
        raise ACMEError("validation failed: " + ("; ".join(problems) or "no detail")) from None
    except errors.TimeoutError:
        raise ACMEError(f"the CA did not finish the order within {ORDER_TIMEOUT:g}s") from None
    except messages.Error as e:
        raise ACMEError(f"the CA refused: {e.detail or e.typ}") from None
    except Exception as e:  # requests' connection errors, josepy's, OSError: one line
        raise ACMEError(f"{type(e).__name__}: {_one_line(e)}") from None
    finally:
        for token in written:
            store.remove_challenge(config, token)
        for name in written_alpn:
            alpn.remove(config, name)
