"""A connection to the old IMAP server, on aioimaplib: connect, STARTTLS, log in, read.

aioimaplib has no STARTTLS and no SASL; both are small: STARTTLS is the command and then
`loop.start_tls` on the same transport (RFC 3501 §6.2.1: capabilities are asked again
after it), SASL PLAIN goes in one line with SASL-IR (RFC 4959), which also carries an
authorization identity for a master user (RFC 4616 §2: authzid NUL authcid NUL password,
Dovecot's master users). Without SASL-IR a plain `LOGIN` is used (no master user then).

A dropped connection must not leave a command waiting for its timeout: the protocol's
`connection_lost` callback fails every call at once with `SourceDropped`, which the
copier answers by reconnecting. `SourceRefused` (bad login, TLS failure, unknown host,
a NO to a command) is not retried: it is the admin's to fix.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aioimaplib  # type: ignore[import-untyped,unused-ignore]

from mailstack.migrate.wire import FetchedMessage, ListEntry, parse_fetch, parse_list, quote

__all__ = ["Security", "SourceDropped", "SourceError", "SourceRefused", "SourceSettings", "SourceConnection"]

T = TypeVar("T")
Security = Literal["tls", "starttls", "plain"]


class SourceError(Exception):
    """Something about the source server; `str()` is one line."""


class SourceDropped(SourceError):
    """The connection broke (closed, reset, timed out): worth a retry."""


class SourceRefused(SourceError):
    """The server said no, or cannot be reached as configured: not worth a retry."""


@dataclass(frozen=True, slots=True)
class SourceSettings:
    host: str
    port: int
    security: Security
    login: str
    password: str
    master_user: str | None = None  # log in as `master_user` on behalf of `login`
    ca_file: str | None = None
    verify: bool = True
    timeout: float = 60.0  # one command (a big FETCH batch gets the same per read)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    @property
    def label(self) -> str:
        """Who/where, for messages and for the state file (no password)."""
        return f"{self.login}@{self.host}:{self.port}"


class SourceConnection:
    """One logged-in session; `open()` then the read calls, `close()` at the end."""

    def __init__(self, settings: SourceSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lost: asyncio.Future[None] | None = None
        self.capabilities: set[str] = set()

    async def open(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        lost = self._lost

        def on_lost(exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(None)

        try:
            if s.security == "tls":
                self._client = aioimaplib.IMAP4_SSL(host=s.host, port=s.port, timeout=s.timeout,
                                                    ssl_context=s.ssl_context())
                self._client.protocol.conn_lost_cb = on_lost
            else:
                self._client = aioimaplib.IMAP4(host=s.host, port=s.port, timeout=s.timeout, conn_lost_cb=on_lost)
            await self._client.wait_hello_from_server()
        except ssl.SSLError as exc:
            raise SourceRefused(f"TLS with {s.host}:{s.port} failed: {exc.reason or exc}") from None
        except (asyncio.TimeoutError, aioimaplib.CommandTimeout):
            raise SourceDropped(f"{s.host}:{s.port} did not greet in {s.timeout:g} s") from None
        except OSError as exc:
            raise SourceRefused(f"cannot connect to {s.host}:{s.port}: {exc.strerror or exc}") from None
        except aioimaplib.AioImapException as exc:
            raise SourceRefused(f"{s.host}:{s.port} did not greet as an IMAP server: {exc}") from None
        if self._client.protocol.state not in ("NONAUTH", "AUTH"):
            raise SourceRefused(f"{s.host}:{s.port} did not greet as an IMAP server")
        if s.security == "starttls":
            await self._starttls()
        self.capabilities = {c.upper() for c in self._client.protocol.capabilities}
        if self._client.protocol.state == "NONAUTH":
            await self._login()
        await self._refresh_capabilities()

    async def _guard(self, call: Awaitable[T]) -> T:
        """Run one call; a lost connection or a timeout is `SourceDropped` at once."""
        assert self._lost is not None
        task: asyncio.Future[T] = asyncio.ensure_future(call)
        lost: asyncio.Future[Any] = self._lost
        waiters: set[asyncio.Future[Any]] = {task, lost}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: S110 - the call is abandoned, its end does not matter
                pass
            raise SourceDropped(f"{self.settings.host}:{self.settings.port} closed the connection")
        try:
            return task.result()
        except (asyncio.TimeoutError, aioimaplib.CommandTimeout):
            raise SourceDropped(f"{self.settings.host}:{self.settings.port} did not answer in time") from None
        except (ConnectionError, aioimaplib.Abort) as exc:
            raise SourceDropped(f"{self.settings.host}:{self.settings.port}: {exc}") from None

    async def command(self, name: str, *args: str, untagged: str | None = None) -> Any:
        """One command as it is (the caller reads the response); `SourceDropped` if the line breaks."""
        return await self._command(name, *args, untagged=untagged)

    async def _command(self, name: str, *args: str, untagged: str | None = None) -> Any:
        protocol = self._client.protocol
        cmd = aioimaplib.Command(name, protocol.new_tag(), *args, untagged_resp_name=untagged,
                                 loop=asyncio.get_running_loop(), timeout=self.settings.timeout)
        return await self._guard(protocol.execute(cmd))

    async def _starttls(self) -> None:
        s = self.settings
        if "STARTTLS" not in {c.upper() for c in self._client.protocol.capabilities}:
            raise SourceRefused(f"{s.host}:{s.port} does not offer STARTTLS")
        response = await self._command("STARTTLS")
        if response.result != "OK":
            raise SourceRefused(f"STARTTLS refused by {s.host}:{s.port}: {_text(response)}")
        protocol = self._client.protocol
        loop = asyncio.get_running_loop()
        try:
            transport = await self._guard(loop.start_tls(protocol.transport, protocol, s.ssl_context(),
                                                         server_hostname=s.host))
        except ssl.SSLError as exc:
            raise SourceRefused(f"TLS with {s.host}:{s.port} failed: {exc.reason or exc}") from None
        protocol.transport = transport
        await self._refresh_capabilities()  # RFC 3501 §6.2.1: forget what was said before TLS

    async def _refresh_capabilities(self) -> None:
        response = await self._command("CAPABILITY")
        if response.result == "OK" and response.lines and isinstance(response.lines[0], bytes):
            words = response.lines[0].decode("ascii", "replace").upper().split()
            self.capabilities = set(words[1:] if words[:1] == ["CAPABILITY"] else words)

    async def _login(self) -> None:
        s = self.settings
        if "LOGINDISABLED" in self.capabilities and s.security == "plain":
            raise SourceRefused(f"{s.host}:{s.port} refuses logins without TLS: use --tls or --starttls")
        if "AUTH=PLAIN" in self.capabilities and "SASL-IR" in self.capabilities:
            authzid, authcid = (s.login, s.master_user) if s.master_user else ("", s.login)
            token = base64.b64encode(f"{authzid}\0{authcid}\0{s.password}".encode()).decode("ascii")
            response = await self._command("AUTHENTICATE", "PLAIN", token)
        elif s.master_user:
            raise SourceRefused(f"{s.host}:{s.port} does not offer SASL-IR with AUTH=PLAIN, needed for a master user")
        else:
            response = await self._command("LOGIN", quote(_ascii(s.login)), quote(_ascii(s.password)))
        if response.result != "OK":
            who = f"{s.master_user} for {s.login}" if s.master_user else s.login
            raise SourceRefused(f"login as {who} at {s.host}:{s.port} failed: {_text(response)}")
        self._client.protocol.state = "AUTH"

    async def list_folders(self) -> list[ListEntry]:
        response = await self._command("LIST", '""', '"*"')
        if response.result != "OK":
            raise SourceRefused(f"LIST failed: {_text(response)}")
        return parse_list(response.lines)

    async def subscriptions(self) -> list[ListEntry]:
        response = await self._command("LSUB", '""', '"*"')
        return parse_list(response.lines) if response.result == "OK" else []

    async def select(self, raw_name: bytes) -> tuple[int, int]:
        """EXAMINE a folder (read-only: nothing changes on the old server): (UIDVALIDITY, EXISTS)."""
        response = await self._command("EXAMINE", quote(raw_name))
        if response.result != "OK":
            raise SourceRefused(f"cannot open folder {raw_name.decode('ascii', 'replace')}: {_text(response)}")
        self._client.protocol.state = "SELECTED"
        validity = exists = 0
        for line in response.lines:
            if isinstance(line, bytes):
                m = re.search(rb"\[UIDVALIDITY (\d+)\]", line)
                if m:
                    validity = int(m.group(1))
                m = re.fullmatch(rb"(\d+) EXISTS", line.strip())
                if m:
                    exists = int(m.group(1))
        return validity, exists

    async def sizes(self) -> dict[int, int]:
        """UID -> RFC822.SIZE of every message of the selected folder (not empty)."""
        out: dict[int, int] = {}
        for msg in await self._fetch("1:*", "(UID RFC822.SIZE)"):
            if msg.uid is not None:
                out[msg.uid] = msg.size if msg.size is not None else 0
        return out

    async def messages(self, uids: list[int]) -> list[FetchedMessage]:
        """The whole of each message (BODY.PEEK: the \\Seen flag stays as it was), flags, date."""
        found = await self._fetch(_uid_set(uids), "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        return [m for m in found if m.uid is not None and m.body is not None]

    async def _fetch(self, uid_set: str, items: str) -> list[FetchedMessage]:
        protocol = self._client.protocol
        cmd = aioimaplib.FetchCommand(protocol.new_tag(), uid_set, items, prefix="UID",
                                      loop=asyncio.get_running_loop(), timeout=self.settings.timeout)
        response = await self._guard(protocol.execute(cmd))
        if response.result != "OK":
            raise SourceRefused(f"FETCH failed: {_text(response)}")
        return parse_fetch(response.lines)

    async def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            if self._lost is not None and not self._lost.done():
                await asyncio.wait_for(client.logout(), 5)
        except Exception:  # a farewell that fails changes nothing
            pass
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()


def _uid_set(uids: list[int]) -> str:
    """Sorted UIDs as a compact sequence set (`1:5,8,10:12`)."""
    parts: list[str] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _text(response: Any) -> str:
    lines = [bytes(line) for line in response.lines if isinstance(line, (bytes, bytearray))]
    return lines[-1].decode("utf-8", "replace").strip()[:200] if lines else str(response.result)


def _ascii(text: str) -> str:
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        raise SourceRefused("a non-ASCII login or password needs AUTH=PLAIN with SASL-IR on the source") from None
    return text
