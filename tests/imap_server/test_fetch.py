"""FETCH transcripts against the real server (RFC 3501 §6.4.5, §7.4.2; RFC 5530; RFC 2180 §4.1).

A message that another process expunges after the client last heard of it must not
break a FETCH of several messages: the others are answered, the gone one is left out,
the tagged response is ``NO [EXPUNGEISSUED]`` (RFC 5530 §3), and for a non-UID FETCH
the EXPUNGE waits for the next command (RFC 3501 §7.4.1). Each item family takes its
own path to the message file (the index for ENVELOPE/BODY/BODYSTRUCTURE, the file for
sections), so each is tried.
"""

from __future__ import annotations

import re
import socket

import pytest

from .conftest import IMAPServer, message
from .test_commands import raw, until

ALICE = "alice@example.test"


def _session(imap: IMAPServer, n: int = 3) -> socket.socket:
    for i in range(n):
        imap.deliver(ALICE, message(f"m{i}", body=f"body {i}\n"))
    s = raw(imap)
    s.sendall(b"a LOGIN alice@example.test secret\r\nb SELECT INBOX\r\n")
    assert b"b OK" in until(s, b"b")
    return s


def _expunge_elsewhere(imap: IMAPServer, uid: int) -> None:
    """As POP3, Dovecot or another mailstack process would: through storage, not this session."""
    folder = imap.maildir().folder("INBOX")
    assert folder.expunge([uid]) == [uid]


def _fetched(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"^\* (\d+) FETCH", data, re.M)]


@pytest.mark.parametrize("items", [
    b"(FLAGS ENVELOPE)",          # the index path (no file read unless not cached)
    b"(UID BODYSTRUCTURE)",
    b"(BODY RFC822.SIZE)",
    b"(FLAGS BODY.PEEK[HEADER])",  # the file path: read before anything else
    b"(ENVELOPE BODY[TEXT])",       # sets \Seen
])
def test_fetch_with_a_message_expunged_by_another_process(imap: IMAPServer, items: bytes) -> None:
    with _session(imap) as s:
        _expunge_elsewhere(imap, 2)
        s.sendall(b"c FETCH 1:3 " + items + b"\r\n")
        got = until(s, b"c")
        assert _fetched(got) == [1, 3], got
        assert re.search(rb"\r\nc NO \[EXPUNGEISSUED\] [^\r]*\r\n$", b"\r\n" + got), got
        assert b"EXPUNGE\r\n" not in got  # RFC 3501 §7.4.1: not during FETCH
        if b"BODY[TEXT]" in items:  # \Seen set on the two that were fetched (RFC 3501 §6.4.5)
            assert got.count(b"\\Seen") == 2, got
        s.sendall(b"d NOOP\r\n")
        got = until(s, b"d")
        assert b"* 2 EXPUNGE\r\n" in got and b"d OK" in got, got
        s.sendall(b"e FETCH 1:* (FLAGS)\r\n")
        got = until(s, b"e")
        assert _fetched(got) == [1, 2] and b"e OK" in got, got


def test_uid_fetch_with_a_message_expunged_by_another_process(imap: IMAPServer) -> None:
    with _session(imap) as s:
        _expunge_elsewhere(imap, 2)
        s.sendall(b"c UID FETCH 1:3 (FLAGS ENVELOPE)\r\n")
        got = until(s, b"c")
        assert re.findall(rb"UID (\d+)", got) == [b"1", b"3"], got
        # a UID command may be told at once (RFC 3501 §7.4.1), before its tagged response,
        # which is OK: UIDs that no longer exist are ignored (RFC 3501 §6.4.8)
        assert b"* 2 EXPUNGE\r\n" in got and got.index(b"* 2 EXPUNGE") < got.index(b"c OK"), got


def test_fetch_with_every_message_gone_answers_no_and_keeps_the_session(imap: IMAPServer) -> None:
    with _session(imap, 2) as s:
        _expunge_elsewhere(imap, 1)
        _expunge_elsewhere(imap, 2)
        s.sendall(b"c FETCH 1:2 (ENVELOPE)\r\n")
        got = until(s, b"c")
        assert _fetched(got) == [] and b"c NO [EXPUNGEISSUED]" in got, got
        s.sendall(b"d NOOP\r\n")
        got = until(s, b"d")
        assert got.count(b"EXPUNGE\r\n") == 2 and b"d OK" in got, got


def test_fetch_that_sets_seen_reports_flags_it_was_not_asked_for(imap: IMAPServer) -> None:
    with _session(imap, 1) as s:
        s.sendall(b"c FETCH 1 (BODY[TEXT])\r\n")
        got = until(s, b"c")
        assert b"FLAGS (\\Seen \\Recent)" in got and b"c OK FETCH completed" in got, got
        s.sendall(b"d FETCH 1 (BODY[TEXT])\r\n")  # already seen: no FLAGS this time
        got = until(s, b"d")
        assert b"FLAGS" not in got and b"d OK" in got, got
