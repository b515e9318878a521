"""ManageSieve: the protocol core (managesieve/core, managesieve/grammar) on any bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.managesieve import responses as R
from mailstack.managesieve.core import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    Close,
    LoginOK,
    ManageSieveCore,
    Send,
    StartTLS,
    Unauthenticate,
)
from tests.hostile.bounds import SETTINGS, assert_size, bounded

PIECES = [b"AUTHENTICATE \"PLAIN\" \"AGEAYg==\"", b'AUTHENTICATE "PLAIN"', b'"*"', b"STARTTLS", b"CAPABILITY",
          b"LISTSCRIPTS", b'PUTSCRIPT "a" {5+}\r\nkeep;', b'PUTSCRIPT "a" {99999999999+}', b'GETSCRIPT "a"',
          b'SETACTIVE ""', b'HAVESPACE "a" ' + b"9" * 5000, b'RENAMESCRIPT "a" "b"', b"{3+}\r\nabc", b"{0}",
          b'NOOP "' + b"\\" * 3000 + b'"', b"UNAUTHENTICATE", b"LOGOUT", b'"', b"\x00", b"\xff", b"x" * 5000,
          b"{", b"}", b"(", b")"]
sessions = st.lists(st.sampled_from(PIECES), max_size=25).map(lambda cs: b"\r\n".join(cs) + b"\r\n")


def _run(data: bytes, chunk: int) -> int:
    core = ManageSieveCore(tls_available=True)
    sent = 0
    for i in range(0, max(len(data), 1), chunk):
        core.receive_data(data[i : i + chunk])
        while True:
            event = core.next_event()
            if isinstance(event, Send):
                sent += len(event.data)
            elif isinstance(event, Authenticate):
                core.login_done(LoginOK(event.username))
            elif isinstance(event, StartTLS):
                core.tls_done()
            elif isinstance(event, Unauthenticate):
                continue
            elif event is NEED_DATA or isinstance(event, Close):
                break
            elif event is PAUSED:  # pragma: no cover - every effect is answered above
                raise AssertionError("paused without an effect")
            else:  # a script request: the store's answer
                core.request_done(R.ok("done"))
        if isinstance(event, Close):
            break
    return sent


def _check(data: bytes, chunk: int = 512) -> None:
    sent = bounded(_run, data, chunk)
    assert_size(sent, len(data), 64, 4096)  # the greeting, then one bounded reply per line at most


@SETTINGS
@given(st.binary(max_size=3000), st.integers(1, 300))
def test_any_bytes(data: bytes, chunk: int) -> None:
    _check(data, chunk)


@SETTINGS
@given(sessions, st.integers(1, 100))
def test_near_valid_sessions(data: bytes, chunk: int) -> None:
    _check(data, chunk)


def test_a_flood_of_tiny_literals_is_linear() -> None:
    data = b"NOOP " + b"{1+}\r\nx " * 20000 + b"\r\n"
    bounded(_run, data * 5, 4096, seconds=3.0)
