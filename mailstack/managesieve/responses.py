"""ManageSieve responses as named values (RFC 5804 §1.2, §1.3, §4).

Invariants:
- A response is a value; the core returns responses, only the adapter writes bytes.
- ``Response.to_bytes()`` is the exact wire form: the data lines before it (capabilities,
  script listings, a script as a literal), then ``OK``/``NO``/``BYE``, an optional
  ``(CODE ...)`` and an optional human-readable string.
- Strings go out quoted when they can (RFC 5804 §4: at most 1024 octets, no CR, LF or NUL;
  ``"`` and ``\\`` escaped) and as a literal ``{n}`` otherwise, so any text is safe to send.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Response",
    "ok",
    "no",
    "bye",
    "string",
    "AUTH_FAILED",
    "AUTH_ABORTED",
    "ENCRYPT_NEEDED",
    "TRYLATER",
    "NONEXISTENT",
    "ACTIVE",
    "ALREADYEXISTS",
    "QUOTA_MAXSIZE",
    "QUOTA_MAXSCRIPTS",
    "QUOTA",
    "INTERNAL",
]

MAX_QUOTED = 1024  # RFC 5804 §4: quoted = DQUOTE *1024QUOTED-CHAR DQUOTE


def string(value: str | bytes) -> bytes:
    """One RFC 5804 string: quoted when allowed, else a literal ``{n}`` CRLF octets."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) <= MAX_QUOTED and not any(c in data for c in b"\r\n\0"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


@dataclass(frozen=True)
class Response:
    """``status`` is OK, NO or BYE; ``code`` the response code with its arguments already
    in wire form (``QUOTA/MAXSIZE``, ``TAG "x"``); ``lines`` the data sent before it."""

    status: str
    text: str = ""
    code: str | None = None
    lines: tuple[bytes, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def to_bytes(self) -> bytes:
        out = [line + b"\r\n" for line in self.lines]
        head = self.status.encode("ascii")
        if self.code:
            head += b" (" + self.code.encode("utf-8") + b")"
        if self.text:
            head += b" " + string(self.text)
        out.append(head + b"\r\n")
        return b"".join(out)


def ok(text: str = "", code: str | None = None, lines: tuple[bytes, ...] = ()) -> Response:
    return Response("OK", text, code, lines)


def no(text: str, code: str | None = None) -> Response:
    return Response("NO", text, code)


def bye(text: str, code: str | None = None) -> Response:
    return Response("BYE", text, code)


# Named responses (wording after Dovecot's managesieve where it has one).
AUTH_FAILED = no("Authentication failed.")  # RFC 5804 §2.1
AUTH_ABORTED = no("Authentication aborted by client.")  # RFC 5804 §2.1: "*" from the client
ENCRYPT_NEEDED = no("Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
                    "ENCRYPT-NEEDED")  # RFC 5804 §1.3
TRYLATER = no("Temporary server failure, try again later.", "TRYLATER")  # RFC 5804 §1.3
NONEXISTENT = no("Script does not exist.", "NONEXISTENT")  # RFC 5804 §1.3
ACTIVE = no("Cannot delete active script.", "ACTIVE")  # RFC 5804 §2.10
ALREADYEXISTS = no("A script with that name already exists.", "ALREADYEXISTS")  # RFC 5804 §2.11.1
QUOTA_MAXSIZE = no("Script is too large.", "QUOTA/MAXSIZE")  # RFC 5804 §1.3
QUOTA_MAXSCRIPTS = no("Too many scripts.", "QUOTA/MAXSCRIPTS")
QUOTA = no("Not enough room for the script.", "QUOTA")
INTERNAL = no("Internal server error, try again later.", "TRYLATER")
