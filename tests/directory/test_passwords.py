"""Password schemes: argon2id by default, old and Dovecot hashes verify and are upgraded on login."""

from __future__ import annotations

import base64

import bcrypt
import pytest
from sqlalchemy import select

from mailstack.directory import Directory, Invalid, Passwords
from mailstack.directory.models import UserRow
from mailstack.directory.passwords import PasswordError

# All of "secret". SHA*-CRYPT and MD5-CRYPT made by `openssl passwd -6/-5/-1 -salt Dovecot1 secret`
# (glibc-compatible, as Dovecot writes them); argon2 by argon2-cffi; SSHA512 = b64(sha512(pw+salt)+salt).
SHA512_CRYPT = "$6$Dovecot1$iPtd9do5mMDIx0g3QuAiVMidwrRbjUScUhgIGy.schx.yfBt5AQV.KvqH3kGwFJjYATynUbLCZ47WjLC3SErx/"
SHA256_CRYPT = "$5$Dovecot1$TcTrmtvoZjhCcQALYseucG2Y1zhtRHou39Q9LfZORs4"
MD5_CRYPT = "$1$Dovecot1$XsJIH5rF64A75wRErMN4d0"
BCRYPT_2B = "$2b$05$9aNtGUKRnFMLdDtojG6o6.2m.tkdKMwjRvqX8Wx.X.79Lvfk0oqgu"
BCRYPT_2Y = BCRYPT_2B.replace("$2b$", "$2y$", 1)  # what Dovecot's BLF-CRYPT writes
ARGON2I = "$argon2i$v=19$m=512,t=1,p=1$Mgv/sCcnMeggKAnzXWAyag$HHQ3Aw6bQBZLJCCHll+ZBoxBttdEwP6a4cjAUaK4Lik"
ARGON2ID_OLD = "$argon2id$v=19$m=512,t=1,p=1$5HPAWbnutYH7UxFubz+QWg$uJLGUna9ioAhlE5W1ul6SmxUxstuvLOXqJ6+AScat/s"
DES_CRYPT = "abNANd1rDfiNc"  # glibc crypt("secret", "ab"): what an old {CRYPT} line holds
SSHA512 = "{SSHA512}KO8EsMPQTwZrxxbOkDAOOXEeVCc2grMQg1pnZwZhC1bBQLby8zCmFn7qTZRvoTd+yQdROQQNYHWpTUST4zjTdQECAwQFBgcI"

# (value to import, what is stored): every one verifies "secret".
IMPORTS = [
    (SHA512_CRYPT, SHA512_CRYPT),
    ("{SHA512-CRYPT}" + SHA512_CRYPT, SHA512_CRYPT),
    ("{SHA256-CRYPT}" + SHA256_CRYPT, SHA256_CRYPT),
    ("{MD5-CRYPT}" + MD5_CRYPT, MD5_CRYPT),
    ("{CRYPT}" + SHA512_CRYPT, SHA512_CRYPT),
    ("{BLF-CRYPT}" + BCRYPT_2Y, BCRYPT_2Y),
    (BCRYPT_2B, BCRYPT_2B),
    ("{ARGON2I}" + ARGON2I, ARGON2I),
    ("{ARGON2ID}" + ARGON2ID_OLD, ARGON2ID_OLD),
    (SSHA512, SSHA512),
    ("{CRYPT}" + DES_CRYPT, DES_CRYPT),  # Dovecot still verifies these: the user keeps the password
]


@pytest.fixture(scope="module")
def fast() -> Passwords:
    return Passwords.fast()


def test_default_is_argon2id_with_production_parameters() -> None:
    p = Passwords()
    hashed = p.hash("secret")
    assert hashed.startswith("$argon2id$")
    assert p.verify("secret", hashed) == (p.verify("secret", hashed).__class__(True, None))
    assert not p.verify("wrong", hashed).ok
    assert not p.needs_update(hashed)


@pytest.mark.parametrize(("given", "stored"), IMPORTS)
def test_import_and_verify(fast: Passwords, given: str, stored: str) -> None:
    assert fast.import_hash(given) == stored
    result = fast.verify("secret", stored)
    assert result.ok and result.new_hash is not None and result.new_hash.startswith("$argon2id$")
    assert fast.verify("secret", result.new_hash) == type(result)(True, None)
    assert not fast.verify("Secret", stored).ok
    # the prefixed form as stored by someone else verifies too
    assert fast.verify("secret", given).ok


def test_plain_is_hashed_at_import_never_stored(fast: Passwords) -> None:
    for given in ("{PLAIN}secret", "{CLEARTEXT}secret", "{plain}secret",
                  "{PLAIN.B64}" + base64.b64encode(b"secret").decode()):
        stored = fast.import_hash(given)
        assert stored.startswith("$argon2id$") and "secret" not in stored
        assert fast.verify("secret", stored).ok
    assert not fast.verify("secret", "{PLAIN}secret").ok  # clear text in the database never verifies


@pytest.mark.parametrize(
    "bad",
    ["", "garbage", "{MD5}5ebe2294ecd0e0f08eab7690d2a6ee69", "{SHA512}abc", "{PLAIN-MD5}abc", "{NOPE}x",
     "{SHA512-CRYPT}" + BCRYPT_2Y, "{BLF-CRYPT}" + SHA512_CRYPT, "$6$broken", DES_CRYPT,
     "{SHA512-CRYPT}" + DES_CRYPT, "{CRYPT}abNANd1rDfi!c",
     "{PLAIN.B64}!!!", "{PLAIN}"],
)
def test_import_refuses(fast: Passwords, bad: str) -> None:
    with pytest.raises(PasswordError):
        fast.import_hash(bad)


def test_verify_never_raises(fast: Passwords) -> None:
    for stored in ("", "garbage", "$6$broken", "{NOPE}x", "$2b$05$short"):
        assert not fast.verify("secret", stored).ok
    assert not fast.verify("secret", None).ok
    assert not fast.verify("x" * 5000, fast.hash("secret")).ok


def test_bcrypt_over_72_bytes_is_a_failed_login(fast: Passwords) -> None:
    long_pw = "a" * 73
    long_hash = bcrypt.hashpw(b"a" * 72, bcrypt.gensalt(4)).decode()
    with pytest.raises(ValueError):  # what bcrypt 5 does on its own
        bcrypt.checkpw(long_pw.encode(), long_hash.encode())
    assert fast.verify(long_pw, long_hash) == type(fast.verify(long_pw, long_hash))(False, None)
    assert fast.verify("a" * 72, long_hash).ok


def test_hash_refuses_unusable_passwords(fast: Passwords) -> None:
    for bad in ("", "x" * 4097, "a\x00b"):
        with pytest.raises(PasswordError):
            fast.hash(bad)


def _stored_hash(d: Directory, local: str) -> str | None:
    with d.engine.connect() as conn:
        return conn.scalar(select(UserRow.password_hash).where(UserRow.local == local))


@pytest.mark.parametrize(("given", "stored"), [IMPORTS[1], IMPORTS[5], IMPORTS[8], IMPORTS[9]])
def test_login_rehashes_imported_users(directory: Directory, given: str, stored: str) -> None:
    directory.add_domain("example.org")
    directory.add_user("migrated@example.org", None, password_hash=given)
    assert _stored_hash(directory, "migrated") == stored
    assert directory.authenticate("migrated@example.org", "wrong") is None
    assert _stored_hash(directory, "migrated") == stored  # a failure changes nothing
    assert directory.authenticate("migrated@example.org", "secret") is not None
    upgraded = _stored_hash(directory, "migrated")
    assert upgraded is not None and upgraded.startswith("$argon2id$") and upgraded != stored
    assert directory.authenticate("migrated@example.org", "secret") is not None
    assert _stored_hash(directory, "migrated") == upgraded  # current: left alone


def test_set_password_with_hash_and_plain_import(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_user("bob@example.org", "old")
    directory.set_password("bob@example.org", None, password_hash="{PLAIN}secret")
    stored = _stored_hash(directory, "bob")
    assert stored is not None and stored.startswith("$argon2id$")
    assert directory.authenticate("bob@example.org", "secret") is not None
    with pytest.raises(Invalid):
        directory.set_password("bob@example.org", None, password_hash="{MD5}x")
    assert directory.authenticate("bob@example.org", "secret") is not None


def test_long_password_against_imported_bcrypt_user(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_user("b@example.org", None, password_hash="{BLF-CRYPT}" + BCRYPT_2Y)
    assert directory.authenticate("b@example.org", "secret" + "x" * 80) is None
    assert directory.authenticate("b@example.org", "secret") is not None
