"""The failed-login throttle with a fake clock."""

from __future__ import annotations

from mailstack.auth_throttle import AuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_grows_after_max_failures_and_expires() -> None:
    clock = Clock()
    t = AuthThrottle(3, 300, base_delay=1.0, max_delay=8.0, clock=clock)
    for _ in range(2):
        t.failure("192.0.2.1", "a@example.test")
    assert t.delay("192.0.2.1", "a@example.test") == 0
    t.failure("192.0.2.1", "a@example.test")
    assert t.delay("192.0.2.1", None) == 1.0
    t.failure("192.0.2.1", "a@example.test")
    assert t.delay("192.0.2.1", "other@example.test") == 2.0  # per IP
    assert t.delay("198.51.100.9", "A@Example.test") == 2.0  # per account, case-insensitive
    for _ in range(10):
        t.failure("192.0.2.1", None)
    assert t.delay("192.0.2.1", None) == 8.0  # capped
    clock.now += 301
    assert t.delay("192.0.2.1", "a@example.test") == 0  # the window passed


def test_success_clears_account_not_ip() -> None:
    t = AuthThrottle(1, 300, clock=Clock())
    t.failure("192.0.2.1", "a@example.test")
    t.success("192.0.2.1", "a@example.test")
    assert t.delay("198.51.100.9", "a@example.test") == 0
    assert t.delay("192.0.2.1", "b@example.test") == 1.0


def test_memory_bounded() -> None:
    t = AuthThrottle(1, 300, max_keys=10, clock=Clock())
    for i in range(100):
        t.failure(f"10.0.0.{i}", None)
    assert len(t._fails) == 10
    assert t.delay("10.0.0.99", None) == 1.0
    assert t.delay("10.0.0.0", None) == 0
