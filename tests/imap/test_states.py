"""The state table (RFC 3501 §3, §6) and CAPABILITY per state."""

from __future__ import annotations

import pytest

from mailstack.imap.grammar import KNOWN_COMMANDS
from mailstack.imap.responses import ImapError
from mailstack.imap.states import ALLOWED, UID_COMMANDS, State, capabilities, check, is_allowed


def test_every_known_command_has_a_state() -> None:
    allowed_somewhere = set().union(*ALLOWED.values())
    assert KNOWN_COMMANDS <= allowed_somewhere
    assert UID_COMMANDS <= ALLOWED[State.SELECTED]


@pytest.mark.parametrize(("state", "name", "expected"), [
    (State.NOT_AUTHENTICATED, "LOGIN", True),
    (State.NOT_AUTHENTICATED, "AUTHENTICATE", True),
    (State.NOT_AUTHENTICATED, "STARTTLS", True),
    (State.NOT_AUTHENTICATED, "SELECT", False),
    (State.NOT_AUTHENTICATED, "ENABLE", False),
    (State.NOT_AUTHENTICATED, "capability", True),
    (State.NOT_AUTHENTICATED, "ID", True),
    (State.AUTHENTICATED, "LOGIN", False),
    (State.AUTHENTICATED, "STARTTLS", False),
    (State.AUTHENTICATED, "SELECT", True),
    (State.AUTHENTICATED, "APPEND", True),
    (State.AUTHENTICATED, "IDLE", True),
    (State.AUTHENTICATED, "FETCH", False),
    (State.AUTHENTICATED, "CLOSE", False),
    (State.SELECTED, "FETCH", True),
    (State.SELECTED, "UNSELECT", True),
    (State.SELECTED, "MOVE", True),
    (State.SELECTED, "SELECT", True),
    (State.SELECTED, "AUTHENTICATE", False),
    (State.LOGOUT, "NOOP", False),
])
def test_table(state: State, name: str, expected: bool) -> None:
    assert is_allowed(state, name) is expected


def test_check_raises_bad() -> None:
    check(State.SELECTED, "FETCH")
    with pytest.raises(ImapError) as info:
        check(State.NOT_AUTHENTICATED, "FETCH")
    assert info.value.response("a").to_bytes() == b"a BAD FETCH not allowed in not authenticated state\r\n"


def test_capabilities_before_tls_from_remote() -> None:
    caps = capabilities(State.NOT_AUTHENTICATED, tls_active=False)
    assert "STARTTLS" in caps and "LOGINDISABLED" in caps and "AUTH=PLAIN" not in caps
    assert caps[0] == "IMAP4rev1"


def test_capabilities_loopback_plaintext() -> None:
    caps = capabilities(State.NOT_AUTHENTICATED, tls_active=False, plaintext_allowed=True)
    assert "AUTH=PLAIN" in caps and "LOGINDISABLED" not in caps


def test_capabilities_after_tls_and_login() -> None:
    caps = capabilities(State.NOT_AUTHENTICATED, tls_active=True)
    assert "STARTTLS" not in caps and "AUTH=PLAIN" in caps
    caps = capabilities(State.AUTHENTICATED, tls_active=True, append_limit=52428800)
    assert "AUTH=PLAIN" not in caps and "APPENDLIMIT=52428800" in caps
    for ext in ("IDLE", "UIDPLUS", "MOVE", "NAMESPACE", "ID", "ENABLE", "UNSELECT", "SPECIAL-USE",
                "LIST-EXTENDED", "LIST-STATUS", "LITERAL+", "CHILDREN", "CONDSTORE", "QUOTA", "SASL-IR"):
        assert ext in caps


def test_command_table_joins_every_known_command_to_one_handler_and_its_states() -> None:
    # the table in imap/commands takes its states from ALLOWED (one place) and adds the handler
    from mailstack.imap.commands import COMMANDS

    assert set(COMMANDS) == KNOWN_COMMANDS
    for name, spec in COMMANDS.items():
        assert spec.name == name and callable(spec.handler)
        assert spec.states == {s for s in State if name in ALLOWED[s]}
        assert State.LOGOUT not in spec.states and spec.states


def test_every_fetch_item_the_grammar_accepts_has_a_renderer() -> None:
    # imap/commands/fetch.py renders items from RENDERERS (item name -> renderer): a name the
    # grammar lets through without a renderer would be a KeyError for the client's FETCH
    from mailstack.imap.commands.fetch import RENDERERS
    from mailstack.imap.grammar import GrammarError, parse_command
    from mailstack.imap.types import FETCH_MACROS, FetchArgs

    accepted = set()
    names = (  # RFC 3501 §6.4.5, RFC 7162 §3.1.4, and items of extensions this server does not have
        "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT", "BODY",
        "BODYSTRUCTURE", "UID", "MODSEQ", "BODY[]", "BODY.PEEK[1.MIME]", "RFC822.PEEK", "BINARY[]", "BINARY.SIZE[]",
        "EMAILID", "THREADID", "SAVEDATE", "X-GM-LABELS", "PREVIEW",
    )
    for name in names:
        try:
            cmd = parse_command(f"a FETCH 1 ({name})\r\n".encode())
        except GrammarError:
            continue
        assert isinstance(cmd.args, FetchArgs)
        accepted.update(a.name for a in cmd.args.attributes)
    assert accepted == set(RENDERERS)
    assert {a.name for atts in FETCH_MACROS.values() for a in atts} <= set(RENDERERS)
