"""IMAP IDLE (RFC 2177): the client waits, the server pushes news about the mailbox.

``idle`` sends what is pending, then ``+ idling`` and yields the ``Idle`` effect; the
adapter waits for DONE or a change (``notify``) and calls ``idle_updates`` for each
change and ``idle_done`` at DONE. EXPUNGE may go out while idling (RFC 2177 §3).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..effects import Idle, Output
from ..responses import ok
from ..types import Command

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS", "idle_updates", "idle_done"]


def idle(s: Session, cmd: Command) -> Iterator[Output]:
    yield from s.updates(None)
    yield b"+ idling\r\n"
    yield Idle(cmd.tag)


def idle_updates(s: Session) -> bytes:
    """Untagged news while idling (RFC 2177); blocking."""
    return b"".join(s.updates(None))


def idle_done(s: Session, tag: str) -> bytes:
    return b"".join(s.updates(None)) + ok(tag, "IDLE terminated").to_bytes()


HANDLERS: Mapping[str, Handler] = {"IDLE": idle}
