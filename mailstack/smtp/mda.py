"""How the MX hands local mail to the MDA: in-process, or over LMTP (RFC 2033).

Both implement ``MDA.deliver(sender, recipients, resolutions, data, ...)`` and return one
``delivery.RecipientResult`` per recipient, so the MX has one code path either way:

- ``InProcessMDA``: calls ``delivery.LocalDelivery`` directly (the default, when the MX
  and the Maildirs live in one process/host: ``[smtp] mda = ""``);
- ``LMTPClient``: speaks LMTP to ``[smtp] mda = "unix:/path"`` or ``"HOST:PORT"`` (our own
  LMTP service, or Dovecot's), one reply per accepted recipient after DATA.

The sender's DSN request (RFC 3461) goes on to an LMTP server that offers DSN in its LHLO
reply: RET and ENVID on MAIL, NOTIFY and ORCPT on each RCPT (§4; the MDA then reports a
NOTIFY=SUCCESS delivery itself, as our LMTP service and Dovecot's do); REQUIRETLS
(RFC 8689) goes on when offered. To an MDA that offers neither they are left off: the
LMTP hop is final delivery, not a relay (RFC 8689 §4.2 governs relays), and a server
that does not offer DSN would refuse its parameters (RFC 3461 §4: 555).

Invariant: a recipient is OK only on a 2xx from the MDA for that recipient; a
connection failure, a timeout or a garbled reply is a temporary failure (``451 4.3.0``)
for every recipient without a reply yet, never an OK.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Protocol

from mailstack.config import ListenAddress
from mailstack.delivery import LocalDelivery, RecipientResult, Resolution
from mailstack.mail.dsnrequest import DSNRequest, dsn_mail_params, dsn_rcpt_params
from mailstack.smtp import replies as R
from mailstack.smtp.replies import Reply

__all__ = ["MDA", "InProcessMDA", "LMTPClient", "parse_reply_line"]

log = logging.getLogger(__name__)

MAX_REPLY_LINES = 100  # lines of one reply (an LHLO lists a dozen keywords)
_LINE_RE = re.compile(rb"^([2-5]\d\d)([ -])(?:([245]\.\d{1,3}\.\d{1,3}) )?(.*)$")


class MDA(Protocol):
    async def deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        resolutions: Sequence[Resolution],
        data: bytes,
        *,
        queue_id: str,
        client: str | None,
        smtputf8: bool,
        body_8bit: bool,
        dsn: DSNRequest | None = None,
        requiretls: bool = False,
    ) -> list[RecipientResult]: ...


class InProcessMDA:
    def __init__(self, delivery: LocalDelivery) -> None:
        self.delivery = delivery

    async def deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        resolutions: Sequence[Resolution],
        data: bytes,
        *,
        queue_id: str,
        client: str | None,
        smtputf8: bool,
        body_8bit: bool,
        dsn: DSNRequest | None = None,
        requiretls: bool = False,
    ) -> list[RecipientResult]:
        return await self.delivery.deliver(sender, resolutions, data, queue_id=queue_id, client=client,
                                           smtputf8=smtputf8, dsn=dsn, requiretls=requiretls)


def parse_reply_line(line: bytes) -> tuple[int, bool, str, str]:
    """(code, more lines follow, enhanced code or "", text); ValueError if garbled."""
    m = _LINE_RE.match(line.rstrip(b"\r\n"))
    if not m:
        raise ValueError(f"bad reply line {line[:80]!r}")
    code, sep, enhanced, text = m.groups()
    return int(code), sep == b"-", (enhanced or b"").decode("ascii"), text.decode("utf-8", "replace")


class LMTPClient:
    """A minimal LMTP client (one connection per message; LMTP servers are local)."""

    def __init__(self, address: ListenAddress, *, helo: str, timeout: float = 120.0) -> None:
        self.address = address
        self.helo = helo
        self.timeout = timeout

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.address.kind == "unix":
            return await asyncio.open_unix_connection(str(self.address.path), limit=65536)
        return await asyncio.open_connection(self.address.host, self.address.port, limit=65536)

    @staticmethod
    async def _reply(reader: asyncio.StreamReader, lines: list[str] | None = None) -> Reply:
        """One reply; ``lines`` (when given) gets the text of each of its lines."""
        text = []
        while True:
            line = await reader.readuntil(b"\n")
            code, more, enhanced, t = parse_reply_line(line)
            text.append(t)
            if len(text) > MAX_REPLY_LINES:
                raise ValueError("reply of too many lines")
            if not more:
                break
        if lines is not None:
            lines.extend(text)
        if enhanced and enhanced[0] != str(code)[0]:
            enhanced = ""
        return Reply(code, enhanced, " ".join(text)[:400] or "-")

    async def deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        resolutions: Sequence[Resolution],
        data: bytes,
        *,
        queue_id: str,
        client: str | None,
        smtputf8: bool,
        body_8bit: bool,
        dsn: DSNRequest | None = None,
        requiretls: bool = False,
    ) -> list[RecipientResult]:
        results: dict[int, Reply] = {}
        try:
            await asyncio.wait_for(self._session(sender, recipients, data, smtputf8, body_8bit, results,
                                                 dsn, requiretls), self.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as e:
            log.warning("LMTP to %s failed: %s", self.address, e)
        out = []
        for i, rcpt in enumerate(recipients):
            out.append(RecipientResult(rcpt, results.get(i, R.LOCAL_ERROR.with_text("MDA unavailable, try again later"))))
        return out

    async def _session(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        smtputf8: bool,
        body_8bit: bool,
        results: dict[int, Reply],
        dsn: DSNRequest | None = None,
        requiretls: bool = False,
    ) -> None:
        reader, writer = await self._open()
        try:
            greeting = await self._reply(reader)
            if greeting.code != 220:
                raise ValueError(f"greeting {greeting}")
            writer.write(f"LHLO {self.helo}\r\n".encode("ascii"))
            offered: list[str] = []
            lhlo = await self._reply(reader, offered)
            if lhlo.code != 250:
                raise ValueError(f"LHLO {lhlo}")
            keywords = {t.split(" ", 1)[0].upper() for t in offered[1:]}
            dsn = dsn if dsn and "DSN" in keywords else None  # RFC 3461 §4: only where offered
            params = ""
            if body_8bit:
                params += " BODY=8BITMIME"
            if smtputf8:
                params += " SMTPUTF8"
            if requiretls and "REQUIRETLS" in keywords:  # RFC 8689 §4.1
                params += " REQUIRETLS"
            params += "".join(" " + p for p in dsn_mail_params(dsn))
            # RFC 2920: MAIL, the RCPTs and DATA pipelined, replies read in order
            lines = [f"MAIL FROM:<{sender}>{params}\r\n"]
            lines += [f"RCPT TO:<{r}>{dsn_rcpt_params(dsn, r)}\r\n" for r in recipients]
            lines.append("DATA\r\n")
            writer.write("".join(lines).encode("utf-8"))
            mail = await self._reply(reader)
            rcpt_replies = [await self._reply(reader) for _ in recipients]
            data_reply = await self._reply(reader)
            if not mail.is_ok:
                for i in range(len(recipients)):
                    results[i] = mail
                return
            accepted = []
            for i, rep in enumerate(rcpt_replies):
                if rep.is_ok:
                    accepted.append(i)
                else:
                    results[i] = rep
            if not accepted:
                return
            if data_reply.code != 354:
                for i in accepted:
                    results[i] = data_reply if not data_reply.is_ok else R.LOCAL_ERROR
                return
            writer.write(dot_stuff(data))
            writer.write(b".\r\n")
            await writer.drain()
            for i in accepted:  # RFC 2033 §4.2: one reply per accepted recipient
                results[i] = await self._reply(reader)
            writer.write(b"QUIT\r\n")
            try:
                await asyncio.wait_for(reader.read(), 2.0)
            except (TimeoutError, OSError):
                pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def dot_stuff(data: bytes) -> bytes:
    """CRLF line ends, a leading dot doubled (RFC 5321 §4.5.2), final CRLF ensured."""
    text = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\r\n.", b"\r\n..")
