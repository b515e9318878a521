"""Failed-login throttling per client IP and per account (reusable by every login service).

Each failed login is remembered for ``window`` seconds under the client's IP and under
the account name tried. Once either key holds ``max_failures`` failures, every further
attempt on it (right or wrong password) waits ``base_delay * 2**(n - max_failures)``
seconds, capped at ``max_delay``, before the password is even checked; so a guesser is
slowed down whichever of IP and account it varies.
POP3, IMAP and submission share this one class (each service keeps its own instance).

Invariants:
- event-loop confined, no I/O; time comes from an injectable monotonic clock;
- memory is bounded: at most ``max_keys`` keys, the least recently failed dropped first;
- a successful login clears the account's record, never the IP's (one valid account
  must not whitewash an IP that guesses others).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["AuthThrottle"]


class AuthThrottle:
    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        *,
        base_delay: float = 1.0,
        max_delay: float = 15.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_keys = max_keys
        self._clock = clock
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def _keys(ip: str | None, account: str | None) -> list[str]:
        keys = []
        if ip:
            keys.append("ip:" + ip)
        if account:
            keys.append("acct:" + account.strip().casefold())
        return keys

    def _count(self, key: str, now: float) -> int:
        q = self._fails.get(key)
        if q is None:
            return 0
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[key]
            return 0
        return len(q)

    def failures(self, ip: str | None, account: str | None) -> int:
        """The larger of the recent failure counts of the IP and the account."""
        now = self._clock()
        return max((self._count(k, now) for k in self._keys(ip, account)), default=0)

    def delay(self, ip: str | None, account: str | None) -> float:
        """Seconds to wait before checking this attempt (0 while under the limit)."""
        excess = self.failures(ip, account) - self.max_failures
        if excess < 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(excess, 30)))

    def failure(self, ip: str | None, account: str | None) -> None:
        now = self._clock()
        for key in self._keys(ip, account):
            q = self._fails.pop(key, None) or deque(maxlen=max(self.max_failures * 4, 16))
            q.append(now)
            self._fails[key] = q  # most recent last
        while len(self._fails) > self.max_keys:
            self._fails.popitem(last=False)

    def success(self, ip: str | None, account: str | None) -> None:
        if account:
            self._fails.pop("acct:" + account.strip().casefold(), None)
