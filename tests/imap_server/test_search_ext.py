"""ESEARCH (RFC 4731), SEARCHRES (RFC 5182), SORT (RFC 5256), SORT=DISPLAY (RFC 5957) and
ESORT (RFC 5267) against the real server: byte-level transcripts over a raw socket, shaped
after the RFCs' own examples (each test cites its section)."""

from __future__ import annotations

import imaplib
import socket
from collections.abc import Callable, Iterator

import pytest

from .conftest import IMAPServer
from .test_commands import raw, until


@pytest.fixture
def login() -> Iterator[Callable[[IMAPServer], socket.socket]]:
    """Logged-in raw connections, closed at the end of the test."""
    opened: list[socket.socket] = []

    def connect(imap: IMAPServer) -> socket.socket:
        s = raw(imap)
        opened.append(s)
        s.sendall(b"a LOGIN alice@example.test secret\r\n")
        assert b"a OK" in until(s, b"a")
        return s

    yield connect
    for s in opened:
        s.close()


def cmd(s: socket.socket, line: str, tag: str = "t") -> bytes:
    s.sendall(f"{tag} {line}\r\n".encode())
    return until(s, tag.encode())


def append(c: imaplib.IMAP4, subject: str, *, sender: str = "Carol <carol@example.org>",
           to: str = "alice@example.test", date: str = "Mon, 7 Feb 1994 21:52:25 -0800",
           flags: str = "", internal: str = '"07-Feb-1994 21:52:25 -0800"', body: str = "Hi.\r\n") -> None:
    msg = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n\r\n{body}".encode()
    typ, _ = c.append("INBOX", f"({flags})" if flags else None, internal, msg)
    assert typ == "OK"


def rfc4731_mailbox(imap: IMAPServer) -> None:
    """12 messages; FLAGGED since 1-Feb-1994 and not from Smith: 2, 10, 11 (message 5 is
    flagged but from Smith, message 7 flagged but too old): the answers of RFC 4731 §3.1."""
    c = imap.client()
    for i in range(1, 13):
        smith = i == 5
        old = i == 7
        append(c, f"m{i}", sender="John Smith <smith@example.org>" if smith else "Carol <carol@example.org>",
               flags="\\Flagged" if i in (2, 5, 7, 10, 11) else "",
               internal='"01-Jan-1990 00:00:00 +0000"' if old else '"07-Feb-1994 21:52:25 -0800"')
    c.logout()


def test_capabilities_advertised(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(imap)
    caps = cmd(s, "CAPABILITY").split(b"\r\n")[0].split()
    for cap in (b"ESEARCH", b"SEARCHRES", b"SORT", b"SORT=DISPLAY", b"ESORT"):
        assert cap in caps


def test_esearch_rfc4731_examples(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    rfc4731_mailbox(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    prog = 'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'
    # RFC 4731 §3.1, first example
    out = cmd(s, f"SEARCH RETURN (MIN COUNT) {prog}", "A282")
    assert out == b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\nA282 OK SEARCH completed\r\n'
    # RFC 4731 §3.1: RETURN () is RETURN (ALL); ALL as a sequence-set
    out = cmd(s, f"SEARCH RETURN () {prog}", "A283")
    assert out == b'* ESEARCH (TAG "A283") ALL 2,10:11\r\nA283 OK SEARCH completed\r\n'
    out = cmd(s, f"SEARCH RETURN (MAX MIN) {prog}", "A284")
    assert out == b'* ESEARCH (TAG "A284") MIN 2 MAX 11\r\nA284 OK SEARCH completed\r\n'
    # UID SEARCH: "UID" in the response, UIDs in the data (RFC 4731 §3.1)
    uids = cmd(s, "FETCH 2,10,11 (UID)")
    assert b"* 2 FETCH (UID 2)" in uids and b"* 11 FETCH (UID 11)" in uids
    out = cmd(s, f"UID SEARCH RETURN (MIN MAX ALL COUNT) {prog}", "A285")
    assert out == b'* ESEARCH (TAG "A285") UID MIN 2 MAX 11 ALL 2,10:11 COUNT 3\r\nA285 OK SEARCH completed\r\n'
    # nothing found: MIN/MAX/ALL left out, COUNT 0 (RFC 4731 §3.1)
    out = cmd(s, "SEARCH RETURN (MIN MAX ALL COUNT) 1000", "A286")
    assert out == b'* ESEARCH (TAG "A286") COUNT 0\r\nA286 OK SEARCH completed\r\n'
    out = cmd(s, "SEARCH RETURN (MIN) 1000", "A287")
    assert out == b'* ESEARCH (TAG "A287")\r\nA287 OK SEARCH completed\r\n'
    # the plain SEARCH is unchanged
    assert cmd(s, f"SEARCH {prog}", "A288") == b"* SEARCH 2 10 11\r\nA288 OK SEARCH completed\r\n"
    # an unknown return option or a bad list is BAD, nothing else happens
    assert cmd(s, "SEARCH RETURN (FOO) ALL", "A289").startswith(b"A289 BAD ")
    assert cmd(s, "SEARCH RETURN ALL", "A290").startswith(b"A290 BAD ")
    assert cmd(s, "SEARCH RETURN (ALL) CHARSET KOI8-R ALL", "A291").startswith(b"A291 NO [BADCHARSET")


def test_searchres_rfc5182_examples(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    rfc4731_mailbox(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    # "$" before any SAVE is the empty set (RFC 5182 §2.1)
    assert cmd(s, "SEARCH $", "A280") == b"* SEARCH\r\nA280 OK SEARCH completed\r\n"
    # RFC 5182 §3 example 1: SAVE alone returns no ESEARCH; FETCH $ uses the result
    out = cmd(s, 'SEARCH RETURN (SAVE) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"', "A282")
    assert out == b"A282 OK SEARCH completed\r\n"
    out = cmd(s, "FETCH $ (UID)", "A283")
    assert out == (b"* 2 FETCH (UID 2)\r\n* 10 FETCH (UID 10)\r\n* 11 FETCH (UID 11)\r\n"
                   b"A283 OK FETCH completed\r\n")
    # "$" in a search program, as a sequence set and after UID (RFC 5182 §2.1)
    assert cmd(s, "UID SEARCH UID $ NOT 10", "A284") == b"* SEARCH 2 11\r\nA284 OK SEARCH completed\r\n"
    assert cmd(s, "SEARCH $", "A285") == b"* SEARCH 2 10 11\r\nA285 OK SEARCH completed\r\n"
    # pipelined: SAVE then a command that uses "$" (RFC 5182 §3 example 2), in one write
    s.sendall(b"A286 SEARCH RETURN (SAVE) UNFLAGGED 1:4\r\nA287 STORE $ +FLAGS (\\Seen)\r\n")
    out = until(s, b"A287")
    assert b"A286 OK" in out and b"A287 OK" in out
    assert b"* 1 FETCH (FLAGS (\\Seen \\Recent))" in out and b"* 4 FETCH (FLAGS (\\Seen \\Recent))" in out
    assert b"* 2 FETCH" not in out and b"* 5 FETCH" not in out
    # SAVE with MIN only saves only the min (RFC 5182 §2.1), and ESEARCH still comes
    out = cmd(s, "SEARCH RETURN (MIN SAVE) FLAGGED", "A288")
    assert out == b'* ESEARCH (TAG "A288") MIN 2\r\nA288 OK SEARCH completed\r\n'
    assert cmd(s, "SEARCH $", "A289") == b"* SEARCH 2\r\nA289 OK SEARCH completed\r\n"
    # an expunged message leaves "$" (RFC 5182 §2.1); the sequence numbers follow
    cmd(s, "SEARCH RETURN (SAVE) 2:3")
    cmd(s, "STORE 2 +FLAGS (\\Deleted)")
    assert b"* 2 EXPUNGE" in cmd(s, "EXPUNGE")
    assert cmd(s, "SEARCH $", "A290") == b"* SEARCH 2\r\nA290 OK SEARCH completed\r\n"
    assert cmd(s, "UID SEARCH $", "A291") == b"* SEARCH 3\r\nA291 OK SEARCH completed\r\n"
    # a new selection starts with an empty "$" (RFC 5182 §2.1)
    cmd(s, "SELECT INBOX")
    assert cmd(s, "SEARCH $", "A292") == b"* SEARCH\r\nA292 OK SEARCH completed\r\n"


def sort_mailbox(imap: IMAPServer) -> None:
    c = imap.client()
    append(c, "Re: beta", sender="Zed <zed@example.org>", to="Ann <b@example.org>",
           date="Tue, 8 Feb 1994 10:00:00 +0000", internal='"09-Feb-1994 00:00:00 +0000"', body="x" * 300)
    append(c, "alpha", sender="amy@example.org", to="zoe@example.org",
           date="Tue, 8 Feb 1994 09:00:00 -0200", internal='"08-Feb-1994 00:00:00 +0000"', body="x" * 10)
    append(c, "[list] Fwd: Beta (fwd)", sender="Bob <bob@example.org>", to="c@example.org",
           date="Tue, 8 Feb 1994 10:30:00 +0000", internal='"10-Feb-1994 00:00:00 +0000"', body="x" * 200)
    append(c, "gamma", sender="Carol <carol@example.org>", to="Amy <z@example.org>",
           date="not a date", internal='"07-Feb-1994 00:00:00 +0000"', body="x" * 100)
    c.logout()


def test_sort_rfc5256(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    sort_mailbox(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    # RFC 5256 §3: base subjects alpha, beta, beta, gamma; ties in sequence order
    assert cmd(s, "SORT (SUBJECT) UTF-8 ALL", "A282") == b"* SORT 2 1 3 4\r\nA282 OK SORT completed\r\n"
    # RFC 5256 §3 example: (SUBJECT REVERSE DATE); message 2's Date is 11:00 UTC, after 1's 10:00
    assert cmd(s, "SORT (SUBJECT REVERSE DATE) UTF-8 ALL", "A283") == b"* SORT 2 3 1 4\r\nA283 OK SORT completed\r\n"
    # RFC 5256 §3 example: nothing found is an empty SORT
    assert cmd(s, 'SORT (SUBJECT) US-ASCII TEXT "not in mailbox"', "A284") == b"* SORT\r\nA284 OK SORT completed\r\n"
    # DATE in UTC (2's 09:00 -0200 is after 3's 10:30 +0000); an unparsable Date: falls
    # back to INTERNALDATE (7 Feb: first); then ARRIVAL, SIZE
    assert cmd(s, "SORT (DATE) UTF-8 ALL", "A285") == b"* SORT 4 1 3 2\r\nA285 OK SORT completed\r\n"
    assert cmd(s, "SORT (ARRIVAL) UTF-8 ALL", "A286") == b"* SORT 4 2 1 3\r\nA286 OK SORT completed\r\n"
    assert cmd(s, "SORT (REVERSE SIZE) UTF-8 ALL", "A287") == b"* SORT 1 3 4 2\r\nA287 OK SORT completed\r\n"
    # FROM/TO sort on the addr-mailbox of the first address (RFC 5256 §3)
    assert cmd(s, "SORT (FROM) UTF-8 ALL", "A288") == b"* SORT 2 3 4 1\r\nA288 OK SORT completed\r\n"
    assert cmd(s, "SORT (TO) UTF-8 ALL", "A289") == b"* SORT 1 3 4 2\r\nA289 OK SORT completed\r\n"
    # the search program restricts; UID SORT answers UIDs
    assert cmd(s, "UID SORT (SUBJECT) UTF-8 2:4", "A290") == b"* SORT 2 3 4\r\nA290 OK SORT completed\r\n"
    # RFC 5256 §3: an unknown charset is NO [BADCHARSET]; an unknown key is BAD
    assert cmd(s, "SORT (SUBJECT) KOI8-R ALL", "A291").startswith(b"A291 NO [BADCHARSET")
    assert cmd(s, "SORT (COLOR) UTF-8 ALL", "A292").startswith(b"A292 BAD ")
    assert cmd(s, "SORT (REVERSE) UTF-8 ALL", "A293").startswith(b"A293 BAD ")
    assert cmd(s, "SORT SUBJECT UTF-8 ALL", "A294").startswith(b"A294 BAD ")
    assert cmd(s, "SORT (SUBJECT) ALL", "A295").startswith(b"A295 BAD ")  # the charset is required


def test_sort_display_rfc5957(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    sort_mailbox(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    # RFC 5957 §3: the display name, or the addr-spec without one: amy@..., Bob, Carol, Zed
    assert cmd(s, "SORT (DISPLAYFROM) UTF-8 ALL", "A1") == b"* SORT 2 3 4 1\r\nA1 OK SORT completed\r\n"
    # Amy, Ann, c@example.org, zoe@example.org
    assert cmd(s, "SORT (DISPLAYTO) UTF-8 ALL", "A2") == b"* SORT 4 1 3 2\r\nA2 OK SORT completed\r\n"
    assert cmd(s, "SORT (REVERSE DISPLAYTO) UTF-8 ALL", "A3") == b"* SORT 2 3 1 4\r\nA3 OK SORT completed\r\n"


def test_esort_rfc5267(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    sort_mailbox(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    # RFC 5267 §3.2: MIN/MAX are the first/last in sort order, ALL in sort order
    out = cmd(s, "SORT RETURN (MIN MAX ALL COUNT) (SUBJECT) UTF-8 ALL", "A1")
    assert out == b'* ESEARCH (TAG "A1") MIN 2 MAX 4 ALL 2,1,3:4 COUNT 4\r\nA1 OK SORT completed\r\n'
    out = cmd(s, "UID SORT RETURN () (REVERSE ARRIVAL) UTF-8 ALL", "A2")
    assert out == b'* ESEARCH (TAG "A2") UID ALL 3,1:2,4\r\nA2 OK SORT completed\r\n'
