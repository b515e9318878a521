"""The POP3 protocol core: bytes in, events out, no I/O (h11 style).

``POP3Core`` takes what the client sent (``receive_data``) and hands back events
(``next_event``): bytes to send, or an *effect* the adapter must carry out and report
back (``Authenticate`` -> ``login_done``, ``StartTLS`` -> ``tls_done``, ``Update`` ->
``update_done``). ``Retrieve`` asks the adapter to stream one message through
``MessageEncoder``. While an effect is outstanding the core is paused: pipelined
commands (RFC 2449 §6.6) stay buffered and are answered strictly in order afterwards.

Invariants:
- States and the commands allowed in each are one table, ``ALLOWED`` (RFC 1939 §3).
- The maildrop is a snapshot taken at login; message numbers are 1..n of that snapshot
  and never change during the session (RFC 1939 §5). Deletions are only marks until
  QUIT in TRANSACTION moves to UPDATE; a dropped connection never reaches UPDATE
  (RFC 1939 §6).
- Data the client sent after STLS is discarded before TLS starts (RFC 2595 §4, against
  command injection).
- A command line is at most ``max_line`` octets; longer lines are answered ``-ERR`` and
  skipped; after ``max_bad`` bad commands the connection is closed.
- Passwords never appear in events other than ``Authenticate``; ``redact`` hides them
  from transcripts.
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from mailstack.auth.sasl import parse_plain

from . import replies as R
from .replies import Reply

log = logging.getLogger(__name__)

__all__ = [
    "State",
    "ALLOWED",
    "MaildropMessage",
    "Maildrop",
    "Send",
    "Authenticate",
    "StartTLS",
    "Retrieve",
    "Update",
    "Close",
    "NEED_DATA",
    "PAUSED",
    "LoginOK",
    "LoginFailed",
    "POP3Core",
    "MessageEncoder",
    "encode_message",
    "uidl_for",
    "redact",
]


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


# RFC 1939 §4-§7, RFC 2449 §5 (CAPA in both), RFC 2595 §4 (STLS), RFC 5034 §4 (AUTH).
ALLOWED: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"USER", "PASS", "AUTH", "CAPA", "STLS", "QUIT"}),
    State.TRANSACTION: frozenset({"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "CAPA", "QUIT"}),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}
KNOWN_COMMANDS: frozenset[str] = frozenset().union(*ALLOWED.values()) | {"APOP"}

MAX_LINE = 4096  # RFC 2449 §4 allows 255 for commands; SASL responses may be longer (RFC 5034 §4)
MAX_BAD_COMMANDS = 20  # Dovecot's CLIENT_MAX_BAD_COMMANDS
MAX_AUTH_ATTEMPTS = 3


def _echo(text: str) -> str:
    """Client text quoted back in a reply: at most 40 characters, control characters as '?'."""
    return "".join(c if c.isprintable() else "?" for c in text[:40])


def uidl_for(uid: int, uidvalidity: int) -> str:
    """Dovecot's default ``pop3_uidl_format = %08Xu%08Xv`` (docs/on-disk.md): its ``%X``
    prints lower-case hex (``000000016b0ecacf``), and clients compare UIDLs as exact strings."""
    return f"{uid:08x}{uidvalidity:08x}"


@dataclass(frozen=True)
class MaildropMessage:
    uid: int
    size: int  # octets as sent: the CRLF size (``,W=``), RFC 1939 §5 "exact size"
    uidl: str
    key: str = ""  # opaque to the core (the adapter's file name)


@dataclass(frozen=True)
class Maildrop:
    messages: tuple[MaildropMessage, ...]


# ---------------------------------------------------------------------------
# events


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Authenticate:
    """Check credentials, lock and snapshot the maildrop; answer with ``login_done``."""

    username: str
    password: str = field(repr=False)
    mechanism: str  # "USER" or "PLAIN"


@dataclass(frozen=True)
class StartTLS:
    """The ``+OK`` has been handed out in a Send before this; start TLS, then ``tls_done``."""


@dataclass(frozen=True)
class Retrieve:
    """Stream one message: ``ok_line``, then MessageEncoder(body_lines) output.

    If the message cannot be read, send ``R.MESSAGE_VANISHED`` instead. No answer to
    the core is needed; it goes on with the next command.
    """

    number: int
    message: MaildropMessage
    body_lines: int | None  # None = RETR (whole message), k = TOP n k
    ok_line: bytes


@dataclass(frozen=True)
class Update:
    """RFC 1939 §6: remove ``expunge`` UIDs atomically, set \\Seen on ``seen``; then ``update_done``."""

    expunge: tuple[int, ...]
    seen: tuple[int, ...]


@dataclass(frozen=True)
class Close:
    reason: str


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")

Event = Send | Authenticate | StartTLS | Retrieve | Update | Close | _Sentinel


@dataclass(frozen=True)
class LoginOK:
    maildrop: Maildrop


@dataclass(frozen=True)
class LoginFailed:
    reply: Reply  # AUTH_FAILED, IN_USE, SYS_TEMP


# ---------------------------------------------------------------------------
# the state machine


class POP3Core:
    """One POP3 connection's protocol state. Not thread-safe; one per connection."""

    def __init__(
        self,
        hostname: str = "localhost",
        *,
        tls_active: bool = False,
        tls_available: bool = False,
        plaintext_allowed: bool = True,
        max_line: int = MAX_LINE,
        max_bad: int = MAX_BAD_COMMANDS,
    ) -> None:
        self.hostname = hostname
        self.state = State.AUTHORIZATION
        self.tls_active = tls_active
        self.tls_available = tls_available
        self._plaintext_allowed = plaintext_allowed
        self.max_line = max_line
        self.max_bad = max_bad
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line
        self._eof = False
        self._out: deque[Event] = deque()
        self._pending: str | None = None  # the effect we wait for: "auth", "tls", "update"
        self._user: str | None = None  # after a successful USER (RFC 1939 §7: PASS follows USER)
        self._sasl_plain = False  # waiting for the AUTH PLAIN continuation line
        self._bad = 0
        self._auth_failures = 0
        self.username: str | None = None
        self._messages: tuple[MaildropMessage, ...] = ()
        self._deleted: set[int] = set()  # message numbers
        self._seen: set[int] = set()  # numbers RETRieved in this session
        self._update_deletes = False
        self._out.append(Send(R.ok(f"{hostname} POP3 ready.").to_bytes()))

    # -- input ---------------------------------------------------------------

    @property
    def plaintext_allowed(self) -> bool:
        return self.tls_active or self._plaintext_allowed

    def receive_data(self, data: bytes) -> None:
        """Feed what the client sent; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
        elif self.state is not State.CLOSED:
            self._buf += data

    def next_event(self) -> Event:
        """The next thing to do, in order. ``NEED_DATA``: read more; ``PAUSED``: finish the effect."""
        while True:
            if self._out:
                return self._out.popleft()
            if self.state is State.CLOSED:
                return Close("closed")
            if self._pending is not None:
                return PAUSED
            line = self._next_line()
            if line is None:
                if self._out:
                    continue
                if self._eof:
                    self.state = State.CLOSED
                    return Close("client closed the connection")
                return NEED_DATA
            self._handle_line(line)

    def _next_line(self) -> bytes | None:
        while True:
            nl = self._buf.find(b"\n")
            if self._discarding:
                if nl < 0:
                    self._buf.clear()
                    return None
                del self._buf[: nl + 1]
                self._discarding = False
                continue
            if nl < 0:
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    self._discarding = True
                    self._sasl_plain = False  # an overlong AUTH response ends the exchange
                    self._bad_command(R.err("Line too long."))
                    if self.state is State.CLOSED:
                        return None
                    continue
                return None
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                self._sasl_plain = False
                self._bad_command(R.err("Line too long."))
                continue
            return line

    # -- effects resolved by the adapter --------------------------------------

    def login_done(self, result: LoginOK | LoginFailed) -> None:
        assert self._pending == "auth", "login_done without Authenticate"
        self._pending = None
        if isinstance(result, LoginOK):
            self.state = State.TRANSACTION
            self._messages = result.maildrop.messages
            self._reply(R.ok("Logged in."))
            return
        self.username = None
        self._auth_failures += 1
        self._reply(result.reply)
        if self._auth_failures >= MAX_AUTH_ATTEMPTS:
            self._close("too many failed logins")

    def tls_done(self) -> None:
        assert self._pending == "tls", "tls_done without StartTLS"
        self._pending = None
        self.tls_active = True
        self._buf.clear()  # RFC 2595 §4: nothing sent before the handshake counts
        self._discarding = False

    def update_done(self, ok: bool) -> None:
        assert self._pending == "update", "update_done without Update"
        self._pending = None
        if not ok:
            self._reply(R.UPDATE_FAILED)
        else:
            self._reply(R.ok("Logging out, messages deleted." if self._update_deletes else "Logging out."))
        self._close("QUIT")

    # -- command dispatch --------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        self._out.append(Send(reply.to_bytes()))

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._buf.clear()
        self._out.append(Close(reason))

    def _bad_command(self, reply: Reply) -> None:
        self._bad += 1
        self._reply(reply)
        if self._bad >= self.max_bad:
            self._reply(R.err("Too many bad commands."))
            self._close("too many bad commands")

    def _handle_line(self, line: bytes) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C: %r", redact(line, self._sasl_plain))
        if self._sasl_plain:
            self._sasl_plain = False
            self._sasl_response(line)
            return
        verb_b, _, args_b = line.partition(b" ")
        try:
            verb = verb_b.decode("ascii").upper()
            args = args_b.decode("utf-8")
        except UnicodeDecodeError:
            self._bad_command(R.err("Invalid characters in command."))
            return
        pending_user, self._user = self._user, None
        if verb not in ALLOWED[self.state]:
            if verb in KNOWN_COMMANDS and verb != "APOP":
                self._bad_command(R.err(f"{verb} not valid in this state."))
            else:
                self._bad_command(R.err(f"Unknown command: {_echo(verb)}"))
            return
        if verb == "PASS":
            self._user = pending_user
        getattr(self, "_cmd_" + verb.lower())(args)

    # -- AUTHORIZATION (RFC 1939 §4, §7; RFC 2449; RFC 2595; RFC 5034) ----------

    def _capabilities(self) -> tuple[bytes, ...]:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self.plaintext_allowed:
                caps += [b"USER", b"SASL PLAIN"]
            if self.tls_available and not self.tls_active:
                caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION mailstack")
        return tuple(caps)

    def _cmd_capa(self, args: str) -> None:
        # RFC 2449 §5
        self._reply(R.ok("Capability list follows", self._capabilities()))

    def _cmd_user(self, args: str) -> None:
        if not self.plaintext_allowed:
            self._bad_command(R.PLAINTEXT_DISALLOWED)
            return
        name = args.strip()
        if not name:
            self._bad_command(R.err("No username given."))
            return
        self._user = name
        self._reply(R.ok())

    def _cmd_pass(self, args: str) -> None:
        if not self.plaintext_allowed:
            self._bad_command(R.PLAINTEXT_DISALLOWED)
            return
        user, self._user = self._user, None
        if user is None:
            self._bad_command(R.err("No username given."))
            return
        # RFC 1939 §7: the password is the rest of the line (it may hold spaces).
        self._authenticate(user, args, "USER")

    def _authenticate(self, username: str, password: str, mechanism: str) -> None:
        self.username = username
        self._pending = "auth"
        self._out.append(Authenticate(username, password, mechanism))

    def _cmd_auth(self, args: str) -> None:
        parts = args.split()
        if not parts:
            # the pre-RFC 5034 listing that Dovecot and some clients still use
            self._reply(R.ok("", (b"PLAIN",) if self.plaintext_allowed else ()))
            return
        mech = parts[0].upper()
        if mech != "PLAIN" or len(parts) > 2:
            self._bad_command(R.err("Unsupported authentication mechanism."))
            return
        if not self.plaintext_allowed:
            self._bad_command(R.PLAINTEXT_DISALLOWED)
            return
        if len(parts) == 2:
            # RFC 5034 §4: initial response; "=" is an empty one
            self._sasl_response(b"" if parts[1] == "=" else parts[1].encode("ascii"), initial=True)
        else:
            self._sasl_plain = True
            self._reply(R.CONTINUE)

    def _sasl_response(self, line: bytes, initial: bool = False) -> None:
        if line.strip() == b"*":
            self._reply(R.err("Authentication aborted by client."))  # RFC 5034 §4
            return
        try:
            raw = base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self._bad_command(R.err("Invalid base64 data in response."))
            return
        if not raw and not initial:
            self._bad_command(R.AUTH_FAILED)
            return
        creds = parse_plain(raw)  # RFC 4616 §2; no proxy authorization (master users)
        if creds is None:
            self._auth_failed_now()
            return
        self._authenticate(*creds, "PLAIN")

    def _auth_failed_now(self) -> None:
        self._auth_failures += 1
        self._reply(R.AUTH_FAILED)
        if self._auth_failures >= MAX_AUTH_ATTEMPTS:
            self._close("too many failed logins")

    def _cmd_stls(self, args: str) -> None:
        # RFC 2595 §4
        if self.tls_active:
            self._bad_command(R.err("TLS is already active."))
            return
        if not self.tls_available:
            self._bad_command(R.err("TLS support isn't enabled."))
            return
        self._reply(R.ok("Begin TLS negotiation now."))
        self._buf.clear()
        self._pending = "tls"
        self._out.append(StartTLS())

    def _cmd_quit(self, args: str) -> None:
        if self.state is State.AUTHORIZATION:
            self._reply(R.ok("Logging out."))
            self._close("QUIT")
            return
        # RFC 1939 §6: QUIT in TRANSACTION enters UPDATE
        self.state = State.UPDATE
        expunge = tuple(self._messages[n - 1].uid for n in sorted(self._deleted))
        seen = tuple(self._messages[n - 1].uid for n in sorted(self._seen - self._deleted))
        if not expunge and not seen:
            self._reply(R.ok("Logging out."))
            self._close("QUIT")
            return
        self._pending = "update"
        self._update_deletes = bool(expunge)
        self._out.append(Update(expunge, seen))

    # -- TRANSACTION (RFC 1939 §5, §7) -----------------------------------------

    def _message_number(self, text: str) -> int | Reply:
        if not text.isdigit() or not text.isascii():
            return R.err(f"Invalid message number: {_echo(text)}")
        if len(text.lstrip("0")) > 10:  # no maildrop is that big; int() of it is wasted work
            return R.err("There's no such message.")
        n = int(text)
        if not 1 <= n <= len(self._messages):
            return R.err(f"There's no message {n}.")
        if n in self._deleted:
            return R.err("Message is deleted.")
        return n

    def _one_number(self, args: str) -> int | None:
        parts = args.split()
        if len(parts) != 1:
            self._bad_command(R.err("Expected one message number." if not parts else "Noise after message number."))
            return None
        n = self._message_number(parts[0])
        if isinstance(n, Reply):
            self._reply(n)
            return None
        return n

    def _live(self) -> list[tuple[int, MaildropMessage]]:
        return [(i, m) for i, m in enumerate(self._messages, 1) if i not in self._deleted]

    def _cmd_stat(self, args: str) -> None:
        live = self._live()
        self._reply(R.ok(f"{len(live)} {sum(m.size for _, m in live)}"))

    def _cmd_list(self, args: str) -> None:
        if args.strip():
            n = self._one_number(args)
            if n is not None:
                self._reply(R.ok(f"{n} {self._messages[n - 1].size}"))
            return
        live = self._live()
        lines = tuple(b"%d %d" % (i, m.size) for i, m in live)
        self._reply(R.ok(f"{len(live)} messages ({sum(m.size for _, m in live)} octets)", lines))

    def _cmd_uidl(self, args: str) -> None:
        if args.strip():
            n = self._one_number(args)
            if n is not None:
                self._reply(R.ok(f"{n} {self._messages[n - 1].uidl}"))
            return
        lines = tuple(b"%d %s" % (i, m.uidl.encode("ascii")) for i, m in self._live())
        self._reply(R.ok("", lines))

    def _cmd_retr(self, args: str) -> None:
        n = self._one_number(args)
        if n is None:
            return
        msg = self._messages[n - 1]
        self._seen.add(n)
        self._out.append(Retrieve(n, msg, None, R.ok(f"{msg.size} octets").to_bytes()))

    def _cmd_top(self, args: str) -> None:
        parts = args.split()
        if len(parts) != 2:
            self._bad_command(R.err("TOP needs a message number and a line count."))
            return
        n = self._message_number(parts[0])
        if isinstance(n, Reply):
            self._reply(n)
            return
        if not parts[1].isdigit() or not parts[1].isascii():
            self._bad_command(R.err(f"Invalid line count: {_echo(parts[1])}"))
            return
        lines = int(parts[1]) if len(parts[1]) <= 18 else 10**18  # any huge count is "all"
        self._out.append(Retrieve(n, self._messages[n - 1], lines, R.ok().to_bytes()))

    def _cmd_dele(self, args: str) -> None:
        n = self._one_number(args)
        if n is not None:
            self._deleted.add(n)
            self._reply(R.ok("Marked to be deleted."))

    def _cmd_rset(self, args: str) -> None:
        # RFC 1939 §5; like Dovecot, also forgets which messages were RETRieved
        self._deleted.clear()
        self._seen.clear()
        live = self._live()
        self._reply(R.ok(f"maildrop has {len(live)} messages ({sum(m.size for _, m in live)} octets)"))

    def _cmd_noop(self, args: str) -> None:
        self._reply(R.ok())


# ---------------------------------------------------------------------------
# message bodies


class MessageEncoder:
    """Streams a message file (LF or CRLF lines) as a POP3 multi-line body.

    ``feed(chunk)`` returns wire bytes: CRLF line ends, dot-stuffed (RFC 1939 §3), any
    chunk boundary. ``finish()`` ends an unterminated last line and adds ``.\\r\\n``.
    With ``body_lines`` = k it is TOP (RFC 1939 §7): the header, the blank line, then k
    body lines; ``done`` turns true once nothing more will be emitted, so the reader
    can stop reading the file.
    """

    def __init__(self, body_lines: int | None = None) -> None:
        self._bol = True
        self._cr = False
        self._limit = body_lines
        self._in_body = False
        self._count = 0
        self._partial = b""
        self.done = False

    def _encode(self, data: bytes) -> bytes:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        if not data:
            return b""
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\n.", b"\n..")
        if self._bol and data.startswith(b"."):
            data = b"." + data
        self._bol = data.endswith(b"\n")
        return data

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        if self._limit is None:
            return self._encode(chunk)
        # Each piece is encoded as it comes; of the line in progress only its first bytes
        # are kept (all _line_done needs to tell a blank line), never the line itself: a
        # long line re-joined with every chunk was quadratic.
        out = []
        start = 0
        while not self.done:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                piece = chunk[start:]
                if piece:
                    out.append(self._encode(piece))
                    self._partial = (self._partial + piece[:3])[:3]
                break
            piece = chunk[start : nl + 1]
            start = nl + 1
            out.append(self._encode(piece))
            head = (self._partial + piece[:3])[:3]
            self._partial = b""
            self._line_done(head)
        return b"".join(out)

    def _line_done(self, line: bytes) -> None:
        """A line ended; ``line`` holds (at least) its first three bytes."""
        if self._in_body:
            self._count += 1
        elif line in (b"\n", b"\r\n"):
            self._in_body = True
        if self._in_body and self._limit is not None and self._count >= self._limit:
            self.done = True

    def finish(self) -> bytes:
        tail = b""
        if self._cr:
            tail += b"\r\n"
            self._cr = False
            self._bol = True
        if not self._bol:
            tail += b"\r\n"
        self.done = True
        return tail + b".\r\n"


def encode_message(chunks: Iterable[bytes], body_lines: int | None = None) -> Iterator[bytes]:
    """All of MessageEncoder in one generator (for tests and small messages)."""
    enc = MessageEncoder(body_lines)
    for chunk in chunks:
        out = enc.feed(chunk)
        if out:
            yield out
        if enc.done:
            break
    yield enc.finish()


def redact(line: bytes, in_sasl: bool = False) -> bytes:
    """A command line fit for a DEBUG transcript: passwords and SASL data hidden."""
    if in_sasl:
        return b"<SASL response hidden>"
    words = line.split(b" ", 2)
    verb = words[0].upper()
    if verb == b"PASS":
        return b"PASS <hidden>"
    if verb == b"AUTH" and len(words) > 2:
        return b"AUTH " + words[1] + b" <hidden>"
    return line[:200]
