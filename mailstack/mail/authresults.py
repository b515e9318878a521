"""The ``Authentication-Results:`` header field (RFC 8601): written by us, stripped if forged.

``format_header(authserv_id, results)`` gives one CRLF-terminated, folded field::

    Authentication-Results: mx.example.test;
    \tspf=pass smtp.mailfrom=alice@remote.test;
    \tdkim=pass header.d=remote.test header.s=sel header.b="AbC/dEf+";
    \tdmarc=pass (p=reject dis=none) header.from=remote.test

following the ABNF of RFC 8601 §2.2: ``authserv-id`` first, no version (1 is implied),
``; method=result [reason=...] ptype.property=pvalue ...`` per result, or ``; none``
when nothing was evaluated (§2.2 "no-result"). A pvalue that is neither a token nor
``local-part@domain`` is written as a quoted-string (RFC 2045 token, RFC 5322 §3.2.4);
comments are stripped of anything that would end them early.

``strip_forged(message, authserv_id)`` removes every A-R field that claims our
authserv-id (RFC 8601 §5: a border MTA "MUST" remove or rename such fields arriving
from outside, lest they be trusted), and leaves every other byte of the message alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailstack.mail import headers

__all__ = ["ResInfo", "format_header", "strip_forged", "authserv_id_of", "HEADER_NAME"]

HEADER_NAME = "Authentication-Results"

_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 2045 token: no tspecials
_DOT_ATOM_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class ResInfo:
    """One ``method=result`` with its optional reason, comment and properties."""

    method: str  # spf, dkim, dmarc (RFC 8601 §2.7, RFC 7489 §11.2)
    result: str
    properties: tuple[tuple[str, str], ...] = ()  # ("smtp.mailfrom", "a@b"), ...
    reason: str | None = None
    comment: str | None = None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _clean(text: str) -> str:
    """No control characters or line breaks in anything we write into a header."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def _pvalue(value: str) -> str:
    """RFC 8601 §2.2 ``pvalue = value / [[local-part] "@"] domain-name``."""
    value = _clean(value)
    if _TOKEN_RE.match(value):
        return value
    local, at, domain = value.rpartition("@")
    if at and _DOMAIN_RE.match(domain):
        if local == "" or _DOT_ATOM_RE.match(local):
            return value
        return _quoted(local) + "@" + domain
    return _quoted(value)


def _comment(text: str) -> str:
    text = _clean(text).replace("\\", "").replace("(", "[").replace(")", "]")
    return f"({text})"


def format_header(authserv_id: str, results: Sequence[ResInfo]) -> bytes:
    """The whole field, folded with one result per line, CRLF-terminated."""
    lines = [f"{HEADER_NAME}: {_clean(authserv_id)};" if results else f"{HEADER_NAME}: {_clean(authserv_id)}; none"]
    for i, r in enumerate(results):
        parts = [f"{r.method}={r.result}"]
        if r.comment:
            parts.append(_comment(r.comment))
        if r.reason:
            parts.append(f"reason={_quoted(_clean(r.reason))}")
        parts.extend(f"{name}={_pvalue(value)}" for name, value in r.properties)
        lines.append("\t" + " ".join(parts) + (";" if i < len(results) - 1 else ""))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _skip_cfws(text: str, i: int) -> int:
    """Skip white space and (nested) comments, RFC 5322 §3.2.2."""
    depth = 0
    while i < len(text):
        c = text[i]
        if depth:
            if c == "\\":
                i += 2
                continue
            depth += c == "("
            depth -= c == ")"
        elif c == "(":
            depth = 1
        elif not c.isspace():
            break
        i += 1
    return i


def authserv_id_of(value: str) -> str:
    """The authserv-id of an A-R field value (RFC 8601 §2.2), lower case; "" if none."""
    i = _skip_cfws(value, 0)
    if i < len(value) and value[i] == '"':
        m = re.match(r'"((?:[^"\\]|\\.)*)"', value[i:])
        return re.sub(r"\\(.)", r"\1", m.group(1)).lower() if m else ""
    m = re.match(r"[^\s;()]+", value[i:])
    return m.group(0).rstrip(".").lower() if m else ""


def strip_forged(message: bytes, authserv_id: str) -> tuple[bytes, int]:
    """``message`` without A-R fields that claim ``authserv_id``; (new message, how many removed).

    The fields are read by ``mail.headers`` (``Authentication-Results :`` with white space
    before the colon is one too, RFC 5322 §4.5.3), so what we remove is what a reader sees.
    """
    ours = authserv_id.rstrip(".").lower()
    key = HEADER_NAME.lower()
    return headers.remove_fields(message, lambda f: f.key == key and authserv_id_of(f.value) == ours)
