"""IMAP commands of any state and of the not-authenticated state (RFC 3501 §6.1, §6.2).

CAPABILITY (§6.1.1), NOOP (§6.1.2), LOGOUT (§6.1.3), ID (RFC 2971), STARTTLS (§6.2.1),
AUTHENTICATE with SASL PLAIN (§6.2.2, RFC 4616, SASL-IR RFC 4959), LOGIN (§6.2.3) and
ENABLE (RFC 5161). A password is never checked here: LOGIN and AUTHENTICATE yield a
``Login`` effect and the adapter answers through ``login_ok`` / ``login_failed``.

Invariants:
- Plaintext credentials are refused with ``NO [PRIVACYREQUIRED]`` unless TLS is active
  or the session allows plaintext (loopback) (RFC 3501 §6.2.3, §11.1; RFC 5530).
- ``login_ok`` is the only way into the authenticated state; it creates the Maildir and
  the special-use folders (RFC 6154) on first login.
- ENABLE turns on only what this server implements and needs enabling (RFC 5161 §3.1);
  QRESYNC turns CONDSTORE on with it (RFC 7162 §3.2.3).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from mailstack.auth.sasl import parse_plain
from mailstack.storage import Maildir
from mailstack.storage.errors import FolderExists, StorageError

from ..effects import Login, Logout, Output, SaslNeedResponse, StartTLS
from ..responses import Atom, DataResponse, bad, no, ok
from ..states import State
from ..types import AuthenticateArgs, Command, EnableArgs, IdArgs, LoginArgs

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session, UserInfo

__all__ = ["HANDLERS", "ENABLEABLE", "parse_sasl_plain", "sasl_response", "login_ok", "login_failed"]

log = logging.getLogger(__name__)

# What ENABLE can turn on (RFC 5161 §3.1); IMAP4rev2 (RFC 9051 §6.3.1) switches a session
# that announced both revisions to rev2's rules (``Session.rev2``).
ENABLEABLE = frozenset({"CONDSTORE", "QRESYNC", "IMAP4rev2"})


parse_sasl_plain = parse_plain  # RFC 4616, shared with POP3 and ManageSieve (mailstack.auth.sasl)


# -- any state ------------------------------------------------------------------------------
def capability(s: Session, cmd: Command) -> Iterator[Output]:
    yield DataResponse((Atom("CAPABILITY"), *[Atom(c) for c in s.capabilities()])).to_bytes()
    yield ok(cmd.tag, "Capability completed").to_bytes()


def noop(s: Session, cmd: Command) -> Iterator[Output]:
    yield from s.done(cmd, "NOOP completed")  # RFC 3501 §6.1.2: a chance for untagged news


def logout(s: Session, cmd: Command) -> Iterator[Output]:
    s.state = State.LOGOUT
    yield b"* BYE Logging out\r\n" + ok(cmd.tag, "Logout completed").to_bytes()  # RFC 3501 §6.1.3
    yield Logout()


def id_(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, IdArgs)
    if args.params:  # RFC 2971 §3.1: remembered for the log only
        s.client_id = dict(args.params)
        log.debug("imap: client id %s", s.client_id)
    yield b'* ID ("name" "mailstack" "vendor" "mailstack")\r\n'
    yield from s.done(cmd, "ID completed")


def enable(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, EnableArgs)
    # RFC 5161 §3.1: only extensions we support and that need enabling, not yet enabled
    by_upper = {c.upper(): c for c in ENABLEABLE}  # capability names are case-insensitive
    done = list(dict.fromkeys(by_upper[c.upper()] for c in args.capabilities
                              if c.upper() in by_upper and by_upper[c.upper()] not in s.enabled))
    if "QRESYNC" in done:  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE (listed only if asked, as Dovecot)
        s.condstore_on()
    s.enabled.update(done)
    if "IMAP4rev2" in done and s.view is not None:  # RFC 9051 §2.3.2: no \Recent from here on
        s.view.rev2 = True
    yield ("* ENABLED" + "".join(" " + c for c in done) + "\r\n").encode("ascii")
    yield from s.done(cmd, "ENABLE completed")


# -- not authenticated ----------------------------------------------------------------------
def starttls(s: Session, cmd: Command) -> Iterator[Output]:
    if s.tls_active or not s.config.tls_available:
        yield bad(cmd.tag, "TLS not available now").to_bytes()
        return
    yield ok(cmd.tag, "Begin TLS negotiation now").to_bytes()  # RFC 3501 §6.2.1
    yield StartTLS()


def login(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, LoginArgs)
    if not s.login_allowed:  # RFC 3501 §6.2.3, §11.1
        yield no(cmd.tag, "Plaintext authentication disallowed without TLS", "PRIVACYREQUIRED").to_bytes()
        return
    yield Login(cmd.tag, args.userid, args.password, "LOGIN")


def authenticate(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, AuthenticateArgs)
    if args.mechanism != "PLAIN":
        yield no(cmd.tag, "Unsupported authentication mechanism").to_bytes()
        return
    if not s.login_allowed:
        yield no(cmd.tag, "Plaintext authentication disallowed without TLS", "PRIVACYREQUIRED").to_bytes()
        return
    if args.initial_response is None:  # RFC 4959: no SASL-IR, ask for it
        yield SaslNeedResponse(cmd.tag)
        return
    yield from sasl_response(s, cmd.tag, args.initial_response)


def sasl_response(s: Session, tag: str, data: bytes | None) -> Iterator[Output]:
    """The client's AUTHENTICATE PLAIN response (None: it cancelled with ``*``)."""
    if data is None:
        yield bad(tag, "Authentication cancelled").to_bytes()  # RFC 3501 §6.2.2
        return
    creds = parse_sasl_plain(data)
    if creds is None:
        yield bad(tag, "Malformed PLAIN response").to_bytes()
        return
    yield Login(tag, creds[0], creds[1], "PLAIN")


def login_failed(tag: str, temporary: bool = False) -> bytes:
    if temporary:  # RFC 5530 §3
        return no(tag, "Temporary authentication failure, try again later", "UNAVAILABLE").to_bytes()
    return no(tag, "Authentication failed", "AUTHENTICATIONFAILED").to_bytes()


def login_ok(s: Session, tag: str, user: UserInfo) -> bytes:
    """Blocking (creates the Maildir and the special-use folders on first login)."""
    maildir = Maildir.for_user(s.config.maildir_root, user.domain, user.local)
    maildir.ensure()
    for name in s.config.special_use:  # RFC 6154
        if not maildir.has_folder(name):
            try:
                maildir.create_folder(name)
                maildir.subscribe(name)
            except FolderExists:
                pass
            except StorageError as e:
                log.warning("imap: cannot create %s for %s: %s", name, user.address, e)
    s.user, s.maildir = user, maildir
    s.state = State.AUTHENTICATED
    return ok(tag, "Logged in", "CAPABILITY " + " ".join(s.capabilities())).to_bytes()


HANDLERS: Mapping[str, Handler] = {
    "CAPABILITY": capability, "NOOP": noop, "LOGOUT": logout, "ID": id_, "ENABLE": enable,
    "STARTTLS": starttls, "LOGIN": login, "AUTHENTICATE": authenticate,
}
