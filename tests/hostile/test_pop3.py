"""POP3: the protocol core (pop3/core) on any bytes, and the RETR/TOP encoder on any message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.pop3.core import NEED_DATA, PAUSED, Close, POP3Core, Send, encode_message
from tests.hostile.bounds import SETTINGS, assert_size, bounded

VERBS = [b"USER a", b"PASS b", b"AUTH PLAIN", b"AUTH PLAIN =", b"CAPA", b"STLS", b"STAT", b"LIST 1", b"UIDL",
         b"RETR 1", b"TOP 1 " + b"9" * 30, b"RETR " + b"9" * 5000, b"DELE 1", b"QUIT", b"NOOP", b"*", b"\x00",
         b"\xff", b"x" * 5000]
sessions = st.lists(st.sampled_from(VERBS), max_size=25).map(lambda cs: b"\r\n".join(cs) + b"\r\n")


def _run(data: bytes, chunk: int) -> int:
    core = POP3Core("mx.example.test")
    sent = 0
    for i in range(0, max(len(data), 1), chunk):
        core.receive_data(data[i : i + chunk])
        while True:
            event = core.next_event()
            if event is NEED_DATA or event is PAUSED or isinstance(event, Close):
                break
            if isinstance(event, Send):
                sent += len(event.data)
        if event is PAUSED or isinstance(event, Close):
            break
    return sent


def _check(data: bytes, chunk: int = 512) -> None:
    sent = bounded(_run, data, chunk)
    assert_size(sent, len(data), 64, 2048)  # one bounded reply per line at most


@SETTINGS
@given(st.binary(max_size=3000), st.integers(1, 300))
def test_any_bytes(data: bytes, chunk: int) -> None:
    _check(data, chunk)


@SETTINGS
@given(sessions, st.integers(1, 100))
def test_near_valid_sessions(data: bytes, chunk: int) -> None:
    _check(data, chunk)


@SETTINGS
@given(st.binary(max_size=2000), st.integers(1, 200), st.sampled_from([None, 0, 1, 10**18]))
def test_message_encoder(message: bytes, chunk: int, lines: int | None) -> None:
    chunks = [message[i : i + chunk] for i in range(0, len(message), chunk)]
    out = b"".join(bounded(lambda: list(encode_message(chunks, lines))))
    assert_size(len(out), len(message), 3, 8)


def test_top_of_one_long_line_is_linear() -> None:
    """The partial line was re-joined with every chunk: quadratic in the line."""
    chunks = [b"x" * 65536] * 400 + [b"\r\n\r\nbody\r\n"]
    out = b"".join(bounded(lambda: list(encode_message(chunks, 0)), seconds=2.0))  # was 4.5 s
    assert len(out) == 65536 * 400 + 4 + 3
