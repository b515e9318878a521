"""The rspamd HTTP client: ``/checkv2`` on the normal worker, ``/learnspam``/``/learnham`` on
the controller, ``/ping`` on either.

rspamd's protocol (its "v2" HTTP API, the one rspamc and rspamd's own proxy speak): the
message is the request body; the envelope goes in request headers (``IP``, ``Helo``,
``From``, one ``Rcpt`` per recipient, ``Queue-Id``); ``Settings`` carries a JSON settings
object for this one scan. The reply is a JSON object with ``action``, ``score``,
``required_score``, ``symbols``, ``messages`` (``smtp_message``: the text to reject with),
``subject`` (for ``rewrite subject``) and, when rspamd's ``milter_headers`` module is on,
``milter`` (``add_headers``/``remove_headers``).

Invariants:
- The event loop never blocks on rspamd: aiohttp, one session per client, every request
  bounded by ``timeout`` as a whole (connect, send, wait, read);
- anything but a well-formed answer (refused, reset, timed out, an HTTP error, a body that
  is not a JSON object with a string ``action`` and a numeric ``score``, a body over
  ``MAX_REPLY``) is a ``ScanError`` with one line saying what; nothing else is raised;
- header values sent never hold a line end (a client's HELO cannot add a request header).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict

__all__ = [
    "MAX_REPLY",
    "LearnResult",
    "RspamdClient",
    "ScanError",
    "ScanRequest",
    "ScanResult",
    "ping",
]

log = logging.getLogger(__name__)

MAX_REPLY = 1024 * 1024  # bytes of a reply we read; rspamd's are a few KB (symbols and options)
MAX_HEADER_VALUE = 998  # RFC 5322 §2.1.1: a line of a request header stays a sane length


class ScanError(Exception):
    """rspamd could not give a verdict; ``str()`` is one line (for the log and a header)."""


@dataclass(frozen=True)
class ScanRequest:
    """What rspamd is told about one message besides its content."""

    client_ip: str | None = None
    helo: str | None = None
    sender: str = ""  # the envelope MAIL FROM; "" = the null sender
    recipients: tuple[str, ...] = ()
    queue_id: str | None = None
    hostname: str | None = None  # our name (rspamd's MTA-Name)
    settings: Mapping[str, Any] | None = None  # the Settings header (JSON)


@dataclass(frozen=True)
class ScanResult:
    """rspamd's verdict, as it gave it."""

    action: str  # "no action", "add header", "rewrite subject", "soft reject", "greylist", "reject", ...
    score: float
    required_score: float
    symbols: tuple[tuple[str, float], ...] = ()  # (name, score), in rspamd's order
    message: str = ""  # messages.smtp_message
    subject: str | None = None  # the rewritten subject (action "rewrite subject")
    add_headers: tuple[tuple[str, str], ...] = ()  # milter.add_headers, when milter_headers is on
    remove_headers: tuple[str, ...] = ()  # milter.remove_headers


@dataclass(frozen=True)
class LearnResult:
    """A controller's answer to a learn request."""

    ok: bool  # learned, or rspamd will never learn it (too short, already learned): done with it
    retry: bool  # rspamd away or failing: try again later
    detail: str = ""


@dataclass
class RspamdClient:
    """One rspamd (normal worker and/or controller). Use from one event loop; ``close()`` at the end."""

    url: str = ""
    controller_url: str = ""
    password: str = ""
    timeout: float = 5.0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no cookies, no proxies from the environment, no redirects followed (below)
            # A connection per request (rspamd on loopback: cheap): a kept-alive one that rspamd
            # closed meanwhile would fail the next scan and deliver it unscanned.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                                  connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, message: bytes, request: ScanRequest) -> ScanResult:
        """``POST /checkv2``: rspamd's verdict on ``message`` (raises ``ScanError``)."""
        if not self.url:
            raise ScanError("no rspamd_url")
        headers: CIMultiDict[str] = CIMultiDict()
        _put(headers, "IP", request.client_ip)
        _put(headers, "Helo", request.helo)
        _put(headers, "From", request.sender or "<>")
        for rcpt in request.recipients:
            _put(headers, "Rcpt", rcpt)
        _put(headers, "Queue-Id", request.queue_id)
        _put(headers, "MTA-Name", request.hostname)
        if request.settings:
            _put(headers, "Settings", json.dumps(request.settings, separators=(",", ":")))
        status, body = await self._post(self.url.rstrip("/") + "/checkv2", message, headers)
        if status != 200:
            raise ScanError(f"rspamd answered HTTP {status}")
        return parse_check_reply(body)

    async def learn(self, message: bytes, spam: bool, *, deliver_to: str | None = None) -> LearnResult:
        """``POST /learnspam`` or ``/learnham`` on the controller."""
        if not self.controller_url:
            return LearnResult(False, True, "no rspamd_controller_url")
        headers: CIMultiDict[str] = CIMultiDict()
        _put(headers, "Password", self.password or None)
        _put(headers, "Deliver-To", deliver_to)  # per-user statistics, when rspamd keeps them
        url = self.controller_url.rstrip("/") + ("/learnspam" if spam else "/learnham")
        try:
            status, body = await self._post(url, message, headers)
        except ScanError as e:
            return LearnResult(False, True, str(e))
        detail = _error_text(body)
        if status == 200:
            return LearnResult(True, False, "learned")
        # 208: "already learned" (the learn cache), 204: nothing to learn (too few tokens), a
        # 4xx on the message itself: learning it again can never work: done with, not retried.
        if 200 <= status < 300 or (400 <= status < 500 and status not in (401, 403, 408, 429)):
            return LearnResult(True, False, f"not learned: HTTP {status} {detail}".strip())
        return LearnResult(False, True, f"HTTP {status} {detail}".strip())  # 401/403, 5xx: fixable, retried

    async def ping(self, controller: bool = False) -> bool:
        """Does the worker (or the controller) answer ``GET /ping`` with ``pong``?"""
        url = self.controller_url if controller else self.url
        if not url:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                async with self._http().get(url.rstrip("/") + "/ping", allow_redirects=False) as resp:
                    body = await resp.content.read(64)
                    return resp.status == 200 and body.strip() == b"pong"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return False

    async def _post(self, url: str, body: bytes, headers: CIMultiDict[str]) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.timeout):
                async with self._http().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    data = await resp.content.read(MAX_REPLY + 1)
                    if len(data) > MAX_REPLY:
                        raise ScanError(f"rspamd's answer is over {MAX_REPLY} bytes")
                    return resp.status, data
        except TimeoutError:
            raise ScanError(f"rspamd timed out after {self.timeout:g} s") from None
        except aiohttp.ClientConnectorError as e:
            raise ScanError(f"cannot connect to rspamd: {e.os_error.strerror or e.os_error}") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise ScanError(f"rspamd: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))\
                from None


async def ping(url: str, timeout: float = 2.0) -> bool:
    """Is an rspamd worker (or controller) answering at ``url``? For ``mailstack status``:
    ``await ping(cfg.spam.rspamd_url)``; False for "" (not configured) and for any failure."""
    client = RspamdClient(url=url, timeout=timeout)
    try:
        return await client.ping()
    finally:
        await client.close()


def parse_check_reply(body: bytes) -> ScanResult:
    """A ``/checkv2`` reply -> ``ScanResult``; anything malformed is a ``ScanError``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ScanError("rspamd's answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ScanError("rspamd's answer is not a JSON object")
    action = doc.get("action")
    score = doc.get("score")
    required = doc.get("required_score", 0.0)
    if not isinstance(action, str) or not action:
        raise ScanError("rspamd's answer has no action")
    if not _number(score) or not _number(required):
        raise ScanError("rspamd's answer has no numeric score")
    symbols: list[tuple[str, float]] = []
    raw_symbols = doc.get("symbols")
    if isinstance(raw_symbols, dict):
        for name, sym in raw_symbols.items():
            s = sym.get("score", 0.0) if isinstance(sym, dict) else 0.0
            symbols.append((str(name), float(s) if _number(s) else 0.0))
    messages = doc.get("messages")
    message = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    subject = doc.get("subject")
    add: list[tuple[str, str]] = []
    remove: list[str] = []
    milter = doc.get("milter")
    if isinstance(milter, dict):
        add = list(_milter_adds(milter.get("add_headers")))
        rem = milter.get("remove_headers")
        if isinstance(rem, dict):
            remove = [str(k) for k in rem]
    return ScanResult(
        action=action.strip().lower(),
        score=float(score),  # type: ignore[arg-type]
        required_score=float(required),
        symbols=tuple(symbols),
        message=message if isinstance(message, str) else "",
        subject=subject if isinstance(subject, str) else None,
        add_headers=tuple(add),
        remove_headers=tuple(remove),
    )


def _milter_adds(value: object) -> Sequence[tuple[str, str]]:
    """milter_headers' ``add_headers``: name -> "value" | {"value": v, "order": n} | [those]."""
    out: list[tuple[str, str]] = []
    if not isinstance(value, dict):
        return out
    for name, v in value.items():
        items = v if isinstance(v, list) else [v]
        for item in items:
            if isinstance(item, dict):
                item = item.get("value")
            if isinstance(item, str):
                out.append((str(name), item))
    return out


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e9


def _put(headers: CIMultiDict[str], name: str, value: str | None) -> None:
    if value:
        clean = "".join(ch for ch in value if ch >= " " and ch != "\x7f")[:MAX_HEADER_VALUE]
        if clean:
            headers.add(name, clean)


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    err = doc.get("error") if isinstance(doc, dict) else None
    return str(err)[:200] if err else ""
