"""The counters in the directory (auth_failures, sending_usage), on SQLite and PostgreSQL:
several writers at once (each its own engine, as separate processes or hosts have) never
lose a count."""

from __future__ import annotations

import threading

from mailstack.auth import DirectoryThrottleStore, ThrottlePolicy
from mailstack.directory import Directory, Passwords

WRITERS = 4
ROUNDS = 20


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()


def test_concurrent_failures_are_all_counted(directory: Directory, directory_url: str) -> None:
    policy = ThrottlePolicy(max_failures=1000, failure_window=10**9)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        d = Directory(directory_url, passwords=Passwords.fast())
        try:
            store = DirectoryThrottleStore(d, policy)
            for i in range(ROUNDS):
                # keys in different orders: the lock order inside must still be one
                keys = ["acct:a@x.test", "net:192.0.2.0/24"] if n % 2 else ["net:192.0.2.0/24", "acct:a@x.test"]
                store.failure(keys, 1000.0 + i)
        except BaseException as e:
            errors.append(e)
        finally:
            d.close()

    _run([threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)])
    assert errors == []
    got = directory.throttle_records(["acct:a@x.test", "net:192.0.2.0/24", "acct:nobody@x.test"])
    assert {k: v[0] for k, v in got.items()} == {"acct:a@x.test": WRITERS * ROUNDS,
                                                 "net:192.0.2.0/24": WRITERS * ROUNDS}


def test_old_throttle_records_are_swept(directory: Directory) -> None:
    directory.throttle_update(["acct:old@x.test"], lambda k, old: (1, 100.0, 0.0))
    directory.throttle_update(["acct:new@x.test"], lambda k, old: (1, 5000.0, 0.0), prune_before=1000.0)
    assert set(directory.throttle_records(["acct:old@x.test", "acct:new@x.test"])) == {"acct:new@x.test"}


def test_concurrent_sending_usage_adds_up(directory: Directory, directory_url: str) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        d = Directory(directory_url, passwords=Passwords.fast())
        try:
            for _ in range(ROUNDS):
                d.add_sending_usage("alice@x.test", ["h2026120117", "d20261201"], 1, 3, 1000.0)
        except BaseException as e:
            errors.append(e)
        finally:
            d.close()

    _run([threading.Thread(target=writer) for _ in range(WRITERS)])
    assert errors == []
    usage = directory.sending_usage("alice@x.test", ["h2026120117", "d20261201", "h2026120118"])
    assert usage == {"h2026120117": (WRITERS * ROUNDS, 3 * WRITERS * ROUNDS),
                     "d20261201": (WRITERS * ROUNDS, 3 * WRITERS * ROUNDS)}
    directory.add_sending_usage("bob@x.test", ["d20261202"], 1, 1, 90000.0, prune_before=2000.0)
    assert directory.sending_usage("alice@x.test", ["d20261201"]) == {}  # swept by age
