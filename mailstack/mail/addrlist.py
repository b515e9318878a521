"""RFC 5322 address lists, leniently: the ENVELOPE addresses of RFC 3501 §7.4.2.

A lenient parser for From/To/Cc/... header values: display names, quoted strings,
comments, angle addresses with source routes, groups (``name: a, b;``) and obsolete
forms. Encoded words are left as they are (RFC 3501 leaves decoding to the client).
Used by IMAP (ENVELOPE, through ``imap.addresses``) and by the MX (the From: domains
DKIM and DMARC align on), so it must hold up against any header a stranger can send.

Invariants:
- Never raises, never recurses, and ends on any input: every step of the tokenizer
  consumes at least one character (a stray ``)`` or any other character that starts
  no token is dropped), so time is linear in the input.
- Memory is bounded: tokens are produced lazily and at most ``MAX_ADDRESSES`` addresses
  come out of one field (the rest of the field is ignored, as an over-long header is
  by any MUA), so one hostile header cannot fill the server's memory.
- A group start is ``(NIL NIL "name" NIL)`` and a group end ``(NIL NIL NIL NIL)``; an
  address without mailbox or domain gets Dovecot's ``MISSING_MAILBOX`` /
  ``MISSING_DOMAIN`` so it can never look like a group marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"
# Far more than any real list (a 10,000-recipient To: is ~300 KB of header); past it the
# field is cut, so a 25 MB header of "a,a,a,..." cannot become millions of objects.
MAX_ADDRESSES = 10_000


@dataclass(frozen=True)
class Address:
    """One ENVELOPE address: personal name, source route (adl), mailbox, host."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


Token = tuple[str, str]  # ("atom" | "quoted" | "comment" | "special", text)

_SPECIALS = frozenset('<>@,;:.')
_ATOM_STOP = frozenset(' \t\r\n()"[') | _SPECIALS


def _comment(value: str, i: int) -> tuple[str, int]:
    """The comment opening at ``value[i] == "("`` (nested, RFC 5322 §3.2.2) and the index after it."""
    n = len(value)
    depth, j, buf = 1, i + 1, []
    while j < n:
        ch = value[j]
        if ch == "\\" and j + 1 < n:
            buf.append(value[j + 1])
            j += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return "".join(buf).strip(), j + 1
        buf.append(ch)
        j += 1
    return "".join(buf).strip(), n  # unterminated: the rest of the field


def _quoted(value: str, i: int) -> tuple[str, int]:
    """The quoted string opening at ``value[i] == '"'`` (RFC 5322 §3.2.4) and the index after it."""
    n = len(value)
    j, buf = i + 1, []
    while j < n and value[j] != '"':
        if value[j] == "\\" and j + 1 < n:
            j += 1
        if value[j] not in "\r\n":
            buf.append(value[j])
        j += 1
    return "".join(buf), j + 1


def _tokens(value: str) -> Iterator[Token]:
    """Tokens of an address list, lazily. Each step consumes at least one character."""
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            text, i = _comment(value, i)
            yield ("comment", text)
        elif c == '"':
            text, i = _quoted(value, i)
            yield ("quoted", text)
        elif c == "[":  # a domain literal, kept whole (RFC 5322 §3.4.1)
            j = value.find("]", i)
            j = n - 1 if j < 0 else j
            yield ("atom", value[i : j + 1])
            i = j + 1
        elif c in _SPECIALS:
            yield ("special", c)
            i += 1
        elif c == ")":  # a stray ")" closes nothing: drop it (Dovecot's rfc822-parser skips it too)
            i += 1
        else:
            j = i + 1  # c itself is an atom character: never an empty atom, always progress
            while j < n and value[j] not in _ATOM_STOP:
                j += 1
            yield ("atom", value[i:j])
            i = j


def _phrase(tokens: list[Token]) -> str | None:
    words: list[str] = []
    for kind, text in tokens:
        if kind == "comment":
            continue
        if kind == "special" and text == "." and words:
            words[-1] += "."  # obs-phrase "John Q. Public" (RFC 5322 §4.1)
        elif kind != "special":
            words.append(text)
    return " ".join(words) if words else None


def _addr_spec(tokens: list[Token]) -> tuple[str, str]:
    """local@domain from tokens (comments ignored); fills the missing halves."""
    local: list[str] = []
    domain: list[str] = []
    target = local
    for kind, text in tokens:
        if kind == "comment":
            continue
        if kind == "special" and text == "@" and target is local:
            target = domain
            continue
        target.append(text)
    return "".join(local) or MISSING_MAILBOX, "".join(domain) or MISSING_DOMAIN


def _angle(tokens: list[Token]) -> tuple[str | None, str, str]:
    """The inside of <...>: optional route ``@a,@b:`` then addr-spec."""
    route: str | None = None
    if tokens and tokens[0] == ("special", "@"):
        for k, tok in enumerate(tokens):
            if tok == ("special", ":"):
                route = "".join(t for kind, t in tokens[:k] if kind != "comment")
                tokens = tokens[k + 1 :]
                break
    if not any(kind != "comment" for kind, _ in tokens):
        return route, MISSING_MAILBOX, MISSING_DOMAIN
    mailbox, host = _addr_spec(tokens)
    return route, mailbox, host


def parse_address_list(value: str) -> list[Address]:
    """Parse a header value into ENVELOPE addresses (possibly with group markers)."""
    out: list[Address] = []
    in_group = False
    pending: list[Token] = []

    def flush() -> None:
        if any(kind != "comment" for kind, _ in pending):
            comments = [t for kind, t in pending if kind == "comment" and t]
            mailbox, host = _addr_spec(pending)
            out.append(Address(comments[0] if comments else None, None, mailbox, host))
        pending.clear()

    tokens = _tokens(value)
    for kind, text in tokens:
        if len(out) >= MAX_ADDRESSES:
            pending.clear()
            break
        if kind != "special":
            pending.append((kind, text))
        elif text == "<":
            name = _phrase(pending)
            pending.clear()
            inside: list[Token] = []
            for tok in tokens:  # up to the ">" (or the end of the field)
                if tok == ("special", ">"):
                    break
                inside.append(tok)
            route, mailbox, host = _angle(inside)
            out.append(Address(name, route, mailbox, host))
            # anything up to the next "," or ";" is junk (or a trailing comment)
            for tok in tokens:
                if tok in (("special", ","), ("special", ";")):
                    if tok[1] == ";" and in_group:
                        out.append(Address(None, None, None, None))
                        in_group = False
                    break
        elif text == ":" and not in_group:
            out.append(Address(None, None, _phrase(pending) or "", None))
            pending.clear()
            in_group = True
        elif text == ";" and in_group:
            flush()
            out.append(Address(None, None, None, None))
            in_group = False
        elif text == ",":
            flush()
        else:
            pending.append((kind, text))
    flush()
    if in_group:  # unterminated (or cut) group: close it
        out.append(Address(None, None, None, None))
    return out
