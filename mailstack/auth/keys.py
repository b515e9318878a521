"""Throttle keys: who a login attempt is counted against.

- ``account_key``: the name the client typed, normalised the way the directory looks it
  up (``mail.address.parse_address``: quotes removed, domain lower-cased A-label, local
  part case-folded), so ``"alice"@example.test``, ``ALICE@Example.Test`` and
  ``alice@EXAMPLE.test`` are one account. A name that is not an address (``alice``) is
  stripped and case-folded. Very long names are replaced by a digest so a key stays small.
- ``network_key``: the client's network for failure counting, /24 for IPv4 and /64 for
  IPv6 (one IPv6 host usually owns a whole /64, and a guesser behind one IPv4 NAT or in
  one rented /24 should not start fresh with each address). IPv4-mapped IPv6 counts as
  IPv4.
- ``client_key``: one client host for the concurrent-attempt cap: the address itself
  for IPv4, its /64 for IPv6.

All of them are pure functions; ``None`` for a peer without an IP (a unix socket).
"""

from __future__ import annotations

import hashlib
import ipaddress
import unicodedata

from mailstack.mail.address import AddressError, parse_address

__all__ = ["account_key", "client_key", "network_key", "IPV4_PREFIX", "IPV6_PREFIX"]

IPV4_PREFIX = 24
IPV6_PREFIX = 64
_MAX_KEY = 320  # RFC 5321 §4.5.3.1: 64 + 1 + 255; longer names are hashed


def account_key(username: str) -> str:
    """``acct:<local casefolded>@<domain>``; the same for every spelling the directory accepts."""
    try:
        name = parse_address(username).key
    except (AddressError, ValueError, TypeError):
        name = unicodedata.normalize("NFC", str(username)).strip().casefold()
    if len(name) > _MAX_KEY:
        name = "sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return "acct:" + name


def _ip(client_ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not client_ip:
        return None
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def network_key(client_ip: str | None) -> str | None:
    """``net:192.0.2.0/24`` or ``net:2001:db8::/64``; None without an IP."""
    ip = _ip(client_ip)
    if ip is None:
        return None
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return "net:" + str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def client_key(client_ip: str | None) -> str | None:
    """``192.0.2.7`` or ``2001:db8::/64``: one client host; None without an IP."""
    ip = _ip(client_ip)
    if ip is None:
        return None
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
