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

from mailstack.imap import expunged
from mailstack.imap.expunged import KEPT

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
    assert _disk_flags(imap) == (frozenset({"\\Seen", "\\Flagged"}), frozenset({"$Home"}))


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


def _command(sock: socket.socket, tag: bytes, line: bytes) -> bytes:
    """Send one tagged command line; everything up to and including its tagged reply."""
    sock.sendall(tag + b" " + line + b"\r\n")
    data = b""
    while not re.search(rb"(^|\r\n)" + tag + rb" [A-Z]+ [^\r\n]*\r\n", data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _transcript(imap: IMAPServer, lines: list[bytes]) -> list[bytes]:
    """Send each command line (tag ``t<i>``) on a raw socket; the replies, one per command."""
    s = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
    out: list[bytes] = []
    try:
        s.recv(4096)
        for i, line in enumerate([b"LOGIN alice@example.test secret", *lines]):
            out.append(_command(s, b"t%d" % i, line))
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


def test_fetch_of_a_message_another_session_expunged(imap: IMAPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 2180 §4.1: A still sees message 1 after B expunged it and gets its bytes until
    it is told; then sequence number 1 is the next message. The kept file is released."""
    imap.deliver("alice@example.test", message("first", "body of the first\n"))
    imap.deliver("alice@example.test", message("second", "body of the second\n"))
    a_sel, = _transcript(imap, [b"SELECT INBOX"])  # a session that ends: its view is no viewer
    assert b"* 2 EXISTS" in a_sel
    a = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
    try:
        a.recv(4096)

        def cmd(tag: bytes, line: bytes) -> bytes:
            return _command(a, tag, line)

        cmd(b"a0", b"LOGIN alice@example.test secret")
        assert b"* 2 EXISTS" in cmd(b"a1", b"SELECT INBOX")
        monkeypatch.setattr(expunged, "GRACE", 0.0)
        KEPT.release()  # what earlier tests of this process left
        expunge = _transcript(imap, [b"SELECT INBOX", b"STORE 1 +FLAGS.SILENT (\\Deleted)", b"EXPUNGE"])[2]
        assert b"* 1 EXPUNGE" in expunge
        assert len(KEPT) == 1  # A still lists it
        got = cmd(b"a2", b"FETCH 1 (BODY[])")
        assert b"body of the first" in got and b"a2 OK" in got, got
        assert b"EXPUNGE" not in got  # RFC 3501 §7.4.1: not during FETCH
        got = cmd(b"a3", b"FETCH 1 (ENVELOPE BODY.PEEK[TEXT])")
        assert b"body of the first" in got and b"a3 OK" in got, got
        got = cmd(b"a4", b"NOOP")
        assert b"* 1 EXPUNGE\r\n" in got
        KEPT.release()
        assert len(KEPT) == 0  # told, and the grace is over: the file is let go
        got = cmd(b"a5", b"FETCH 1 (BODY.PEEK[])")
        assert b"body of the second" in got and b"a5 OK" in got
        cmd(b"a6", b"LOGOUT")
    finally:
        a.close()


def test_fetch_of_a_message_removed_by_another_process(imap: IMAPServer, sessions: Sessions) -> None:
    """Removed outside this server (nothing kept): FETCH says EXPUNGEISSUED (RFC 5530 §3);
    UID FETCH ignores UIDs that no longer exist (RFC 3501 §6.4.8)."""
    a, _ = sessions
    imap.maildir().folder().expunge([1])
    typ, data = a.fetch("1", "(BODY.PEEK[])")
    assert typ == "NO" and b"EXPUNGEISSUED" in bytes(data[0] or b""), data  # type: ignore[arg-type]
    typ, data = a.uid("FETCH", "1", "(BODY.PEEK[])")  # the EXPUNGE goes out here
    assert typ == "OK", data


def test_fetch_of_a_message_another_session_closed_away(imap: IMAPServer) -> None:
    """CLOSE expunges silently (RFC 3501 §6.4.2) and is an expunge like any other for the
    sessions that still list the message (RFC 2180 §4.1): they keep getting its bytes."""
    imap.deliver("alice@example.test", message("first", "body of the first\n"))
    a = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
    try:
        a.recv(4096)

        def cmd(tag: bytes, line: bytes) -> bytes:
            return _command(a, tag, line)

        cmd(b"a0", b"LOGIN alice@example.test secret")
        assert b"* 1 EXISTS" in cmd(b"a1", b"SELECT INBOX")
        close = _transcript(imap, [b"SELECT INBOX", b"STORE 1 +FLAGS.SILENT (\\Deleted)", b"CLOSE"])[2]
        assert b"t3 OK" in close
        assert imap.maildir().folder().sync().messages == ()
        got = cmd(b"a2", b"FETCH 1 (BODY.PEEK[])")
        assert b"body of the first" in got and b"a2 OK" in got, got
        assert b"* 1 EXPUNGE\r\n" in cmd(b"a3", b"NOOP")
        cmd(b"a4", b"LOGOUT")
    finally:
        a.close()
