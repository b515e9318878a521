"""CONTEXT=SEARCH (RFC 5267 §4) against the real server: byte-level transcripts over a raw
socket of SEARCH RETURN (UPDATE) with ADDTO / REMOVEFROM (§4.3.3-4), CANCELUPDATE (§4.3.5),
NOUPDATE (§4.3.1) and RETURN (PARTIAL) (§4.4, its example shape: "PARTIAL (1:500 ...)")."""

from __future__ import annotations

import socket
from collections.abc import Callable

from .conftest import IMAPServer
from .test_search_ext import cmd, login  # noqa: F401  (login is a fixture)


def _five(imap: IMAPServer) -> None:
    for n in range(1, 6):
        imap.deliver("alice@example.test", f"Subject: m{n}\nMessage-ID: <{n}@x>\n\nbody {n}\n".encode())


def test_capability(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    caps = cmd(login(imap), "CAPABILITY").split(b"\r\n")[0].split()
    assert b"CONTEXT=SEARCH" in caps and b"CONTEXT=SORT" not in caps  # no updates of SORT results


def test_partial(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    _five(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    cmd(s, "STORE 2 +FLAGS.SILENT (\\Deleted)")
    cmd(s, "EXPUNGE")  # UIDs 1,3,4,5 at sequence numbers 1-4
    assert cmd(s, "SEARCH RETURN (PARTIAL 2:3) ALL", "E01") == \
        b'* ESEARCH (TAG "E01") PARTIAL (2:3 2:3)\r\nE01 OK SEARCH completed\r\n'
    # RFC 5267 §4.4: positions in the result, either order; UIDs for UID SEARCH
    assert cmd(s, "UID SEARCH RETURN (PARTIAL 3:1) ALL", "E02") == \
        b'* ESEARCH (TAG "E02") UID PARTIAL (1:3 1,3:4)\r\nE02 OK SEARCH completed\r\n'
    assert cmd(s, "SEARCH RETURN (PARTIAL 5:500) ALL", "E03") == \
        b'* ESEARCH (TAG "E03") PARTIAL (5:500 NIL)\r\nE03 OK SEARCH completed\r\n'
    assert cmd(s, "SEARCH RETURN (COUNT PARTIAL 1:2) 2:4", "E04") == \
        b'* ESEARCH (TAG "E04") PARTIAL (1:2 2:3) COUNT 3\r\nE04 OK SEARCH completed\r\n'
    # in SORT order for SORT (RFC 5267 §4.4 with §3.2)
    assert cmd(s, "SORT RETURN (PARTIAL 1:3) (REVERSE SUBJECT) US-ASCII ALL", "E05") == \
        b'* ESEARCH (TAG "E05") PARTIAL (1:3 4,3,2)\r\nE05 OK SORT completed\r\n'
    for bad in ("PARTIAL 1", "PARTIAL 1:*", "PARTIAL *:1", "PARTIAL 0:1", "PARTIAL 1:2 PARTIAL 3:4"):
        assert cmd(s, f"SEARCH RETURN ({bad}) ALL").startswith(b"t BAD "), bad


def test_update_follows_store_expunge_and_arrivals(imap: IMAPServer,
                                                  login: Callable[[IMAPServer], socket.socket]) -> None:
    _five(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    assert cmd(s, "SEARCH RETURN (UPDATE) SEEN", "A1") == b'* ESEARCH (TAG "A1")\r\nA1 OK SEARCH completed\r\n'
    out = cmd(s, "STORE 1,2,4 +FLAGS.SILENT (\\Seen)")
    assert out == b'* ESEARCH (TAG "A1") ADDTO (0 1:2,4)\r\nt OK STORE completed\r\n'
    out = cmd(s, "STORE 1,2 -FLAGS.SILENT (\\Seen)")
    assert out == b'* ESEARCH (TAG "A1") REMOVEFROM (0 1:2)\r\nt OK STORE completed\r\n'
    # an expunged result leaves before the EXPUNGEs, by the number it had (Dovecot's order)
    cmd(s, "STORE 3:5 +FLAGS.SILENT (\\Deleted)")
    out = cmd(s, "EXPUNGE")
    assert out == (b'* ESEARCH (TAG "A1") REMOVEFROM (0 4)\r\n* 5 EXPUNGE\r\n* 4 EXPUNGE\r\n* 3 EXPUNGE\r\n'
                   b"t OK EXPUNGE completed\r\n")
    # a new arrival that matches is added after EXISTS
    imap.deliver("alice@example.test", b"Subject: new\n\nx\n")
    imap.maildir().folder("INBOX").sync()
    cur = imap.maildir().root / "cur"
    newest = max(cur.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    newest.rename(newest.with_name(newest.name.split(":2,")[0] + ":2,S"))
    out = cmd(s, "NOOP")
    assert out.endswith(b'* 3 EXISTS\r\n* 3 RECENT\r\n* ESEARCH (TAG "A1") ADDTO (0 3)\r\nt OK NOOP completed\r\n')
    # RFC 5267 §4.3.5: no more updates after CANCELUPDATE
    assert cmd(s, 'CANCELUPDATE "A1"') == b"t OK CANCELUPDATE completed\r\n"
    assert cmd(s, "STORE 1 +FLAGS.SILENT (\\Seen)") == b"t OK STORE completed\r\n"
    assert cmd(s, 'CANCELUPDATE "A1"').startswith(b"t NO ")
    assert cmd(s, "CANCELUPDATE").startswith(b"t BAD ")


def test_uid_update_and_changes_by_others(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    _five(imap)
    s, other = login(imap), login(imap)
    cmd(s, "SELECT INBOX")
    cmd(other, "SELECT INBOX")
    out = cmd(s, "UID SEARCH RETURN (UPDATE ALL) FLAGGED", "B1")
    assert out == b'* ESEARCH (TAG "B1") UID\r\nB1 OK SEARCH completed\r\n'
    cmd(other, "STORE 2:3 +FLAGS.SILENT (\\Flagged)")
    out = cmd(s, "NOOP")
    assert out == (b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\n* 3 FETCH (FLAGS (\\Flagged \\Recent))\r\n"
                   b'* ESEARCH (TAG "B1") UID ADDTO (0 2:3)\r\nt OK NOOP completed\r\n')
    cmd(other, "STORE 2 -FLAGS.SILENT (\\Flagged)")
    out = cmd(s, "NOOP")
    assert out.endswith(b'* ESEARCH (TAG "B1") UID REMOVEFROM (0 2)\r\nt OK NOOP completed\r\n')


def test_noupdate(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    _five(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    # RFC 5267 §4.3.1: a result the server will not keep up to date is still answered
    out = cmd(s, "SEARCH RETURN (UPDATE COUNT) 2:*", "C1")
    assert out == (b'* NO [NOUPDATE "C1"] Search depends on sequence numbers\r\n'
                   b'* ESEARCH (TAG "C1") COUNT 4\r\nC1 OK SEARCH completed\r\n')
    for n in range(8):
        cmd(s, "SEARCH RETURN (UPDATE) DELETED", f"D{n}")
    assert cmd(s, "SEARCH RETURN (UPDATE) DELETED", "D9").startswith(b'* NO [NOUPDATE "D9"] Too many contexts\r\n')
    assert cmd(s, "STORE 1 +FLAGS.SILENT (\\Deleted)").count(b"ADDTO (0 1)") == 8
