"""Password hashing and verification (libpass's `passlib.context.CryptContext`).

- New hashes are argon2id (`$argon2id$...`), libpass's default parameters.
- Verified as well, and rehashed to argon2id on the next successful login
  (`deprecated="auto"` makes `needs_update` true for every other scheme or for argon2
  with other parameters): bcrypt (`$2a$ $2b$ $2y$`), SHA512-CRYPT (`$6$`), SHA256-CRYPT
  (`$5$`), MD5-CRYPT (`$1$`), argon2i, and LDAP-style salted SHA (`{SSHA512}`,
  `{SSHA256}`, `{SSHA}`, base64).
- Dovecot's `{SCHEME}` prefixes are understood, so a `passwd-file` or SQL user table can
  be imported as is: `{SHA512-CRYPT}$6$...`, `{SHA256-CRYPT}`, `{MD5-CRYPT}`,
  `{BLF-CRYPT}$2y$...`, `{ARGON2I}`, `{ARGON2ID}$argon2id$...`, `{CRYPT}` (a
  `$1$ $5$ $6$ $2y$` hash, or traditional 13-character DES crypt), `{SSHA512}`,
  `{SSHA256}`, `{SSHA}`. `import_hash` stores them without the crypt-style prefix (the
  hash names its scheme).
- Decision on DES crypt: Dovecot's `{CRYPT}` still verifies old DES hashes (only the first
  8 characters of the password count), so an import keeps them, or those users would be
  locked out; the next login replaces it with argon2id. A bare 13-character value without
  the `{CRYPT}` prefix is refused: it is too easy to mistake for something else.
- Decision on clear text: `{PLAIN}secret`, `{CLEARTEXT}secret` and `{PLAIN.B64}` /
  `{PLAIN.BASE64}` are accepted by `import_hash`, which hashes the password with argon2id
  at once: a clear-text password is never stored. A `{PLAIN}` value found in the
  database anyway (written by something else) never verifies.
- Unsalted digests (`{SHA512}`, `{MD5}`, `{PLAIN-MD5}`, ...), bare DES crypt and unknown
  schemes are refused on import: reset those users' passwords instead.
- A failed check is just `False`: a malformed stored hash, a password longer than 72
  bytes against bcrypt (bcrypt 5 raises `ValueError`), or longer than 4096 bytes.

Everything here is synchronous and CPU-bound (~0.1-0.4 s per hash): asyncio callers run
it in `asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from passlib.context import CryptContext  # type: ignore[import-untyped,unused-ignore]

__all__ = ["PasswordError", "Passwords", "VerifyResult"]

SCHEMES = (
    "argon2",  # default: the first scheme
    "bcrypt",
    "sha512_crypt",
    "sha256_crypt",
    "md5_crypt",
    "ldap_salted_sha512",
    "ldap_salted_sha256",
    "ldap_salted_sha1",
    "des_crypt",  # only ever stored through an explicit {CRYPT} import (see import_hash)
)

MAX_PASSWORD_BYTES = 4096  # passlib's own limit; longer is refused (a DoS guard too)

# Dovecot scheme -> the passlib schemes its hash (after the prefix) may have.
_CRYPT_PREFIXES: dict[str, frozenset[str]] = {
    "SHA512-CRYPT": frozenset({"sha512_crypt"}),
    "SHA256-CRYPT": frozenset({"sha256_crypt"}),
    "MD5-CRYPT": frozenset({"md5_crypt"}),
    "BLF-CRYPT": frozenset({"bcrypt"}),
    "ARGON2I": frozenset({"argon2"}),
    "ARGON2ID": frozenset({"argon2"}),
    "CRYPT": frozenset({"sha512_crypt", "sha256_crypt", "md5_crypt", "bcrypt", "des_crypt"}),
}
# Dovecot scheme -> the LDAP-style prefix passlib expects (these keep a prefix).
_LDAP_PREFIXES = {"SSHA512": "{SSHA512}", "SSHA256": "{SSHA256}", "SSHA": "{SSHA}"}
_PLAIN_PREFIXES = {"PLAIN", "CLEARTEXT"}
_PLAIN_B64_PREFIXES = {"PLAIN.B64", "PLAIN.BASE64", "CLEARTEXT.B64", "CLEARTEXT.BASE64"}
_PREFIX = re.compile(r"\{([A-Za-z0-9._-]+)\}(.*)", re.DOTALL)


class PasswordError(ValueError):
    """A password or an imported hash that cannot be used; `str()` is one line."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a check: `ok`, and the hash to store instead when it should be upgraded."""

    ok: bool
    new_hash: str | None = None


class Passwords:
    """A password policy: how new passwords are hashed and which old hashes still verify.

    `Passwords()` is the production policy. `Passwords.fast()` hashes argon2id with tiny
    parameters: for tests only.
    """

    def __init__(self, **argon2_settings: Any) -> None:
        settings = {f"argon2__{key}": value for key, value in argon2_settings.items()}
        self._context = CryptContext(schemes=list(SCHEMES), default="argon2", deprecated="auto", **settings)

    @classmethod
    def fast(cls) -> Passwords:
        """Cheap argon2id parameters (256 KiB, 1 round): for test suites, never for real users."""
        return cls(memory_cost=256, rounds=1, parallelism=1)

    def hash(self, password: str) -> str:
        """Hash a new password with the default scheme (argon2id); `PasswordError` if unusable."""
        _check_password(password)
        return str(self._context.hash(password))

    def identify(self, stored: str) -> str | None:
        """The passlib scheme of a stored hash (after any Dovecot prefix), or None."""
        native = _native(stored)
        if native is None:
            return None
        return self._identify_native(native)

    def _identify_native(self, native: str) -> str | None:
        try:
            scheme = self._context.identify(native)
        except (ValueError, TypeError):
            return None
        return str(scheme) if scheme is not None else None

    def needs_update(self, stored: str) -> bool:
        """True when a successful login with this hash would store a new argon2id hash."""
        native = _native(stored)
        return native is None or bool(self._context.needs_update(native))

    def verify(self, password: str, stored: str | None) -> VerifyResult:
        """Check a password; never raises for bad input, a failed check is `ok=False`."""
        if stored is None or not isinstance(password, str):
            self.dummy_verify()
            return VerifyResult(False)
        native = _native(stored)
        if native is None or self._identify_native(native) is None:
            self.dummy_verify()
            return VerifyResult(False)
        try:
            ok, new_hash = self._context.verify_and_update(password, native)
        except (ValueError, TypeError):
            # bcrypt 5: "password cannot be longer than 72 bytes"; passlib: size limit,
            # malformed hash. All of them are a failed login, never a crash.
            return VerifyResult(False)
        if not ok:
            return VerifyResult(False)
        return VerifyResult(True, str(new_hash) if new_hash is not None else None)

    def dummy_verify(self) -> None:
        """Spend the time of one verification, so unknown users answer as slowly as known ones."""
        self._context.dummy_verify()

    def import_hash(self, text: str) -> str:
        """Validate a pre-hashed password (e.g. from Dovecot) and return what to store.

        Crypt-style hashes lose their `{SCHEME}` prefix, `{PLAIN}`-style values are hashed
        with argon2id here, anything unknown or unsafe raises `PasswordError`.
        """
        if not isinstance(text, str) or not text:
            raise PasswordError("empty password hash")
        match = _PREFIX.fullmatch(text)
        if match is not None:
            scheme, rest = match.group(1).upper(), match.group(2)
            if scheme in _PLAIN_PREFIXES:
                return self.hash(rest)
            if scheme in _PLAIN_B64_PREFIXES:
                try:
                    decoded = base64.b64decode(rest, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise PasswordError(f"bad base64 in {{{scheme}}} password") from None
                return self.hash(decoded)
        native = _native(text)
        if native is None:
            name = match.group(1) if match is not None else "?"
            raise PasswordError(f"unsupported password scheme {{{name}}}")
        scheme_name = self._identify_native(native)
        if scheme_name is None:
            raise PasswordError("unrecognised password hash format")
        prefix = match.group(1).upper() if match is not None else None
        if scheme_name == "des_crypt" and prefix != "CRYPT":
            raise PasswordError("a DES crypt hash is taken only with its {CRYPT} prefix")
        if prefix is not None:
            allowed = _CRYPT_PREFIXES.get(prefix)
            if allowed is not None and scheme_name not in allowed:
                raise PasswordError(f"{{{prefix}}} hash is not a {prefix} hash")
        try:
            parsed = self._context.handler(scheme_name).from_string(native)
        except (ValueError, TypeError) as exc:
            raise PasswordError(f"malformed {scheme_name} hash: {exc}") from None
        if getattr(parsed, "checksum", True) is None:  # a bare salt/config string, no digest
            raise PasswordError(f"malformed {scheme_name} hash: it has no digest")
        return native


def _check_password(password: str) -> None:
    if not isinstance(password, str):
        raise PasswordError("password must be a string")
    if not password:
        raise PasswordError("empty password")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise PasswordError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    if "\x00" in password:
        raise PasswordError("password contains a NUL character")


def _native(stored: str) -> str | None:
    """The hash passlib understands, from a stored value that may carry a Dovecot prefix.

    None for clear text and for prefixes we do not accept.
    """
    match = _PREFIX.fullmatch(stored)
    if match is None:
        return stored
    scheme, rest = match.group(1).upper(), match.group(2)
    if scheme in _CRYPT_PREFIXES:
        return rest
    base = scheme.removesuffix(".B64").removesuffix(".BASE64")
    if base in _LDAP_PREFIXES:
        return _LDAP_PREFIXES[base] + rest
    return None
