"""The ManageSieve protocol core (RFC 5804): bytes in, events out, no I/O (h11 style).

``ManageSieveCore`` takes what the client sent (``receive_data``) and hands back events
(``next_event``): bytes to send, or an effect the adapter carries out and reports back:
``Authenticate`` -> ``login_done``, ``StartTLS`` -> ``tls_done``, ``ScriptRequest`` ->
``request_done`` (the response the script store gave), ``Close``. While an effect is
outstanding the core is paused; commands sent meanwhile stay buffered and are answered in
order afterwards.

Invariants:
- States and the commands allowed in each are one table, ``ALLOWED`` (RFC 5804 §2).
- Plaintext SASL (PLAIN) only under TLS, or where the adapter says it is allowed (loopback
  per ``[auth] allow_plaintext_on_loopback``): otherwise ``NO (ENCRYPT-NEEDED)`` and the
  ``SASL`` capability is empty (RFC 5804 §2.1, Dovecot's rule).
- After STARTTLS nothing received before the handshake counts and the capabilities are
  sent again, unasked (RFC 5804 §2.2).
- Script text is compiled by the adapter (``scripts.execute``, in a thread: a 1 MiB script
  takes seconds of CPU, which must not stall the event loop); a script that does not
  compile gets ``NO`` naming the line and column, and nothing is written. Only the size is
  checked here.
- ``max_bad`` bad commands or ``MAX_AUTH_ATTEMPTS`` failed logins end the connection.
- Passwords appear in no event other than ``Authenticate``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
from collections import deque
from dataclasses import dataclass, field

from mailstack.auth.sasl import parse_plain
from mailstack.sieve import EXTENSIONS, MAX_SCRIPT_BYTES
from mailstack.sieve.interp import MAX_REDIRECTS
from mailstack.sieve.store import ScriptError, check_name

from . import responses as R
from .grammar import NEED_DATA as _GRAMMAR_NEED
from .grammar import Atom, Command, CommandReader, Fatal, Refusal
from .responses import Response

log = logging.getLogger(__name__)

__all__ = [
    "ALLOWED",
    "Authenticate",
    "Close",
    "CheckScript",
    "CheckSpace",
    "DeleteScript",
    "GetScript",
    "ListScripts",
    "LoginFailed",
    "LoginOK",
    "ManageSieveCore",
    "NEED_DATA",
    "PAUSED",
    "PutScript",
    "RenameScript",
    "ScriptRequest",
    "Send",
    "SetActive",
    "StartTLS",
    "State",
    "Unauthenticate",
    "sieve_capability",
]


class State(enum.Enum):
    NON_AUTHENTICATED = "NON_AUTHENTICATED"
    AUTHENTICATED = "AUTHENTICATED"
    CLOSED = "CLOSED"


_ANY = frozenset({"CAPABILITY", "LOGOUT", "NOOP"})
# RFC 5804 §2: AUTHENTICATE and STARTTLS before login only (§2.1, §2.2); the script
# commands after it; UNAUTHENTICATE (§2.14) goes back.
ALLOWED: dict[State, frozenset[str]] = {
    State.NON_AUTHENTICATED: _ANY | {"AUTHENTICATE", "STARTTLS"},
    State.AUTHENTICATED: _ANY | {"HAVESPACE", "PUTSCRIPT", "LISTSCRIPTS", "SETACTIVE", "GETSCRIPT",
                                 "DELETESCRIPT", "RENAMESCRIPT", "CHECKSCRIPT", "UNAUTHENTICATE"},
    State.CLOSED: frozenset(),
}
KNOWN_COMMANDS = frozenset().union(*ALLOWED.values())

MAX_BAD_COMMANDS = 20  # Dovecot's CLIENT_MAX_BAD_COMMANDS
MAX_AUTH_ATTEMPTS = 3
MAX_SASL = 12288  # octets of a SASL response (mailstack.auth.MAX_SASL_LINE)


def sieve_capability() -> str:
    """The SIEVE capability: every extension the interpreter runs (RFC 5804 §1.7).
    i;octet and i;ascii-casemap are in every implementation and not listed (as Pigeonhole)."""
    return " ".join(sorted(e for e in EXTENSIONS if e not in ("comparator-i;octet", "comparator-i;ascii-casemap")))


# ---------------------------------------------------------------------------
# events


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Authenticate:
    """Check credentials with the one login path; answer with ``login_done``."""

    username: str
    password: str = field(repr=False)
    mechanism: str = "PLAIN"


@dataclass(frozen=True)
class StartTLS:
    """The ``OK`` has been handed out in a Send before this; start TLS, then ``tls_done``."""


@dataclass(frozen=True)
class Unauthenticate:
    """The session is back before login (RFC 5804 §2.14): forget the user's scripts."""


@dataclass(frozen=True)
class Close:
    reason: str


# script requests: the adapter runs them on the logged-in user's store, then request_done


@dataclass(frozen=True)
class ListScripts:
    pass


@dataclass(frozen=True)
class GetScript:
    name: str


@dataclass(frozen=True)
class PutScript:
    name: str
    text: bytes  # at most max_script octets; not compiled yet


@dataclass(frozen=True)
class CheckScript:
    text: bytes


@dataclass(frozen=True)
class CheckSpace:
    name: str
    size: int


@dataclass(frozen=True)
class SetActive:
    name: str  # "" = none active


@dataclass(frozen=True)
class DeleteScript:
    name: str


@dataclass(frozen=True)
class RenameScript:
    old: str
    new: str


ScriptRequest = (ListScripts | GetScript | PutScript | CheckScript | CheckSpace | SetActive | DeleteScript
                 | RenameScript)


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")

Event = Send | Authenticate | StartTLS | Unauthenticate | Close | ScriptRequest | _Sentinel


@dataclass(frozen=True)
class LoginOK:
    username: str  # the account's canonical address (the OWNER capability)


@dataclass(frozen=True)
class LoginFailed:
    response: Response  # AUTH_FAILED or TRYLATER


# ---------------------------------------------------------------------------
# the state machine


class ManageSieveCore:
    """One ManageSieve connection's protocol state. Not thread-safe; one per connection."""

    def __init__(
        self,
        *,
        tls_active: bool = False,
        tls_available: bool = False,
        plaintext_allowed: bool = True,
        max_bad: int = MAX_BAD_COMMANDS,
        max_script: int = MAX_SCRIPT_BYTES,
    ) -> None:
        self.state = State.NON_AUTHENTICATED
        self.tls_active = tls_active
        self.tls_available = tls_available
        self._plaintext_allowed = plaintext_allowed
        self.max_bad = max_bad
        self.max_script = max_script
        self.reader = CommandReader(max_literal=max_script)
        self._eof = False
        self._out: deque[Event] = deque()
        self._pending: str | None = None  # "auth", "tls", "request"
        self._sasl = False  # waiting for the client's SASL response (RFC 5804 §2.1)
        self._bad = 0
        self._auth_failures = 0
        self.username: str | None = None
        self._reply(R.ok("mailstack ManageSieve ready.", lines=self._capabilities()))

    @property
    def plaintext_allowed(self) -> bool:
        return self.tls_active or self._plaintext_allowed

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed what the client sent; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
        elif self.state is not State.CLOSED:
            self.reader.feed(data)

    def next_event(self) -> Event:
        """The next thing to do, in order. ``NEED_DATA``: read more; ``PAUSED``: finish the effect."""
        while True:
            if self._out:
                return self._out.popleft()
            if self.state is State.CLOSED:
                return Close("closed")
            if self._pending is not None:
                return PAUSED
            item = self.reader.next()
            if item is _GRAMMAR_NEED:
                if self._eof:
                    self.state = State.CLOSED
                    return Close("client closed the connection")
                return NEED_DATA
            if isinstance(item, Fatal):
                self._reply(R.bye("Line too long."))
                self._close(item.detail)
            elif isinstance(item, Refusal):
                self._refused(item)
            elif isinstance(item, Command):
                self._handle(item)

    # -- effects resolved by the adapter --------------------------------------

    def login_done(self, result: LoginOK | LoginFailed) -> None:
        assert self._pending == "auth", "login_done without Authenticate"
        self._pending = None
        if isinstance(result, LoginOK):
            self.state = State.AUTHENTICATED
            self.username = result.username
            self._reply(R.ok("Logged in."))
            return
        self.username = None
        self._auth_failures += 1
        self._reply(result.response)
        if self._auth_failures >= MAX_AUTH_ATTEMPTS:
            self._reply(R.bye("Too many failed logins."))
            self._close("too many failed logins")

    def tls_done(self) -> None:
        assert self._pending == "tls", "tls_done without StartTLS"
        self._pending = None
        self.tls_active = True
        self.reader.discard_buffer()  # RFC 5804 §2.2: nothing sent before the handshake counts
        self._reply(R.ok("TLS negotiation successful.", lines=self._capabilities()))  # RFC 5804 §2.2

    def request_done(self, response: Response) -> None:
        assert self._pending == "request", "request_done without a ScriptRequest"
        self._pending = None
        self._reply(response)

    # -- helpers ------------------------------------------------------------------

    def _reply(self, response: Response) -> None:
        self._out.append(Send(response.to_bytes()))

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._out.append(Close(reason))

    def _bad_command(self, response: Response) -> None:
        self._bad += 1
        self._reply(response)
        if self._bad >= self.max_bad:
            self._reply(R.bye("Too many invalid commands."))
            self._close("too many bad commands")

    def _request(self, request: ScriptRequest) -> None:
        self._pending = "request"
        self._out.append(request)

    def _capabilities(self) -> tuple[bytes, ...]:
        # RFC 5804 §1.7
        s = R.string
        caps = [s("IMPLEMENTATION") + b" " + s("mailstack"),
                s("SASL") + b" " + s("PLAIN" if self.plaintext_allowed else ""),
                s("SIEVE") + b" " + s(sieve_capability())]
        if self.tls_available and not self.tls_active and self.state is State.NON_AUTHENTICATED:
            caps.append(s("STARTTLS"))
        caps.append(s("MAXREDIRECTS") + b" " + s(str(MAX_REDIRECTS)))
        if self.state is State.AUTHENTICATED and self.username:
            caps.append(s("OWNER") + b" " + s(self.username))
        caps += [s("UNAUTHENTICATE"), s("VERSION") + b" " + s("1.0")]
        return tuple(caps)

    def _refused(self, item: Refusal) -> None:
        if self._sasl:
            self._sasl = False
            self._auth_failed_now()
            return
        if item.reason == "literal":
            # RFC 5804 §2.6: a script over the size limit is QUOTA/MAXSIZE; the literal was skipped
            self._bad_command(R.no(f"Command refused: {item.detail}.", "QUOTA/MAXSIZE"))
        else:
            self._bad_command(R.no(f"Syntax error: {item.detail}." if item.detail else "Syntax error."))

    # -- dispatch --------------------------------------------------------------

    def _handle(self, cmd: Command) -> None:
        if self._sasl:
            self._sasl = False
            self._sasl_response(cmd)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C: %s%s", cmd.name, "" if cmd.name == "AUTHENTICATE" else f" ({len(cmd.args)} args)")
        if cmd.name not in ALLOWED[self.state]:
            if cmd.name in KNOWN_COMMANDS:
                self._bad_command(R.no(f"{cmd.name} is not allowed in this state."))
            else:
                self._bad_command(R.no("Unknown command."))
            return
        handler = getattr(self, "_cmd_" + cmd.name.lower())
        handler(cmd.args)

    def _strings(self, args: tuple[Atom | bytes, ...], n: int, name: str, *, optional: int = 0) -> list[bytes] | None:
        """``n`` string arguments (plus up to ``optional`` more); NO and None otherwise."""
        if not n <= len(args) <= n + optional or any(isinstance(a, Atom) for a in args):
            want = f"{n} string argument(s)" if n else "no arguments"
            self._bad_command(R.no(f"{name} takes {want}."))
            return None
        return [a for a in args if isinstance(a, bytes)]

    def _name(self, raw: bytes, allow_empty: bool = False) -> str | None:
        """A script name (RFC 5804 §1.6, plus no "/" and no leading "."); NO and None if bad."""
        try:
            name = raw.decode("utf-8")
            if name or not allow_empty:
                check_name(name)
        except (UnicodeDecodeError, ScriptError):
            self._reply(R.no("Invalid script name."))
            return None
        return name

    def _fits(self, text: bytes) -> bool:
        if len(text) > self.max_script:
            self._reply(R.QUOTA_MAXSIZE)  # RFC 5804 §2.6
            return False
        return True

    # -- any state -----------------------------------------------------------------

    def _cmd_capability(self, args: tuple[Atom | bytes, ...]) -> None:
        if self._strings(args, 0, "CAPABILITY") is not None:
            self._reply(R.ok("Capability completed.", lines=self._capabilities()))  # RFC 5804 §2.4

    def _cmd_logout(self, args: tuple[Atom | bytes, ...]) -> None:
        self._reply(R.ok("Logout completed."))  # RFC 5804 §2.3
        self._close("LOGOUT")

    def _cmd_noop(self, args: tuple[Atom | bytes, ...]) -> None:
        # RFC 5804 §2.13: an optional tag is echoed back in a TAG response code
        strings = self._strings(args, 0, "NOOP", optional=1)
        if strings is None:
            return
        code = "TAG " + R.string(strings[0]).decode("utf-8", "replace") if strings else None
        if strings and not R.string(strings[0]).startswith(b'"'):
            code = None  # a tag that cannot be quoted is not echoed
        self._reply(R.ok("Done", code))

    # -- before login -----------------------------------------------------------------

    def _cmd_starttls(self, args: tuple[Atom | bytes, ...]) -> None:
        if self.tls_active:
            self._bad_command(R.no("TLS is already active."))
            return
        if not self.tls_available:
            self._bad_command(R.no("TLS support isn't enabled."))
            return
        self._reply(R.ok("Begin TLS negotiation now."))
        self.reader.discard_buffer()
        self._pending = "tls"
        self._out.append(StartTLS())

    def _cmd_authenticate(self, args: tuple[Atom | bytes, ...]) -> None:
        # RFC 5804 §2.1: AUTHENTICATE mechanism [initial-response], both strings
        strings = self._strings(args, 1, "AUTHENTICATE", optional=1)
        if strings is None:
            return
        if strings[0].upper() != b"PLAIN":
            self._bad_command(R.no("Unsupported authentication mechanism."))
            return
        if not self.plaintext_allowed:
            self._bad_command(R.ENCRYPT_NEEDED)
            return
        if len(strings) == 2:
            self._sasl_plain(strings[1])
        else:
            self._sasl = True
            self._out.append(Send(b'""\r\n'))  # an empty challenge (RFC 4616 has none)

    def _sasl_response(self, cmd: Command) -> None:
        # the client's response is one string on a line of its own (RFC 5804 §2.1); a
        # bare atom is tolerated as Dovecot does
        if cmd.args:
            self._auth_failed_now()
            return
        self._sasl_plain(cmd.head.text.encode("ascii") if isinstance(cmd.head, Atom) else cmd.head)

    def _sasl_plain(self, data: bytes) -> None:
        if data.strip() == b"*":
            self._reply(R.AUTH_ABORTED)
            return
        if len(data) > MAX_SASL:
            self._auth_failed_now()
            return
        try:
            raw = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            self._bad_command(R.no("Invalid base64 data in response."))
            return
        creds = parse_plain(raw)  # RFC 4616 §2; no proxy authorization (master users)
        if creds is None:
            self._auth_failed_now()
            return
        self._pending = "auth"
        self._out.append(Authenticate(*creds, "PLAIN"))

    def _auth_failed_now(self) -> None:
        self._auth_failures += 1
        self._reply(R.AUTH_FAILED)
        if self._auth_failures >= MAX_AUTH_ATTEMPTS:
            self._reply(R.bye("Too many failed logins."))
            self._close("too many failed logins")

    # -- after login -------------------------------------------------------------------

    def _cmd_unauthenticate(self, args: tuple[Atom | bytes, ...]) -> None:
        if self._strings(args, 0, "UNAUTHENTICATE") is None:
            return
        self.state = State.NON_AUTHENTICATED  # RFC 5804 §2.14
        self.username = None
        self._out.append(Unauthenticate())
        self._reply(R.ok("Unauthenticate completed."))

    def _cmd_listscripts(self, args: tuple[Atom | bytes, ...]) -> None:
        if self._strings(args, 0, "LISTSCRIPTS") is not None:
            self._request(ListScripts())

    def _cmd_getscript(self, args: tuple[Atom | bytes, ...]) -> None:
        strings = self._strings(args, 1, "GETSCRIPT")
        if strings is not None and (name := self._name(strings[0])) is not None:
            self._request(GetScript(name))

    def _cmd_deletescript(self, args: tuple[Atom | bytes, ...]) -> None:
        strings = self._strings(args, 1, "DELETESCRIPT")
        if strings is not None and (name := self._name(strings[0])) is not None:
            self._request(DeleteScript(name))

    def _cmd_setactive(self, args: tuple[Atom | bytes, ...]) -> None:
        strings = self._strings(args, 1, "SETACTIVE")
        if strings is not None and (name := self._name(strings[0], allow_empty=True)) is not None:
            self._request(SetActive(name))  # RFC 5804 §2.8: "" = deactivate

    def _cmd_renamescript(self, args: tuple[Atom | bytes, ...]) -> None:
        strings = self._strings(args, 2, "RENAMESCRIPT")
        if strings is None:
            return
        old = self._name(strings[0])
        if old is None:
            return
        new = self._name(strings[1])
        if new is not None:
            self._request(RenameScript(old, new))

    def _cmd_havespace(self, args: tuple[Atom | bytes, ...]) -> None:
        # RFC 5804 §2.5: HAVESPACE string number
        if len(args) != 2 or not isinstance(args[0], bytes) or not isinstance(args[1], Atom) \
                or not args[1].text.isdigit() or not args[1].text.isascii():
            self._bad_command(R.no("HAVESPACE takes a script name and a size."))
            return
        name = self._name(args[0])
        if name is None:
            return
        digits = args[1].text.lstrip("0") or "0"
        if len(digits) > 10:  # RFC 5804 §4: number is at most 4294967295
            self._reply(R.QUOTA_MAXSIZE)
            return
        self._request(CheckSpace(name, int(digits)))

    def _cmd_putscript(self, args: tuple[Atom | bytes, ...]) -> None:
        strings = self._strings(args, 2, "PUTSCRIPT")
        if strings is None:
            return
        name = self._name(strings[0])
        if name is not None and self._fits(strings[1]):
            self._request(PutScript(name, strings[1]))  # RFC 5804 §2.6

    def _cmd_checkscript(self, args: tuple[Atom | bytes, ...]) -> None:
        strings = self._strings(args, 1, "CHECKSCRIPT")
        if strings is not None and self._fits(strings[0]):
            self._request(CheckScript(strings[0]))  # RFC 5804 §2.12
