"""APPEND CATENATE (RFC 4469): the IMAP URLs (RFC 5092) a part may name, and the new
message put together from its TEXT and URL parts; no I/O (the caller reads messages).

Which URLs are taken (the rest are ``BadUrl``, answered ``NO [BADURL url]``, RFC 4469 §6):
- the absolute path form ``/<enc-mailbox>[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]``
  (relative to this server and user, as imaptest and Thunderbird send it), and the same
  path in a full ``imap://[user@]host[:port]/...`` URL when host is this server's hostname
  and the user, if named, is the logged-in one. Parameter names are case-insensitive;
  mailbox and section are %-decoded (UTF-8, RFC 5092 §6) and the section is read with
  FETCH's section grammar (``grammar.parse_section``).
- Not taken: URLAUTH / EXPIRE (RFC 4467 is not offered), search URLs (``?``), anything not
  naming one message. A message that is gone, a UIDVALIDITY that differs, a section that
  does not exist: ``BadUrl`` too (RFC 4469 §3).

Invariants: the message grows part by part and ``TooBig`` is raised as soon as it would
pass the limit, so a URL repeated many times never builds more than ``limit`` bytes; the
bytes of a URL part are the IMAP form (CRLF line ends), as a TEXT literal is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .grammar import MAX_NUMBER, GrammarError, parse_section
from .message import ParsedMessage
from .types import CatenatePart, Section

__all__ = ["BadUrl", "MessageUrl", "TooBig", "badurl_code", "build_message", "parse_url"]


class BadUrl(Exception):
    """A URL that names nothing this user may read (RFC 4469 §6 BADURL)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


class TooBig(Exception):
    """The message would be larger than the server takes (RFC 4469 §6 TOOBIG)."""


@dataclass(frozen=True)
class MessageUrl:
    """What an IMAP URL names: one message (``uid``) of ``mailbox``, or a part of it."""

    url: str
    mailbox: str
    uidvalidity: int | None
    uid: int
    section: Section | None = None
    partial: tuple[int, int | None] | None = None  # (origin, length or None = to the end)


_NUMBER = re.compile(r"[0-9]{1,10}")


def _number(url: str, text: str, nonzero: bool = True) -> int:
    if not _NUMBER.fullmatch(text):
        raise BadUrl(url, "Bad number in URL")
    n = int(text)
    if n > MAX_NUMBER or (nonzero and n == 0):
        raise BadUrl(url, "Number out of range in URL")
    return n


def _decode(url: str, text: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl(url, "URL is not UTF-8") from None


def _param(url: str, segment: str) -> tuple[str, str]:
    name, eq, value = segment.partition("=")
    if not name.startswith(";") or not eq:
        raise BadUrl(url, "Bad URL")
    return name[1:].upper(), value


def parse_url(url: str, *, user: str, hostname: str) -> MessageUrl:
    """The message (part) ``url`` names (RFC 5092 §6, the forms above), or ``BadUrl``."""
    path = url
    if url[:7].lower() == "imap://":
        authority, slash, rest = url[7:].partition("/")
        if not slash:
            raise BadUrl(url, "URL names no message")
        userinfo, at, hostport = authority.rpartition("@")
        host = hostport.rsplit(":", 1)[0] if not hostport.startswith("[") else hostport.split("]")[0] + "]"
        if host.lower() != hostname.lower():
            raise BadUrl(url, "URL of another server")
        if at and _decode(url, userinfo.split(";", 1)[0]).casefold() != user.casefold():
            raise BadUrl(url, "URL of another user")
        path = "/" + rest
    if not path.startswith("/") or "?" in path:
        raise BadUrl(url, "URL names no message")
    segments = path[1:].split("/")
    mailbox_part, *params = segments
    enc_mailbox, _, validity = mailbox_part.partition(";")
    mailbox = _decode(url, enc_mailbox)
    if not mailbox:
        raise BadUrl(url, "URL names no mailbox")
    if mailbox.upper() == "INBOX":
        mailbox = "INBOX"
    uidvalidity = None
    if validity:
        name, value = _param(url, ";" + validity)
        if name != "UIDVALIDITY":
            raise BadUrl(url, "Bad URL")
        uidvalidity = _number(url, value)
    # RFC 5092 §6: iuid [isection] [ipartial], in that order, each once
    wanted = ["UID", "SECTION", "PARTIAL"]
    got: dict[str, str] = {}
    for seg in params:
        name, value = _param(url, seg)
        if name not in wanted:
            raise BadUrl(url, f"URL part {name} is not supported here")
        del wanted[: wanted.index(name) + 1]
        got[name] = value
    if "UID" not in got:
        raise BadUrl(url, "URL names no message")
    section = None
    if "SECTION" in got:
        try:
            section = parse_section(unquote_to_bytes(got["SECTION"]))
        except GrammarError:
            raise BadUrl(url, "Bad section in URL") from None
    partial = None
    if "PARTIAL" in got:
        origin, dot, length = got["PARTIAL"].partition(".")
        partial = (_number(url, origin, nonzero=False), _number(url, length) if dot else None)
    return MessageUrl(url, mailbox, uidvalidity, _number(url, got["UID"]), section, partial)


def extract(raw: ParsedMessage, u: MessageUrl) -> bytes:
    """The bytes ``u`` names in a message (BODY[section]<partial>, RFC 5092 §6)."""
    data = raw.data if u.section is None else raw.section(u.section)
    if data is None:
        raise BadUrl(u.url, "No such part")
    if u.partial is not None:
        origin, length = u.partial
        data = data[origin:] if length is None else data[origin : origin + length]
    return data


def build_message(parts: Sequence[CatenatePart], read: Callable[[MessageUrl], ParsedMessage | None], *,
                  user: str, hostname: str, limit: int) -> bytes:
    """The message of a CATENATE (RFC 4469 §3): the parts' bytes in order. ``read`` gives
    the message a URL names (None: it does not exist, or not with that UIDVALIDITY).
    Raises ``BadUrl`` for the first URL that fails, ``TooBig`` past ``limit`` bytes."""
    out: list[bytes] = []
    total = 0
    for part in parts:
        if part.url is None:
            data = part.text
        else:
            u = parse_url(part.url, user=user, hostname=hostname)
            message = read(u)
            if message is None:
                raise BadUrl(part.url, "No such message")
            data = extract(message, u)
        total += len(data)
        if total > limit:
            raise TooBig()
        out.append(data)
    return b"".join(out)


_URL_TEXT = re.compile(r"[^\x01-\x09\x0b\x0c\x0e-\x5c\x5e-\xfe]")


def badurl_code(url: str) -> str:
    """The ``BADURL url-resp-text`` response code (RFC 4469 §6; the URL bare, as erratum
    4046 says), without the characters url-resp-text cannot hold ("]", CR, LF, NUL)."""
    return "BADURL " + (_URL_TEXT.sub("", url) or "-")
