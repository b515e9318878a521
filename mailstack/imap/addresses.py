"""RFC 5322 address lists as IMAP ENVELOPE addresses (RFC 3501 §7.4.2).

A lenient parser for From/To/Cc/... header values: display names, quoted strings,
comments, angle addresses with source routes, groups (``name: a, b;``) and obsolete
forms. Encoded words are left as they are (RFC 3501 leaves decoding to the client).

Invariants: never raises; a group start is ``(NIL NIL "name" NIL)`` and a group end
``(NIL NIL NIL NIL)``; an address without mailbox or domain gets Dovecot's
``MISSING_MAILBOX`` / ``MISSING_DOMAIN`` so it can never look like a group marker.
"""

from __future__ import annotations

from dataclasses import dataclass

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"


@dataclass(frozen=True)
class Address:
    """One ENVELOPE address: personal name, source route (adl), mailbox, host."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


_SPECIALS = set('<>@,;:.')


def _tokens(value: str) -> list[tuple[str, str]]:
    """Tokens: ("atom", text), ("quoted", text), ("comment", text), ("special", ch)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
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
                        break
                buf.append(ch)
                j += 1
            out.append(("comment", "".join(buf).strip()))
            i = j + 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                if value[j] not in "\r\n":
                    buf.append(value[j])
                j += 1
            out.append(("quoted", "".join(buf)))
            i = j + 1
        elif c == "[":
            j = value.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(("atom", value[i : j + 1]))
            i = j + 1
        elif c in _SPECIALS:
            out.append(("special", c))
            i += 1
        else:
            j = i
            while j < n and value[j] not in ' \t\r\n()"[' and value[j] not in _SPECIALS:
                j += 1
            out.append(("atom", value[i:j]))
            i = j
    return out


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    words: list[str] = []
    for kind, text in tokens:
        if kind == "comment":
            continue
        if kind == "special" and text == "." and words:
            words[-1] += "."  # obs-phrase "John Q. Public" (RFC 5322 §4.1)
        elif kind != "special":
            words.append(text)
    return " ".join(words) if words else None


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[str, str]:
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


def _angle(tokens: list[tuple[str, str]]) -> tuple[str | None, str, str]:
    """The inside of <...>: optional route ``@a,@b:`` then addr-spec."""
    route: str | None = None
    if tokens and tokens[0] == ("special", "@"):
        for k, tok in enumerate(tokens):
            if tok == ("special", ":"):
                route = "".join(t for kind, t in tokens[:k] if kind != "comment")
                tokens = tokens[k + 1 :]
                break
    if not [t for t in tokens if t[0] != "comment"]:
        return route, MISSING_MAILBOX, MISSING_DOMAIN
    mailbox, host = _addr_spec(tokens)
    return route, mailbox, host


def parse_address_list(value: str) -> list[Address]:
    """Parse a header value into ENVELOPE addresses (possibly with group markers)."""
    tokens = _tokens(value)
    out: list[Address] = []
    in_group = False
    pending: list[tuple[str, str]] = []

    def flush() -> None:
        if not [t for t in pending if t[0] != "comment"]:
            pending.clear()
            return
        comments = [t for kind, t in pending if kind == "comment" and t]
        mailbox, host = _addr_spec(pending)
        out.append(Address(comments[0] if comments else None, None, mailbox, host))
        pending.clear()

    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "special" and text == "<":
            name = _phrase(pending)
            pending.clear()
            j = i + 1
            while j < len(tokens) and tokens[j] != ("special", ">"):
                j += 1
            route, mailbox, host = _angle(tokens[i + 1 : j])
            out.append(Address(name, route, mailbox, host))
            i = j + 1
            # anything up to the next "," is junk (or a trailing comment)
            while i < len(tokens) and tokens[i] not in (("special", ","), ("special", ";")):
                i += 1
            continue
        if kind == "special" and text == ":" and not in_group:
            out.append(Address(None, None, _phrase(pending) or "", None))
            pending.clear()
            in_group = True
        elif kind == "special" and text == ";" and in_group:
            flush()
            out.append(Address(None, None, None, None))
            in_group = False
        elif kind == "special" and text == ",":
            flush()
        else:
            pending.append((kind, text))
        i += 1
    flush()
    if in_group:  # unterminated group: close it
        out.append(Address(None, None, None, None))
    return out
