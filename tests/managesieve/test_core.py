"""The ManageSieve core and command reader, bytes in / events out, no sockets."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.managesieve import responses as R
from mailstack.managesieve.core import (
    NEED_DATA,
    Authenticate,
    CheckScript,
    Close,
    ListScripts,
    LoginOK,
    ManageSieveCore,
    PutScript,
    Send,
    SetActive,
    StartTLS,
    State,
    Unauthenticate,
)
from mailstack.managesieve.grammar import Atom, Command, CommandReader, Fatal, Refusal


def drain(core: ManageSieveCore) -> list[object]:
    """Events up to NEED_DATA or the first effect the adapter must answer (or Close)."""
    out: list[object] = []
    while True:
        ev = core.next_event()
        out.append(ev)
        if not isinstance(ev, (Send, Unauthenticate)):
            return out


def sent(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Send))


def logged_in() -> ManageSieveCore:
    core = ManageSieveCore()
    drain(core)
    token = base64.b64encode(b"\0alice@example.test\0pw")
    core.receive_data(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
    ev = drain(core)
    assert isinstance(ev[-1], Authenticate) and ev[-1].username == "alice@example.test" and ev[-1].password == "pw"
    core.login_done(LoginOK("alice@example.test"))
    assert sent(drain(core)) == b'OK "Logged in."\r\n'
    return core


# -- the reader: one table of inputs (RFC 5804 §4) ---------------------------------------

@pytest.mark.parametrize("wire, expected", [
    (b"NOOP\r\n", Command("NOOP", (), Atom("NOOP"))),
    (b'noop "tag"\r\n', Command("NOOP", (b"tag",), Atom("noop"))),
    (b'PUTSCRIPT "a" {5+}\r\nkeep;\r\n', Command("PUTSCRIPT", (b"a", b"keep;"), Atom("PUTSCRIPT"))),
    (b'PUTSCRIPT "a" {5}\r\nkeep;\r\n', Command("PUTSCRIPT", (b"a", b"keep;"), Atom("PUTSCRIPT"))),  # as Dovecot
    (b'PUTSCRIPT {1+}\r\na {0+}\r\n\r\n', Command("PUTSCRIPT", (b"a", b""), Atom("PUTSCRIPT"))),
    (b'HAVESPACE "x y" 100\n', Command("HAVESPACE", (b"x y", Atom("100")), Atom("HAVESPACE"))),
    (b'GETSCRIPT "q\\"uo\\\\te"\r\n', Command("GETSCRIPT", (b'q"uo\\te',), Atom("GETSCRIPT"))),
    (b'"c2FzbA=="\r\n', Command("", (), b"c2FzbA==")),  # a SASL response line
])
def test_reader_table(wire: bytes, expected: Command) -> None:
    r = CommandReader()
    r.feed(wire)
    assert r.next() == expected


@pytest.mark.parametrize("wire, reason", [
    (b'GETSCRIPT "unterminated\r\n', "syntax"),
    (b'GETSCRIPT "bad \\x escape"\r\n', "syntax"),
    (b'GETSCRIPT "a"b\r\n', "syntax"),
    (b"GETSCRIPT (x)\r\n", "syntax"),
    (b'PUTSCRIPT "a" {2000000+}\r\n', "literal"),
])
def test_reader_refusals(wire: bytes, reason: str) -> None:
    r = CommandReader()
    r.feed(wire)
    item = r.next()
    if reason == "literal":
        assert r.next() is not None and r.buffered < 100  # counted off as it comes, never held
        r.feed(b"x" * 2_000_000 + b"\r\nNOOP\r\n")
        item = r.next()
    assert isinstance(item, Refusal) and item.reason == reason


def test_literal_octets_of_a_refused_command_are_never_commands() -> None:
    r = CommandReader(max_literal=10)
    payload = b"LOGOUT\r\nDELETESCRIPT \"x\"\r\n" * 10
    r.feed(b'PUTSCRIPT "a" {%d+}\r\n' % len(payload) + payload + b"\r\nNOOP\r\n")
    assert isinstance(r.next(), Refusal)
    assert r.next() == Command("NOOP", (), Atom("NOOP"))


def test_a_flood_of_literals_in_one_command_is_counted_not_kept() -> None:
    r = CommandReader()
    r.feed(b"NOOP " + b"{1+}\r\nx " * 100_000)
    assert r.next() is not None and r.buffered < 100
    r.feed(b"\r\n")
    item = r.next()
    assert isinstance(item, Refusal) and item.detail == "more than 4 literals"


def test_too_long_line_is_fatal_and_not_buffered() -> None:
    r = CommandReader(max_line=100)
    r.feed(b"A" * 101)
    assert isinstance(r.next(), Fatal)
    r.feed(b"B" * 10_000)
    assert r.buffered == 0


def test_many_empty_lines_do_not_recurse() -> None:
    r = CommandReader()
    r.feed(b"\r\n" * 50_000 + b"NOOP\r\n")
    assert r.next() == Command("NOOP", (), Atom("NOOP"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=8))
def test_reader_never_raises_whatever_arrives(data: bytes, cuts: list[int]) -> None:
    r = CommandReader(max_line=200, max_literal=50)
    pos = 0
    for n in cuts + [len(data)]:
        r.feed(data[pos:pos + n])
        pos += n
        for _ in range(100):
            item = r.next()
            assert item is not None
            if not isinstance(item, (Command, Refusal)):
                break
    assert r.buffered <= 200 + 50 + 60


# -- the core --------------------------------------------------------------------

def test_greeting_is_the_capabilities_then_ok() -> None:
    core = ManageSieveCore(tls_available=True)
    out = sent(drain(core))
    assert out.startswith(b'"IMPLEMENTATION" "mailstack"\r\n')
    assert b'"STARTTLS"\r\n' in out and b'"VERSION" "1.0"\r\n' in out and b'"SASL" "PLAIN"\r\n' in out
    assert b'"SIEVE" "' in out and b" fileinto " in out and b" regex " in out
    assert out.endswith(b'OK "mailstack ManageSieve ready."\r\n')


def test_plaintext_refused_without_tls_then_allowed_after_starttls() -> None:
    core = ManageSieveCore(tls_available=True, plaintext_allowed=False)
    assert b'"SASL" ""\r\n' in sent(drain(core))
    core.receive_data(b'AUTHENTICATE "PLAIN" "AGEAYg=="\r\n')
    assert sent(drain(core)) == b'NO (ENCRYPT-NEEDED) "Plaintext authentication disallowed on non-secure (SSL/TLS) connections."\r\n'
    core.receive_data(b"STARTTLS\r\nNOOP\r\n")  # the NOOP before the handshake must not count
    ev = drain(core)
    assert sent(ev) == b'OK "Begin TLS negotiation now."\r\n' and isinstance(ev[-1], StartTLS)
    core.tls_done()
    out = sent(drain(core))
    assert b'"SASL" "PLAIN"' in out and b"STARTTLS" not in out and out.endswith(b'OK "TLS negotiation successful."\r\n')
    assert b"Done" not in out


def test_sasl_continuation_and_abort() -> None:
    core = ManageSieveCore()
    drain(core)
    core.receive_data(b'AUTHENTICATE "PLAIN"\r\n')
    assert sent(drain(core)) == b'""\r\n'
    core.receive_data(b'"*"\r\n')
    assert sent(drain(core)) == b'NO "Authentication aborted by client."\r\n'
    token = base64.b64encode(b"\0bob\0pass")
    core.receive_data(b'AUTHENTICATE "PLAIN"\r\n{%d+}\r\n' % len(token) + token + b"\r\n")
    ev = drain(core)
    assert isinstance(ev[-1], Authenticate) and ev[-1].username == "bob"


def test_three_failed_logins_end_the_session() -> None:
    core = ManageSieveCore()
    drain(core)
    core.receive_data(b'AUTHENTICATE "PLAIN" "bm90LXBsYWlu"\r\n' * 3)
    ev = drain(core)
    assert sent(ev).count(b"NO ") == 3 and sent(ev).endswith(b'BYE "Too many failed logins."\r\n')
    assert isinstance(ev[-1], Close) and core.state is State.CLOSED


def test_script_commands_need_login() -> None:
    core = ManageSieveCore()
    drain(core)
    core.receive_data(b'LISTSCRIPTS\r\nPUTSCRIPT "a" "keep;"\r\n')
    assert sent(drain(core)) == (b'NO "LISTSCRIPTS is not allowed in this state."\r\n'
                                 b'NO "PUTSCRIPT is not allowed in this state."\r\n')


def test_scripts_are_compiled_by_the_adapter_not_on_the_loop() -> None:
    # compiling 1 MiB takes seconds: the core hands the text over (scripts.execute compiles
    # it in a thread) and only checks the size itself
    core = logged_in()
    core.receive_data(b'PUTSCRIPT "s" {20+}\r\nkeep;\r\n\r\nfrobnicate;\r\n')
    assert drain(core)[-1] == PutScript("s", b"keep;\r\n\r\nfrobnicate;")
    core.request_done(R.no("line 3: error: unknown command 'frobnicate' (column 1)."))
    core.receive_data(b"CHECKSCRIPT {5+}\r\nkeep;\r\n")
    assert drain(core)[-1] == CheckScript(b"keep;")


def test_requests_pause_the_core_and_keep_order() -> None:
    core = logged_in()
    core.receive_data(b'PUTSCRIPT "s" "keep;"\r\nLISTSCRIPTS\r\nSETACTIVE ""\r\n')
    ev = drain(core)
    assert ev[-1] == PutScript("s", b"keep;")
    core.request_done(R.ok("Putscript completed."))
    ev = drain(core)
    assert sent(ev) == b'OK "Putscript completed."\r\n' and ev[-1] == ListScripts()
    core.request_done(R.ok("x"))
    assert drain(core)[-1] == SetActive("")


@pytest.mark.parametrize("name", [b"../x", b"a/b", b".hidden", b"", b"a\x01b", b"x\xc2\x85", b"\xff", b"a" * 200])
def test_bad_script_names_are_refused(name: bytes) -> None:
    core = logged_in()
    core.receive_data(b"GETSCRIPT {%d+}\r\n" % len(name) + name + b"\r\n")
    assert sent(drain(core)) == b'NO "Invalid script name."\r\n'


def test_unknown_commands_are_counted_and_end_the_session() -> None:
    core = ManageSieveCore(max_bad=3)
    drain(core)
    core.receive_data(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    ev = drain(core)
    assert sent(ev) == b'NO "Unknown command."\r\n' * 3 + b'BYE "Too many invalid commands."\r\n'
    assert isinstance(ev[-1], Close)


def test_unauthenticate_goes_back() -> None:
    core = logged_in()
    core.receive_data(b"UNAUTHENTICATE\r\nLISTSCRIPTS\r\n")
    out = sent(drain(core))
    assert out == b'OK "Unauthenticate completed."\r\nNO "LISTSCRIPTS is not allowed in this state."\r\n'
    assert core.state is State.NON_AUTHENTICATED


def test_strings_that_cannot_be_quoted_go_out_as_literals() -> None:
    assert R.string("a\"b\\c") == b'"a\\"b\\\\c"'
    assert R.string("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert R.string("x" * 1025).startswith(b"{1025}\r\n")
