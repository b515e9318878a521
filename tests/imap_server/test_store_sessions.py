"""Flags, expunges and moves seen by several sessions at once (issue "IMAP to the letter").

Two (or more) real imaplib sessions on the same mailbox: STORE +FLAGS/-FLAGS applies the
change to the flags on disk (RFC 3501 §6.4.6), never the session's stale view of them.
"""

from __future__ import annotations

import imaplib
import re
import socket
from collections.abc import Iterator

import pytest

from .conftest import IMAPServer, message

Sessions = tuple[imaplib.IMAP4, imaplib.IMAP4]


def _flags(c: imaplib.IMAP4, n: str = "1") -> set[str]:
    """The flags the session knows after a NOOP (the last FETCH FLAGS it got wins)."""
    assert c.noop()[0] == "OK"
    typ, data = c.fetch(n, "(FLAGS)")
    assert typ == "OK"
    line = b" ".join(d if isinstance(d, bytes) else d[0] for d in data if d)
    found = re.findall(rb"FLAGS \(([^)]*)\)", line)
    assert found, line
    return set(found[-1].decode().split())


def _disk_flags(imap: IMAPServer) -> tuple[frozenset[str], frozenset[str]]:
    info = imap.maildir().folder().sync().messages[0]
    return info.flags, info.keywords


@pytest.fixture
def sessions(imap: IMAPServer) -> Iterator[tuple[imaplib.IMAP4, imaplib.IMAP4]]:
    """Two sessions with INBOX selected, both opened before either changes anything."""
    imap.deliver("alice@example.test", message())
    a, b = imap.client(), imap.client()
    try:
        assert a.select("INBOX")[0] == "OK"
        assert b.select("INBOX")[0] == "OK"
        yield a, b
    finally:
        for c in (a, b):
            try:
                c.logout()
            except (imaplib.IMAP4.error, OSError):
                c.shutdown()


def test_add_flags_from_two_sessions_keeps_both(imap: IMAPServer, sessions: Sessions) -> None:
    a, b = sessions
    assert b.store("1", "+FLAGS", r"(\Draft)")[0] == "OK"
    typ, data = a.store("1", "+FLAGS", r"(\Answered)")  # A opened before B's change
    assert typ == "OK"
    assert b"\\Draft" in data[0] and b"\\Answered" in data[0]  # the flags actually written
    assert _disk_flags(imap)[0] == {"\\Draft", "\\Answered"}
    assert {"\\Draft", "\\Answered"} <= _flags(b)


def test_keywords_and_remove_from_two_sessions(imap: IMAPServer, sessions: Sessions) -> None:
    a, b = sessions
    assert a.store("1", "+FLAGS", r"(\Seen $Work)")[0] == "OK"
    assert b.store("1", "+FLAGS", r"($Home \Flagged)")[0] == "OK"
    assert a.store("1", "-FLAGS.SILENT", r"($Work)")[0] == "OK"  # A never saw $Home
    assert _disk_flags(imap) == ({"\\Seen", "\\Flagged"}, {"$Home"})


def test_store_again_after_another_session_removed_it(imap: IMAPServer, sessions: Sessions) -> None:
    """A's view still shows \\Answered after B removed it: +FLAGS must store it anyway."""
    a, b = sessions
    assert a.store("1", "+FLAGS.SILENT", r"(\Answered)")[0] == "OK"
    assert "\\Answered" in _flags(b)
    assert b.store("1", "-FLAGS.SILENT", r"(\Answered)")[0] == "OK"
    assert "\\Answered" not in _disk_flags(imap)[0]
    assert a.store("1", "+FLAGS.SILENT", r"(\Answered)")[0] == "OK"
    assert "\\Answered" in _flags(b)
    assert "\\Answered" in _flags(a)
    assert "\\Answered" in _disk_flags(imap)[0]


def test_silent_store_reports_what_another_session_changed(imap: IMAPServer, sessions: Sessions) -> None:
    a, b = sessions
    assert b.store("1", "+FLAGS.SILENT", r"(\Draft)")[0] == "OK"
    typ, data = a.store("1", "+FLAGS.SILENT", r"(\Seen)")
    assert typ == "OK"
    # the client did not expect \Draft: it hears of it even under .SILENT
    assert any(isinstance(d, bytes) and b"\\Draft" in d for d in data), data


def test_fetch_body_sets_seen_without_losing_another_sessions_flag(imap: IMAPServer, sessions: Sessions) -> None:
    a, b = sessions
    assert b.store("1", "+FLAGS", r"(\Answered)")[0] == "OK"
    typ, data = a.fetch("1", "(BODY[])")  # sets \Seen (RFC 3501 §6.4.5) on A's stale view
    assert typ == "OK"
    assert _disk_flags(imap)[0] == {"\\Answered", "\\Seen"}
    assert {"\\Answered", "\\Seen"} <= _flags(b)


def _transcript(imap: IMAPServer, lines: list[bytes]) -> list[bytes]:
    """Send each command line (tag ``t<i>``) on a raw socket; the replies, one per command."""
    s = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
    out: list[bytes] = []
    try:
        s.recv(4096)
        for i, line in enumerate([b"LOGIN alice@example.test secret", *lines]):
            tag = b"t%d" % i
            s.sendall(tag + b" " + line + b"\r\n")
            data = b""
            while not re.search(rb"(^|\r\n)" + tag + rb" [A-Z]+ [^\r\n]*\r\n", data):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            out.append(data)
    finally:
        s.close()
    return out[1:]


def test_move_and_copy_into_the_selected_mailbox(imap: IMAPServer) -> None:
    """RFC 6851: MOVE into the selected mailbox, as Dovecot: new UID, COPYUID, old one expunged."""
    for subject in ("one", "two", "three"):
        imap.deliver("alice@example.test", message(subject))
    validity = imap.maildir().folder().sync().uidvalidity
    select, move, uid_move, fetch, copy, noop = _transcript(imap, [
        b"SELECT INBOX", b"MOVE 1 INBOX", b"UID MOVE 2 INBOX", b"UID FETCH 1:* (UID)", b"COPY 1 INBOX", b"NOOP"])
    assert b"* 3 EXISTS" in select
    assert move.startswith(b"* OK [COPYUID %d 1 4] Moved\r\n* 1 EXPUNGE\r\n* 3 EXISTS\r\n" % validity)
    assert move.endswith(b"t2 OK MOVE completed\r\n")
    assert uid_move.startswith(b"* OK [COPYUID %d 2 5] Moved\r\n* 1 EXPUNGE\r\n* 3 EXISTS\r\n" % validity)
    assert re.findall(rb"UID (\d+)", fetch) == [b"3", b"4", b"5"]
    assert b"t5 OK [COPYUID %d 3 6] COPY completed" % validity in copy  # COPY there duplicates
    assert b"* 4 EXISTS" in copy + noop
