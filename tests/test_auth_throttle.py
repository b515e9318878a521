"""The throttle's policy, keys and both stores (a fake clock; real SQLite files).

Server-level behaviour (one throttle for IMAP, POP3 and submission, blocks without
hashing, two processes) is in tests/auth/test_login_path.py.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.auth import (
    Authenticator,
    DirectoryThrottleStore,
    MemoryThrottleStore,
    SQLiteThrottleStore,
    ThrottlePolicy,
    ThrottleStore,
    account_key,
    client_key,
    network_key,
    state_path,
)
from mailstack.config import Config, config_from_dict
from mailstack.directory import Directory, Passwords

POLICY = ThrottlePolicy(max_failures=3, failure_window=300, block_time=60, max_block_time=240)
ALICE = account_key("alice@example.test")
NET = "net:192.0.2.0/24"


@pytest.fixture(params=["memory", "sqlite", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThrottleStore]:
    d = None
    s: ThrottleStore
    if request.param == "memory":
        s = MemoryThrottleStore(POLICY)
    elif request.param == "sqlite":
        s = SQLiteThrottleStore(tmp_path / "auth.sqlite", POLICY)
    else:
        d = Directory(f"sqlite:///{tmp_path / 'dir.db'}", passwords=Passwords.fast())
        d.migrate()
        s = DirectoryThrottleStore(d, POLICY)
    yield s
    s.close()
    if d is not None:
        d.close()


def test_spellings_of_one_address_are_one_account() -> None:
    same = ['"alice"@example.test', "ALICE@Example.Test", " alice@EXAMPLE.test ", '"Alice"@example.TEST']
    assert {account_key(s) for s in same} == {"acct:alice@example.test"}
    assert account_key("jörg@BÜCHER.example") == account_key("JÖRG@xn--bcher-kva.example")  # IDNA
    assert account_key("bob@example.test") != ALICE
    assert account_key("Alice") == account_key("alice")  # not an address: still one key
    assert len(account_key("x" * 10000 + "@example.test")) < 100


def test_networks_and_clients() -> None:
    assert network_key("192.0.2.7") == network_key("192.0.2.200") == NET
    assert network_key("192.0.3.7") != NET
    assert network_key("::ffff:192.0.2.9") == NET  # IPv4-mapped counts as IPv4
    assert network_key("2001:db8:1:2:aaaa::1") == network_key("2001:db8:1:2:ffff::9") == "net:2001:db8:1:2::/64"
    assert network_key(None) is None and network_key("junk") is None
    assert client_key("192.0.2.7") == "192.0.2.7" != client_key("192.0.2.8")
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2::2")  # one IPv6 host: a /64


def test_block_after_max_failures_grows_and_expires(store: ThrottleStore) -> None:
    now = 1_000_000.0
    assert store.failure([ALICE, NET], now) == []
    assert store.failure([ALICE, NET], now + 1) == []
    assert store.blocked([ALICE], now + 1) is None
    started = store.failure([ALICE, NET], now + 2)  # the 3rd: both keys blocked for 60 s
    assert {(b.key, b.until) for b in started} == {(ALICE, now + 62), (NET, now + 62)}
    assert store.blocked([account_key("ALICE@example.test")], now + 30) is not None
    assert store.blocked([NET], now + 61) is not None
    assert store.blocked([ALICE, NET], now + 63) is None  # the block is over ...
    [b, _] = store.failure([ALICE, NET], now + 70)  # ... but the next failure doubles it
    assert b.until == now + 70 + 120
    store.failure([ALICE], now + 200)
    store.failure([ALICE], now + 500)
    assert store.blocked([ALICE], now + 500 + 239) is not None  # capped at max_block_time
    assert store.blocked([ALICE], now + 500 + 241) is None
    assert store.failure([ALICE], now + 500 + 240 + 301) == []  # forgotten: counting starts again


def test_success_clears_the_account_not_the_network(store: ThrottleStore) -> None:
    now = 2_000_000.0
    for i in range(3):
        store.failure([ALICE, NET], now + i)
    store.success(ALICE)
    assert store.blocked([ALICE], now + 3) is None
    assert store.blocked([account_key("bob@example.test"), NET], now + 3) is not None


def test_memory_store_is_bounded() -> None:
    s = MemoryThrottleStore(POLICY, max_keys=10)
    for i in range(100):
        s.failure([f"net:10.0.{i}.0/24"], 1.0)
    assert len(s) == 10


def _fail_many(path: str, key: str, n: int) -> None:
    s = SQLiteThrottleStore(Path(path), POLICY)
    for i in range(n):
        s.failure([key], 3_000_000.0 + i * 0.001)
    s.close()


def test_sqlite_store_is_shared_by_processes_without_lost_failures(tmp_path: Path) -> None:
    path = tmp_path / "var" / "auth.sqlite"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fail_many, args=(str(path), ALICE, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = SQLiteThrottleStore(path, POLICY)
    try:
        [b] = s.failure([ALICE], 3_000_001.0)  # 4 x 50 failures from 4 processes, none lost
        assert b.failures == 201 and s.blocked([ALICE], 3_000_002.0) == b
    finally:
        s.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_state_path_only_when_asked(tmp_path: Path) -> None:
    def cfg(url: str, **auth: str) -> Config:
        return config_from_dict({"database": {"url": url}, "auth": auth}, tmp_path / "etc" / "mailstack.toml")

    assert state_path(cfg("sqlite:///../var/m.db")) is None  # the directory database holds it
    assert state_path(cfg("postgresql+psycopg://h/db")) is None
    assert state_path(cfg("sqlite:///x.db", state_file="../run/t.sqlite")) == tmp_path / "run" / "t.sqlite"


@pytest.mark.parametrize(("url", "auth", "kind"), [
    ("sqlite:///{tmp}/m.db", {}, DirectoryThrottleStore),
    ("sqlite:///{tmp}/m.db", {"state_file": "t.sqlite"}, SQLiteThrottleStore),
    ("sqlite://", {}, MemoryThrottleStore),
    ("sqlite:///:memory:", {}, MemoryThrottleStore),
])
def test_the_store_each_config_gets(tmp_path: Path, url: str, auth: dict[str, str], kind: type) -> None:
    config = config_from_dict({"database": {"url": url.format(tmp=tmp_path)}, "auth": auth},
                              tmp_path / "mailstack.toml")
    d = Directory(config.database.url, passwords=Passwords.fast())
    a = Authenticator.from_config(config, d)
    try:
        assert type(a.store) is kind
    finally:
        a.close()
        d.close()


def _fail_many_in_directory(url: str, key: str, n: int) -> None:
    d = Directory(url, passwords=Passwords.fast())
    s = DirectoryThrottleStore(d, POLICY)
    for i in range(n):
        s.failure([key, NET], 3_000_000.0 + i * 0.001)
    d.close()


def test_directory_store_is_shared_by_processes_without_lost_failures(tmp_path: Path) -> None:
    """Restarting or adding processes does not reset an attacker's count (issue: the
    throttle must live where every process and host sees it)."""
    url = f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}"
    d = Directory(url, passwords=Passwords.fast())
    d.migrate()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fail_many_in_directory, args=(url, ALICE, 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    s = DirectoryThrottleStore(d, POLICY)
    try:
        blocks = s.failure([ALICE, NET], 3_000_001.0)
        assert {b.key: b.failures for b in blocks} == {ALICE: 101, NET: 101}
        assert s.blocked([ALICE], 3_000_002.0) is not None
        s.success(ALICE)
        assert s.blocked([ALICE], 3_000_002.0) is None and s.blocked([NET], 3_000_002.0) is not None
    finally:
        d.close()
