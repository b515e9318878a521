"""Who may hold IMAP connections: per client address before login, per user and address after.

An office behind one NAT address opens hundreds of IMAP connections (Thunderbird keeps up
to 5 per account), so a per-address cap on *every* connection locks it out. As Dovecot:

- logged-in sessions are capped per user and client address (``[imap]
  max_userip_connections``, Dovecot's ``mail_max_userip_connections``, default 10): a login
  beyond it is refused ``NO [LIMIT]`` and the connection stays unauthenticated;
- connections that have not logged in are capped per client address (``[imap]
  max_unauthenticated_per_ip``, default 50): a newcomer beyond it gets ``* BYE
  [UNAVAILABLE]``, so one address cannot hold the service's connections without a password;
- the service's total cap (``ConnectionLimits``) still bounds everything.

A connection moves from the first count to the second at its login and leaves whichever it
is in when it ends. Event-loop confined (the IMAP adapter calls it from the loop).
"""

from __future__ import annotations

__all__ = ["UserIPLimits"]


class UserIPLimits:
    def __init__(self, max_unauthenticated_per_ip: int, max_userip: int) -> None:
        self.max_unauthenticated_per_ip = max_unauthenticated_per_ip
        self.max_userip = max_userip
        self._unauth: dict[str | None, int] = {}
        self._userip: dict[tuple[str, str | None], int] = {}

    def connected(self, ip: str | None) -> bool:
        """A new connection from ``ip``; False: over the cap for not-logged-in connections."""
        n = self._unauth.get(ip, 0)
        if ip is not None and n >= self.max_unauthenticated_per_ip:
            return False
        self._unauth[ip] = n + 1
        return True

    def may_login(self, user: str, ip: str | None) -> bool:
        return self._userip.get((user.lower(), ip), 0) < self.max_userip

    def logged_in(self, user: str, ip: str | None) -> tuple[str, str | None]:
        """Move one connection of ``ip`` to ``user``'s count; the key to give ``ended``."""
        self._drop(self._unauth, ip)
        key = (user.lower(), ip)
        self._userip[key] = self._userip.get(key, 0) + 1
        return key

    def ended(self, ip: str | None, key: tuple[str, str | None] | None) -> None:
        """A connection ends: ``key`` from ``logged_in``, None if it never logged in."""
        if key is None:
            self._drop(self._unauth, ip)
        else:
            self._drop(self._userip, key)

    def sessions(self, user: str, ip: str | None) -> int:
        return self._userip.get((user.lower(), ip), 0)

    @staticmethod
    def _drop(counts: dict, key: object) -> None:  # type: ignore[type-arg]
        n = counts.get(key, 0) - 1
        if n > 0:
            counts[key] = n
        else:
            counts.pop(key, None)
