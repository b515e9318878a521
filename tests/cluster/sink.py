"""A remote MX for the two-host tests: records every transaction with the session it came on.

Unlike ``tests/outbound``'s sink it keeps, per SMTP session, the order of its
transactions and whether the client ended it with QUIT, and the time of each 250: the
two-host test tells a message sent twice because a host died between the peer's 250 and
its own spool update (at-least-once delivery, as with Postfix) from a real double
delivery.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Copy:
    message_id: str
    recipients: tuple[str, ...]
    session: int
    at: float  # time.time() of our 250


@dataclass
class SessionLog:
    number: int
    quit: bool = False
    copies: list[Copy] = field(default_factory=list)


def message_id(data: bytes) -> str:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    return str(headers.get("Message-ID", "")).strip()


class _Handler:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.sessions: dict[int, SessionLog] = {}
        self._numbers = itertools.count(1)

    def _log(self, session: Any) -> SessionLog:
        with self.lock:
            number = getattr(session, "sink_number", None)
            if number is None:
                number = next(self._numbers)
                session.sink_number = number
                self.sessions[number] = SessionLog(number)
            return self.sessions[number]

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self._log(session)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        log = self._log(session)
        data = envelope.original_content or envelope.content
        with self.lock:
            log.copies.append(Copy(message_id(data), tuple(envelope.rcpt_tos), log.number, time.time()))
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow peer: senders hold their claims a while
        return "250 2.0.0 OK queued"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self._log(session).quit = True
        return "221 2.0.0 Bye"


class Sink:
    """``Sink(host, port, delay).start()`` (``delay``: seconds before each 250 after DATA); ``copies()`` is every transaction received so far."""

    def __init__(self, host: str, port: int, delay: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.handler = _Handler(delay)
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname=self.host, port=self.port, ready_timeout=5,
                                     server_hostname="mx.remote.test", ident="sink")
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def copies(self) -> list[Copy]:
        with self.handler.lock:
            return [c for s in self.handler.sessions.values() for c in s.copies]
