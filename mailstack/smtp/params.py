"""The arguments of MAIL and RCPT as pure functions: text in, values or a named reply out.

No I/O and no session: the server (``server.BaseSMTP``) hands over the argument text of
the command line (as aiosmtpd decoded it: UTF-8 with surrogate escapes) and what the
session knows (EHLO or HELO, SMTPUTF8, the size limit) and sends whatever ``Reply`` comes
back. The table of edge cases is tests/smtp/test_params.py, the hostile-input property
tests/hostile/test_smtp.py. Rules, each where it is enforced:

- ``MAIL FROM:`` / ``RCPT TO:`` keywords in any case, white space after the colon
  tolerated (as Postfix does; RFC 5321 §4.1.1.2 has none);
- paths (``parse_path``, RFC 5321 §4.1.2): angle brackets required, ``<>`` is the null
  reverse-path, a source route is accepted and ignored (§C), a quoted local part may
  hold ``>``, ``<`` and spaces; the address itself is checked by
  ``mail.address.parse_address`` (address literals allowed in MAIL FROM);
- parameters (``parse_params``, RFC 5321 §4.1.2 ``esmtp-param``): ``keyword[=value]``
  separated by spaces, the keyword ``ALPHA / DIGIT`` then also ``-``, the value printable
  US-ASCII but ``=`` (or UTF-8, RFC 6531 §3.3) and never empty; parameters need EHLO
  (RFC 5321 §4.1.1.11 ties them to the extensions EHLO announced);
- MAIL parameters we know: ``SIZE=`` digits (RFC 1870 §3; over the limit is ``552
  5.3.4`` at once, §6.2), ``BODY=7BIT|8BITMIME`` (RFC 6152), ``SMTPUTF8`` without a
  value (RFC 6531 §3.4), and where DSN is offered ``RET=`` and ``ENVID=`` (RFC 3461
  §4.3, §4.4); RCPT takes ``NOTIFY=`` and ``ORCPT=`` there (§4.1, §4.2), none elsewhere;
  a malformed DSN value is ``501 5.5.4`` (the rules are in ``mail.dsnrequest``); any
  other parameter is ``555 5.5.4`` (RFC 5321 §4.1.1.11);
- a non-ASCII address needs ``SMTPUTF8`` on the MAIL command: ``553 5.6.7`` (RFC 6531 §3.4);
- a later parameter of the same name wins (aiosmtpd's reading, kept).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mailstack.mail import dsnrequest
from mailstack.mail.address import AddressError, parse_address
from mailstack.smtp import replies as R
from mailstack.smtp.replies import Reply

__all__ = [
    "MailArgs",
    "RcptArgs",
    "parse_mail",
    "parse_params",
    "parse_path",
    "parse_rcpt",
    "strip_keyword",
    "MAIL_SYNTAX",
    "RCPT_SYNTAX",
    "BAD_SENDER",
    "BAD_RECIPIENT",
    "NEEDS_SMTPUTF8",
]

MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")  # RFC 6531 §3.4
PARAMS_NEED_EHLO = R.BAD_SYNTAX.with_text("MAIL parameters need EHLO")
SIZE_NOT_NUMBER = R.BAD_SYNTAX.with_text("SIZE takes a number")
BAD_BODY = Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
SMTPUTF8_VALUE = R.BAD_SYNTAX.with_text("SMTPUTF8 takes no value")

MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8", "REQUIRETLS"})
DSN_MAIL_PARAMS = frozenset({"RET", "ENVID"})  # RFC 3461 §4.3, §4.4
DSN_RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})  # RFC 3461 §4.1, §4.2
BAD_RET = Reply(501, "5.5.4", "RET must be FULL or HDRS")
BAD_ENVID = Reply(501, "5.5.4", "ENVID must be xtext of printable US-ASCII, at most 100 octets")
BAD_NOTIFY = Reply(501, "5.5.4", "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
BAD_ORCPT = Reply(501, "5.5.4", "ORCPT must be addr-type;xtext, at most 500 octets")
REQUIRETLS_VALUE = R.BAD_SYNTAX.with_text("REQUIRETLS takes no value")  # RFC 8689 §4
MAX_SIZE_DIGITS = 20  # more cannot be a size; int() of thousands of digits is slow

# RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
# esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531 §3.3).
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE_RE = re.compile(r"[\x21-\x3c\x3e-\x7e\x80-\U0010ffff]+\Z")


@dataclass(frozen=True, slots=True)
class MailArgs:
    """A MAIL command that may go to the policy: the reverse-path and its parameters."""

    sender: str  # "" is the null reverse-path
    size: int | None = None  # SIZE= hint
    body: str = "7BIT"  # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None  # RFC 3461 RET: "FULL" or "HDRS"
    envid: str | None = None  # RFC 3461 ENVID, xtext-decoded
    requiretls: bool = False  # RFC 8689: relay only over verified TLS


@dataclass(frozen=True, slots=True)
class RcptArgs:
    """A RCPT command that may go to the policy."""

    recipient: str
    notify: frozenset[str] | None = None  # RFC 3461 NOTIFY; empty = NEVER; None = not given
    orcpt: str | None = None  # RFC 3461 ORCPT, "addr-type;decoded"


def strip_keyword(keyword: str, arg: str) -> str | None:
    """``arg`` after ``keyword`` (any case) with white space trimmed; None if it does not start so."""
    if arg[: len(keyword)].upper() == keyword:
        return arg[len(keyword):].strip()
    return None


def parse_path(text: str) -> tuple[str, str] | None:
    """``<local@domain> PARAMS`` -> (address, params); ``<>`` -> ("", params); None if malformed.

    RFC 5321 §4.1.2 Reverse-path / Forward-path: angle brackets required; a source route
    (``<@a,@b:user@d>``) is accepted and ignored (§C); quoted local parts may hold ``>``.
    The address itself is checked later by ``mail.address.parse_address``. Linear.
    """
    text = text.lstrip()
    if not text.startswith("<"):
        return None
    i, n = 1, len(text)
    quoted = False
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ">":
            break
        elif ch in " \t" or ch == "<":
            return None
        i += 1
    else:
        return None
    inner = text[1:i]
    rest = text[i + 1 :]
    if rest and not rest.startswith(" "):
        return None
    if inner.startswith("@"):  # source route: drop up to the colon
        colon = inner.find(":")
        if colon < 0:
            return None
        inner = inner[colon + 1 :]
    if inner and ("@" not in inner or inner.endswith("@")):
        return None
    return inner, rest.strip()


class _Bad:
    """A parameter whose value does not parse (``_value``)."""


_BAD = _Bad()
_T = TypeVar("_T")


def _value(params: dict[str, str | bool], name: str, parse: Callable[[str], _T | None]) -> _T | _Bad | None:
    """Parameter ``name`` parsed by ``parse``: None when absent, ``_BAD`` when it has no
    value or ``parse`` refuses it (RFC 3461's RET, ENVID, NOTIFY, ORCPT all take one)."""
    if name not in params:
        return None
    raw = params[name]
    got = parse(raw) if isinstance(raw, str) else None
    return _BAD if got is None else got


def parse_params(text: str) -> dict[str, str | bool] | None:
    """``KEY=value KEY ...`` -> {upper-case keyword: value, or True without one}; None when
    a parameter is not ``esmtp-param`` (RFC 5321 §4.1.2)."""
    out: dict[str, str | bool] = {}
    for param in text.split():
        key, eq, value = param.partition("=")
        if not _KEYWORD_RE.match(key) or (eq and not _VALUE_RE.match(value)):
            return None
        out[key.upper()] = value if eq else True
    return out


def parse_mail(arg: str | None, *, extended: bool, max_size: int, dsn: bool = False) -> MailArgs | Reply:
    """The argument of MAIL (``FROM:<path> [params]``): its values, or the reply that refuses it.

    ``extended``: the session began with EHLO; ``max_size``: the SIZE limit we announced;
    ``dsn``: we announced DSN (RFC 3461).
    """
    rest = strip_keyword("FROM:", arg or "")
    if rest is None:
        return MAIL_SYNTAX
    parsed = parse_path(rest)
    if parsed is None:
        return BAD_SENDER
    sender, params_text = parsed
    if sender:
        try:
            parse_address(sender, allow_literal=True)
        except AddressError as e:
            return BAD_SENDER.with_text(f"Bad sender address syntax: {e}")
    params = parse_params(params_text)
    if params is None:
        return R.BAD_SYNTAX
    if params and not extended:
        return PARAMS_NEED_EHLO
    unknown = set(params) - MAIL_PARAMS - (DSN_MAIL_PARAMS if dsn else frozenset())
    if unknown:  # RFC 5321 §4.1.1.11
        return Reply(555, "5.5.4", f"MAIL parameter {sorted(unknown)[0]} not supported")
    size: int | None = None
    raw_size = params.get("SIZE")
    if raw_size is not None:
        if not isinstance(raw_size, str) or not raw_size.isdigit() or not raw_size.isascii() \
                or len(raw_size) > MAX_SIZE_DIGITS:
            return SIZE_NOT_NUMBER
        size = int(raw_size)
        if size > max_size:  # RFC 1870 §6.2
            return R.TOO_BIG
    body = params.get("BODY", "7BIT")
    if not isinstance(body, str) or body.upper() not in ("7BIT", "8BITMIME"):
        return BAD_BODY
    smtputf8 = params.get("SMTPUTF8", False)
    if smtputf8 is not True and smtputf8 is not False:
        return SMTPUTF8_VALUE
    if not smtputf8 and not sender.isascii():
        return NEEDS_SMTPUTF8
    requiretls = params.get("REQUIRETLS", False)
    if requiretls is not True and requiretls is not False:
        return REQUIRETLS_VALUE
    ret = _value(params, "RET", dsnrequest.parse_ret)
    if isinstance(ret, _Bad):
        return BAD_RET
    envid = _value(params, "ENVID", dsnrequest.parse_envid)
    if isinstance(envid, _Bad):
        return BAD_ENVID
    return MailArgs(sender, size, body.upper(), smtputf8, ret, envid, requiretls)


def parse_rcpt(arg: str | None, *, smtputf8: bool, dsn: bool = False) -> RcptArgs | Reply:
    """The argument of RCPT (``TO:<path> [params]``); ``smtputf8``: MAIL said SMTPUTF8;
    ``dsn``: we announced DSN (RFC 3461)."""
    rest = strip_keyword("TO:", arg or "")
    if rest is None:
        return RCPT_SYNTAX
    parsed = parse_path(rest)
    if parsed is None or not parsed[0]:
        return BAD_RECIPIENT
    address, params_text = parsed
    params = parse_params(params_text)
    if params is None:
        return R.BAD_SYNTAX
    unknown = set(params) - (DSN_RCPT_PARAMS if dsn else frozenset())
    if unknown:  # RFC 5321 §4.1.1.11: DSN's are the only RCPT parameters we announce
        return Reply(555, "5.5.4", f"RCPT parameter {sorted(unknown)[0]} not supported")
    if not smtputf8 and not address.isascii():
        return NEEDS_SMTPUTF8
    notify = _value(params, "NOTIFY", dsnrequest.parse_notify)
    if isinstance(notify, _Bad):
        return BAD_NOTIFY
    orcpt = _value(params, "ORCPT", dsnrequest.parse_orcpt)
    if isinstance(orcpt, _Bad):
        return BAD_ORCPT
    return RcptArgs(address, notify, orcpt)
