"""What the IMAP core asks its adapter to do: the effects a command yields (RFC 3501 §6).

A command handler yields response bytes and, where only the adapter can act (a socket, a
password check, a wait), one of these frozen values; the adapter (``server``) carries it
out and calls back into the session (``login_ok``, ``sasl_response``, ``tls_started``,
``idle_done``). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

__all__ = ["Login", "SaslNeedResponse", "StartTLS", "Compress", "Idle", "Logout", "Effect", "Output"]


@dataclass(frozen=True)
class Login:
    """Check these credentials; then call ``login_ok`` or ``login_failed`` (RFC 3501 §6.2.2, §6.2.3)."""

    tag: str
    username: str
    password: str = field(repr=False)
    mechanism: str


@dataclass(frozen=True)
class SaslNeedResponse:
    """AUTHENTICATE PLAIN without SASL-IR: send ``+ `` and pass the next line to ``sasl_response``."""

    tag: str


@dataclass(frozen=True)
class StartTLS:
    """The tagged OK is out: start TLS now (RFC 3501 §6.2.1), then ``tls_started()``."""


@dataclass(frozen=True)
class Compress:
    """The tagged OK is out, uncompressed: deflate both directions from here on (RFC 4978 §3)."""


@dataclass(frozen=True)
class Idle:
    """``+ idling`` is out: wait for DONE or changes (``idle_updates``), then ``idle_done`` (RFC 2177)."""

    tag: str


@dataclass(frozen=True)
class Logout:
    """The BYE and tagged OK are out: close the connection (RFC 3501 §6.1.3)."""


Effect = Union[Login, SaslNeedResponse, StartTLS, Compress, Idle, Logout]
Output = Union[bytes, Effect]
