"""A short-lived cache of verified credentials, so a reconnecting client is not re-hashed.

An argon2id check costs ~150 ms of one core and 64 MiB; a phone or Thunderbird logs in
again every few minutes on several connections. Dovecot spares its passdb the same way
(``auth_cache_size``/``auth_cache_ttl``); this is that cache for ``Directory.authenticate``.

What an entry is: an HMAC-SHA256, under a random key made at process start and never
written anywhere, of (user id, password, the stored hash). So:

- the password is never kept, not even as a plain digest (the key is secret, per process);
- a password change, a rehash, or an imported hash gives another stored hash, hence
  another entry: the old password stops working at once, without any invalidation call;
- the user row is still read on every login (one indexed query): a disabled or removed
  user is refused at once, whatever the cache holds;
- only successes are stored: a wrong password is never in the cache, it is hashed and
  refused every time (and the shared throttle counts it).

Bounded: at most ``size`` entries (least recently used go first), each for ``ttl``
seconds from when the password was last really verified (a hit does not extend it).
Thread-safe: logins are checked in the authenticator's hash pool.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["CredentialCache"]


class CredentialCache:
    """Verified (user id, password, stored hash) triples, by keyed digest, for ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._secret = os.urandom(32)
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry
        self.hits = 0  # for tests and metrics
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _digest(self, user_id: int, password: str, stored_hash: str) -> bytes:
        h = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in (str(user_id).encode(), password.encode("utf-8", "surrogatepass"), stored_hash.encode()):
            h.update(len(part).to_bytes(4, "big"))  # length-prefixed: no two triples share a message
            h.update(part)
        return h.digest()

    def verified(self, user_id: int, password: str, stored_hash: str) -> bool:
        """True if this exact triple was verified less than ``ttl`` seconds ago."""
        if not self.enabled:
            return False
        key = self._digest(user_id, password, stored_hash)
        now = self._clock()
        with self._lock:
            expiry = self._entries.get(key)
            if expiry is not None and expiry > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return True
            if expiry is not None:
                del self._entries[key]
            self.misses += 1
            return False

    def remember(self, user_id: int, password: str, stored_hash: str) -> None:
        """Record a triple that was just verified by the real hash check."""
        if not self.enabled:
            return
        key = self._digest(user_id, password, stored_hash)
        with self._lock:
            self._entries[key] = self._clock() + self.ttl
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
