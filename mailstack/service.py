"""What a service needs from the runner: its context, its errors, the shape it returns.

A service (``smtp``, ``imap``, ``queue``, ...) is a module with
``async def start(ctx: ServiceContext) -> RunningService``. The runner
(``mailstack.serve``) builds the context and calls ``start``; the service imports only
this module (and ``net.open_listeners`` to open its listeners), never the runner, so
imports point one way: ``serve -> services -> service, net, ...`` (see
``tests/test_imports.py``).

Invariants:
- everything a service may use is passed in through ``ServiceContext`` (config is never
  global), one context per service: ``limits`` are that service's own;
- a ``ServiceError`` raised by ``start`` is a one-line refusal (``<name>: <message>``,
  exit 1), never a traceback;
- ``RunningService.stop(grace)`` is bounded by ``grace`` and does not raise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mailstack import net
from mailstack.config import Config

if TYPE_CHECKING:
    from mailstack.auth import Authenticator
    from mailstack.directory import Directory

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_IP",
    "RunningService",
    "ServiceContext",
    "ServiceError",
    "SimpleService",
    "StartFunction",
    "limits_for",
]

log = logging.getLogger(__name__)

# Services without their own limits in the config (IMAP clients keep several connections
# each; NAT puts many users behind one address: generous per-IP caps).
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_CONNECTIONS_PER_IP = 50


class ServiceError(Exception):
    """A service that cannot run; ``str()`` is one line for stderr."""


@dataclass(frozen=True)
class ServiceContext:
    """What a service's ``start`` gets: all shared state it may use, passed in."""

    config: Config
    directory: Directory
    tls: net.TLSContexts
    limits: net.ConnectionLimits
    # The one login path of this process (mailstack.auth), shared by every login service;
    # None (tests that start one service): the service makes its own.
    auth: Authenticator | None = None


@runtime_checkable
class RunningService(Protocol):
    """What ``start`` returns. ``stop`` stops accepting, lets work in flight finish
    within ``grace`` seconds, then closes everything; it should not raise."""

    name: str

    async def stop(self, grace: float) -> None: ...


StartFunction = Callable[[ServiceContext], Awaitable[RunningService]]


def limits_for(config: Config, name: str) -> net.ConnectionLimits:
    """The connection caps of service ``name`` (per process: each ``[server] workers``
    process has its own): ``[smtp]``, ``[imap]`` and ``[pop3] max_connections`` (and
    ``..._per_ip``), ``DEFAULT_MAX_CONNECTIONS``/``..._PER_IP`` for the others."""
    if name == "smtp":
        return net.ConnectionLimits(config.smtp.max_connections, config.smtp.max_connections_per_ip, name)
    if name == "imap":  # per address only before login, per user+address after (imap/userip.py)
        return net.ConnectionLimits(config.imap.max_connections, config.imap.max_connections, name)
    if name == "pop3":
        return net.ConnectionLimits(config.pop3.max_connections, config.pop3.max_connections_per_ip, name)
    return net.ConnectionLimits(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, name)


class SimpleService:
    """A RunningService for the usual shape: some listeners plus an ``InFlight`` counter.

    ``stop(grace)``: close the listeners, ``close_idle()`` (say goodbye to sessions with
    nothing in flight: SMTP 421, IMAP BYE), wait for the in-flight work up to the grace,
    then ``close_all()``. Subclasses override the two hooks; both default to nothing.
    """

    def __init__(self, name: str, servers: Sequence[asyncio.Server] = (), inflight: net.InFlight | None = None) -> None:
        self.name = name
        self.servers = list(servers)
        self.inflight = inflight or net.InFlight()

    async def close_idle(self) -> None:
        """Close the sessions that have nothing in flight."""

    async def close_all(self) -> None:
        """Close every session left (the grace is over)."""

    async def stop(self, grace: float) -> None:
        for s in self.servers:
            s.close()
        await self.close_idle()
        if not await self.inflight.wait_idle(grace):
            log.warning("%s: %d transaction(s) still in flight after %gs; closing", self.name,
                        self.inflight.count, grace)
        await self.close_all()
