"""Authentication shared by every login service: one path, one throttle, one log line.

- ``service``: ``Authenticator.authenticate(service, username, password, client_ip)`` ->
  ``AuthOutcome`` (ok / failed / throttled / busy / unavailable), with its own bounded
  hash pool; ``MAX_SASL_LINE`` bounds SASL continuation lines in every protocol;
- ``throttle``: the failure policy and its stores (a SQLite file shared by processes,
  or memory);
- ``keys``: what an attempt is counted against (normalised account, client network).
"""

from __future__ import annotations

from .keys import account_key, client_key, network_key
from .service import MAX_SASL_LINE, AuthLimits, Authenticator, AuthOutcome, AuthStatus, state_path
from .throttle import Block, DirectoryThrottleStore, MemoryThrottleStore, SQLiteThrottleStore, ThrottlePolicy, ThrottleStore

__all__ = [
    "MAX_SASL_LINE",
    "AuthLimits",
    "AuthOutcome",
    "AuthStatus",
    "Authenticator",
    "Block",
    "MemoryThrottleStore",
    "SQLiteThrottleStore",
    "DirectoryThrottleStore",
    "ThrottlePolicy",
    "ThrottleStore",
    "account_key",
    "client_key",
    "network_key",
    "state_path",
]
