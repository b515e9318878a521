"""The credential cache (directory/credcache.py): a reconnecting client is not hashed again,
and nothing the cache holds lets a changed, disabled, removed or wrong password in."""

from __future__ import annotations

import imaplib
import poplib
from pathlib import Path
from typing import Any

import pytest

from mailstack.config import ConfigError, config_from_dict
from mailstack.directory import Directory
from mailstack.directory.credcache import CredentialCache
from mailstack.directory.passwords import Passwords, VerifyResult

from .conftest import ALICE, PASSWORD, login_stack


class CountingPasswords(Passwords):
    """The real policy (cheap argon2id), counting the real hash checks."""

    def __init__(self) -> None:
        super().__init__(memory_cost=256, rounds=1, parallelism=1)
        self.checks = 0

    def verify(self, password: str, stored: str | None) -> VerifyResult:
        self.checks += 1
        return super().verify(password, stored)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def directory(tmp_path: Path) -> Any:
    pw = CountingPasswords()
    clock = Clock()
    d = Directory(f"sqlite:///{tmp_path / 'dir.db'}", passwords=pw,
                  credential_cache=CredentialCache(600, 100, clock=clock))
    d.migrate()
    d.add_domain("example.test")
    d.add_user("alice@example.test", "old secret")
    yield d, pw, clock
    d.close()


def test_a_second_login_is_not_hashed_again(directory: Any) -> None:
    d, pw, _ = directory
    assert d.authenticate("alice@example.test", "old secret") is not None
    assert d.authenticate("Alice@Example.Test", "old secret") is not None
    assert pw.checks == 1 and d.credential_cache.hits == 1


def test_a_wrong_password_is_never_remembered(directory: Any) -> None:
    d, pw, _ = directory
    d.authenticate("alice@example.test", "old secret")
    for _ in range(3):
        assert d.authenticate("alice@example.test", "guess") is None
    assert pw.checks == 4  # every wrong guess is really checked
    assert len(d.credential_cache) == 1


def test_password_change_disable_and_remove_take_effect_at_once(directory: Any) -> None:
    d, pw, _ = directory
    assert d.authenticate("alice@example.test", "old secret") is not None
    d.set_password("alice@example.test", "new secret")
    assert d.authenticate("alice@example.test", "old secret") is None
    assert d.authenticate("alice@example.test", "new secret") is not None
    d.set_enabled("alice@example.test", False)
    assert d.authenticate("alice@example.test", "new secret") is None
    d.set_enabled("alice@example.test", True)
    assert d.authenticate("alice@example.test", "new secret") is not None
    d.remove_user("alice@example.test")
    assert d.authenticate("alice@example.test", "new secret") is None


def test_an_imported_hash_is_cached_under_its_upgrade(directory: Any) -> None:
    d, pw, _ = directory
    d.set_password("alice@example.test", None, password_hash="{SHA512-CRYPT}" + _sha512_crypt("pw"))
    assert d.authenticate("alice@example.test", "pw") is not None  # verified, rehashed to argon2id
    assert d.authenticate("alice@example.test", "pw") is not None
    assert pw.checks == 1


def test_entries_expire_and_are_bounded() -> None:
    clock = Clock()
    cache = CredentialCache(60, 2, clock=clock)
    cache.remember(1, "a", "h1")
    assert cache.verified(1, "a", "h1")
    assert not cache.verified(1, "a", "h2") and not cache.verified(2, "a", "h1") and not cache.verified(1, "b", "h1")
    clock.now += 61
    assert not cache.verified(1, "a", "h1")  # expired (and dropped)
    for uid in (1, 2, 3):
        cache.remember(uid, "a", "h")
    assert len(cache) == 2 and not cache.verified(1, "a", "h")  # the oldest went first
    assert not CredentialCache(0, 10).enabled


def test_config_sets_the_cache_and_argon2_parameters(tmp_path: Path) -> None:
    raw = {"database": {"url": f"sqlite:///{tmp_path / 'd.db'}"},
           "auth": {"cache_ttl": 30, "cache_size": 5, "argon2_time_cost": 2, "argon2_memory_cost": 1024,
                    "argon2_parallelism": 1}}
    d = Directory.from_config(config_from_dict(raw, tmp_path / "mailstack.toml"))
    try:
        assert d.credential_cache is not None and d.credential_cache.ttl == 30 and d.credential_cache.size == 5
        assert "m=1024,t=2,p=1" in d.passwords.hash("x")
    finally:
        d.close()
    off = {**raw, "auth": {"cache_ttl": 0}}
    d = Directory.from_config(config_from_dict(off, tmp_path / "mailstack.toml"))
    try:
        assert d.credential_cache is None
        assert "m=65536,t=3,p=4" in d.passwords.hash("x")  # the library's defaults
    finally:
        d.close()
    with pytest.raises(ConfigError, match="argon2_memory_cost"):
        config_from_dict({**raw, "auth": {"argon2_memory_cost": 4}}, tmp_path / "mailstack.toml")


def test_imap_and_pop3_reconnects_hit_the_cache(tmp_path: Path) -> None:
    with login_stack(tmp_path) as stack:
        pw = CountingPasswords()
        stack.directory._passwords = pw  # count the real checks of this running stack
        stack.directory.credential_cache = CredentialCache(600, 100)
        for _ in range(3):
            imap = imaplib.IMAP4("127.0.0.1", stack.port("imap"))
            imap.login(ALICE, PASSWORD)
            imap.logout()
        pop = poplib.POP3("127.0.0.1", stack.port("pop3"))
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        pop.quit()
        imap = imaplib.IMAP4("127.0.0.1", stack.port("imap"))
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(ALICE, "wrong")
        imap.logout()
        assert pw.checks == 2  # the first login and the wrong one
        assert stack.directory.credential_cache.hits == 3


def _sha512_crypt(password: str) -> str:
    from passlib.hash import sha512_crypt  # type: ignore[import-untyped,unused-ignore]

    return str(sha512_crypt.using(rounds=5000).hash(password))


