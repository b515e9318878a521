"""IMAP connection states and the commands allowed in each (RFC 3501 §3, §6).

One table, ``ALLOWED``, says which command may run in which state (``states_of`` reads it
per command for the command table in ``commands``); ``check`` turns a command given in
the wrong state into the response it becomes. ``capabilities`` gives
the CAPABILITY list for a state and connection (RFC 3501 §6.1.1, §6.2).

Invariants: the LOGOUT state allows nothing; every command the grammar knows appears
in at least one state; LOGIN is announced as disabled (LOGINDISABLED) and refused
without TLS except from loopback (RFC 3501 §6.2.3, §11.1 and ``auth.allow_plaintext_on_loopback``).
"""

from __future__ import annotations

import enum

from .responses import ImapError


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})  # RFC 3501 §6.1, RFC 2971
_NOT_AUTH = _ANY | {"STARTTLS", "AUTHENTICATE", "LOGIN"}  # RFC 3501 §6.2
_AUTH = _ANY | {  # RFC 3501 §6.3 and extensions
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST",
    "LSUB", "STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE", "GETQUOTA", "GETQUOTAROOT",
    "SETQUOTA", "COMPRESS",  # RFC 4978 §3: after authentication
}
_SELECTED = _AUTH | {  # RFC 3501 §6.4, RFC 3691 UNSELECT, RFC 6851 MOVE, RFC 5256 SORT
    "CHECK", "CLOSE", "EXPUNGE", "SEARCH", "SORT", "FETCH", "STORE", "COPY", "MOVE", "UNSELECT",
    "THREAD",  # RFC 5256 §5
    "CANCELUPDATE",  # RFC 5267 §4.3.5
}

ALLOWED: dict[State, frozenset[str]] = {
    State.NOT_AUTHENTICATED: frozenset(_NOT_AUTH),
    State.AUTHENTICATED: frozenset(_AUTH),
    State.SELECTED: frozenset(_SELECTED),
    State.LOGOUT: frozenset(),
}

# Commands valid with the UID prefix (RFC 3501 §6.4.8, RFC 4315 UID EXPUNGE, RFC 6851)
UID_COMMANDS = frozenset({"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "EXPUNGE", "THREAD"})


def is_allowed(state: State, name: str) -> bool:
    return name.upper() in ALLOWED[state]


def states_of(name: str) -> frozenset[State]:
    """The states in which ``name`` may run: ``ALLOWED`` read the other way (the command table's column)."""
    upper = name.upper()
    return frozenset(s for s, names in ALLOWED.items() if upper in names)


def check(state: State, name: str) -> None:
    """Raise ``ImapError`` (BAD) when ``name`` is not valid in ``state`` (RFC 3501 §6)."""
    if not is_allowed(state, name):
        raise ImapError("BAD", f"{name.upper()} not allowed in {state.value} state")


BASE_CAPABILITIES = (
    "IMAP4rev1", "IMAP4rev2",  # RFC 9051 §6.3.1: both; ENABLE IMAP4rev2 chooses rev2
    "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT",
    "UIDPLUS", "MOVE", "CHILDREN", "SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS",
    "CONDSTORE", "QRESYNC", "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE",
    "CREATE-SPECIAL-USE", "STATUS=SIZE", "MULTIAPPEND", "BINARY",  # RFC 6154 §3, RFC 8438, RFC 3502, RFC 3516
    "ESEARCH", "SEARCHRES", "SORT", "SORT=DISPLAY", "ESORT",  # RFC 4731, 5182, 5256, 5957, 5267
    "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",  # RFC 5256 §4
    "CATENATE",  # RFC 4469
    "CONTEXT=SEARCH",  # RFC 5267 §4 (not CONTEXT=SORT: SORT results get no updates, as in Dovecot)
    "COMPRESS=DEFLATE",  # RFC 4978 (announced before login too, as Dovecot does)
    "OBJECTID", "SAVEDATE",  # RFC 8474, RFC 8514
)


def capabilities(
    state: State,
    *,
    tls_active: bool,
    tls_available: bool = True,
    plaintext_allowed: bool = False,
    append_limit: int | None = None,
) -> tuple[str, ...]:
    """The CAPABILITY list (RFC 3501 §7.2.1).

    ``plaintext_allowed`` is True when plaintext auth may be used without TLS (a loopback
    client with ``allow_plaintext_on_loopback``).
    """
    caps = list(BASE_CAPABILITIES)
    if append_limit is not None:
        caps.append(f"APPENDLIMIT={append_limit}")  # RFC 7889
    if state is State.NOT_AUTHENTICATED:
        if tls_available and not tls_active:
            caps.append("STARTTLS")  # RFC 3501 §6.2.1
        if tls_active or plaintext_allowed:
            caps.append("AUTH=PLAIN")
        else:
            caps.append("LOGINDISABLED")  # RFC 3501 §6.2.3
    return tuple(caps)
