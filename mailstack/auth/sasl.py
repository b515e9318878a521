"""SASL PLAIN's message (RFC 4616 §2), the same for every login service (IMAP, POP3, ManageSieve).

Pure: bytes in (already base64-decoded), the login and password out, or None. Only the
authorization identity equal to the authentication identity (or empty) is accepted: no
proxy authorization (master users log in another way).
"""

from __future__ import annotations

__all__ = ["parse_plain"]


def parse_plain(data: bytes) -> tuple[str, str] | None:
    """``[authzid] NUL authcid NUL passwd`` -> (authcid, passwd); None if malformed, not
    UTF-8, without an authcid, or naming another authzid."""
    parts = data.split(b"\0")
    if len(parts) != 3:
        return None
    try:
        authz, authc, pw = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return None
    if not authc or (authz and authz != authc):
        return None
    return authc, pw
