"""OBJECTID (RFC 8474) and SAVEDATE (RFC 8514) against the real server: transcripts after
the RFCs' examples, plus what the identities must survive (RENAME, COPY, MOVE, a restart,
a uidlist written without a mailbox GUID) and what the save date must not follow (a flag
change renames the file)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone

from .conftest import IMAPServer, message
from .test_corners import Raw, connect, tagged

__all__ = ["connect"]  # the fixture, re-exported for pytest

MAILBOXID = re.compile(r"MAILBOXID \(([0-9a-f]{32})\)")
EMAILID = re.compile(r"EMAILID \((M[0-9a-f]{24})\)")


def _mailboxid(c: Raw, name: str) -> str:
    resp = c.cmd(f"STATUS {name} (MAILBOXID)")
    m = MAILBOXID.search(resp)
    assert m is not None, resp
    return m.group(1)


def _emailid(c: Raw, uid: int) -> str:
    resp = c.cmd(f"UID FETCH {uid} (EMAILID)")
    m = EMAILID.search(resp)
    assert m is not None, resp
    return m.group(1)


def test_capabilities(connect: Callable[[], Raw]) -> None:
    caps = connect().cmd("CAPABILITY").split("\r\n")[0].split()
    assert "OBJECTID" in caps and "SAVEDATE" in caps


# -- RFC 8474 §4: MAILBOXID ---------------------------------------------------------------------

def test_create_rename_status_select_mailboxid_rfc8474(connect: Callable[[], Raw]) -> None:
    c = connect()
    # §4.1: "C: 3 create foo" / "S: 3 OK [MAILBOXID (F2212ea87-...)] Completed"
    foo = MAILBOXID.search(tagged(c.cmd("CREATE foo")))
    bar = MAILBOXID.search(tagged(c.cmd("CREATE bar")))
    assert foo is not None and bar is not None and foo.group(1) != bar.group(1)
    # "C: 5 create foo" / "S: 5 NO [ALREADYEXISTS] Mailbox already exists"
    assert tagged(c.cmd("CREATE foo")).startswith("NO [ALREADYEXISTS]")
    # §4.2: RENAME keeps the MAILBOXID; the STATUS item of §4.4
    assert c.cmd("STATUS foo (MAILBOXID)").startswith(f"* STATUS foo (MAILBOXID ({foo.group(1)}))\r\n")
    assert tagged(c.cmd("RENAME foo renamed")) == "OK RENAME completed"
    assert _mailboxid(c, "renamed") == foo.group(1)
    assert _mailboxid(c, "bar") == bar.group(1)
    # §4.3: SELECT and EXAMINE say it in an untagged OK
    assert f"* OK [MAILBOXID ({foo.group(1)})] Ok\r\n" in c.cmd("EXAMINE renamed")
    assert f"* OK [MAILBOXID ({bar.group(1)})] Ok\r\n" in c.cmd("SELECT bar")
    # a mailbox deleted and made again is another mailbox
    c.cmd("UNSELECT")
    assert tagged(c.cmd("DELETE bar")) == "OK DELETE completed"
    again = MAILBOXID.search(tagged(c.cmd("CREATE bar")))
    assert again is not None and again.group(1) != bar.group(1)
    # with LIST-STATUS (RFC 5819) too
    assert f"MAILBOXID ({again.group(1)})" in c.cmd('LIST "" bar RETURN (STATUS (MAILBOXID))')


def test_mailboxid_is_the_uidlist_guid_and_is_made_once(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    """A uidlist without a mailbox GUID (older Dovecot, version 1 files) gets one, written
    at once: it must not change from one read to the next (another process, a restart)."""
    md = imap.maildir()
    md.create_folder("Old")
    path = md.folder("Old").path / "dovecot-uidlist"
    path.write_text("3 V1234 N1\n")
    c = connect()
    first = _mailboxid(c, "Old")
    assert path.read_text().split("\n")[0] == f"3 V1234 N1 G{first}"  # kept where Dovecot keeps it
    os.utime(path, (time.time() + 5, time.time() + 5))  # as if rewritten: read again
    assert _mailboxid(connect(), "Old") == first


# -- RFC 8474 §5, §6: EMAILID, THREADID --------------------------------------------------------

def test_emailid_threadid_fetch_and_search_rfc8474(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    c = connect()
    c.cmd("CREATE foo")
    # §5.1: "C: 5 append inbox ..." ... "S: * 1 FETCH (EMAILID (M6d99ac3275bb4e) UID 1)"
    assert "OK [APPENDUID " in tagged(c.cmd('APPEND INBOX "20-Mar-2018 03:07:37 +1100"', message("one")))
    assert "OK [APPENDUID " in tagged(c.cmd("APPEND INBOX", message("one")))  # same content, another email
    c.cmd("SELECT INBOX")
    first = _emailid(c, 1)
    assert c.cmd("UID FETCH 1 (EMAILID)").startswith(f"* 1 FETCH (UID 1 EMAILID ({first}))\r\n")
    assert _emailid(c, 2) != first
    assert _emailid(c, 1) == first  # stable
    # "C: 12 copy 1 foo" ... "C: 14 uid fetch 1 (emailid)" -> the same EMAILID
    assert "OK [COPYUID " in tagged(c.cmd("COPY 1 foo"))
    # MOVE too (RFC 6851): the moved message keeps it
    assert "* OK [COPYUID " in c.cmd("UID MOVE 2 foo")
    c.cmd("SELECT foo")
    assert _emailid(c, 1) == first
    moved = _emailid(c, 2)
    # §5.2: THREADID NIL when the server does not thread
    assert c.cmd("FETCH 1 (THREADID)").startswith("* 1 FETCH (THREADID NIL)\r\n")
    # §6: "C: 27 search emailid M6d99ac3275bb4e" / "S: * SEARCH 1"
    assert c.cmd(f"SEARCH EMAILID {first}").startswith("* SEARCH 1\r\n")
    assert c.cmd(f"UID SEARCH EMAILID {moved}").startswith("* SEARCH 2\r\n")
    assert c.cmd("SEARCH THREADID T64b478a75b7ea9").startswith("* SEARCH\r\n")
    assert tagged(c.cmd("SEARCH EMAILID M6d99.ac")).startswith("BAD ")  # not an objectid (§7)
    # the copy's file has a new name: the GUID went into its uidlist record (Dovecot's G field)
    uidlist = (imap.maildir().folder("foo").path / "dovecot-uidlist").read_text().splitlines()
    assert all(" G" in line for line in uidlist[1:]), uidlist


# -- RFC 8514: SAVEDATE ------------------------------------------------------------------------

SAVEDATE = re.compile(r'SAVEDATE "([^"]+)"')


def _savedate(c: Raw, uid: int) -> datetime:
    resp = c.cmd(f"UID FETCH {uid} (SAVEDATE)")
    m = SAVEDATE.search(resp)
    assert m is not None, resp
    return datetime.strptime(m.group(1).strip(), "%d-%b-%Y %H:%M:%S %z")


def test_savedate_fetch_and_search_rfc8514(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    inbox = imap.maildir().folder("INBOX")
    # a message stored in 2001 (the Maildir name says when), INTERNALDATE in 1994
    old = inbox.cur / "1000000000.M1P1.host,S=10,W=12:2,"
    old.write_bytes(b"Subject: old\n\nx\n")
    os.utime(old, (760000000, 760000000))
    c = connect()
    c.cmd("CREATE foo")
    c.cmd("SELECT INBOX")
    # RFC 8514 §4.1: FETCH SAVEDATE is a date-time
    assert c.cmd("FETCH 1 (SAVEDATE)").startswith('* 1 FETCH (SAVEDATE " 9-Sep-2001 01:46:40 +0000")\r\n')
    assert "INTERNALDATE \"31-Jan-1994" in c.cmd("FETCH 1 (INTERNALDATE)")
    # a COPY is stored now in the other mailbox: its own save date there
    assert "OK [COPYUID " in tagged(c.cmd("COPY 1 foo"))
    c.cmd("SELECT foo")
    copied = _savedate(c, 1)
    assert abs(copied.timestamp() - time.time()) < 300
    c.cmd("SELECT INBOX")
    # §4.2: SAVEDBEFORE / SAVEDON / SAVEDSINCE compare the day; SAVEDATESUPPORTED: all
    assert c.cmd("SEARCH SAVEDON 9-Sep-2001").startswith("* SEARCH 1\r\n")
    assert c.cmd("SEARCH SAVEDBEFORE 10-Sep-2001").startswith("* SEARCH 1\r\n")
    assert c.cmd("SEARCH SAVEDBEFORE 9-Sep-2001").startswith("* SEARCH\r\n")
    assert c.cmd("SEARCH SAVEDSINCE 10-Sep-2001").startswith("* SEARCH\r\n")
    assert c.cmd("SEARCH SAVEDATESUPPORTED").startswith("* SEARCH 1\r\n")
    assert c.cmd("SEARCH BEFORE 1-Jan-2000").startswith("* SEARCH 1\r\n")  # INTERNALDATE is another date
    assert tagged(c.cmd("SEARCH SAVEDON 31-Foo-2001")).startswith("BAD ")


def test_savedate_without_a_time_in_the_name_is_kept_at_first_sight(imap: IMAPServer,
                                                                    connect: Callable[[], Raw]) -> None:
    """A file whose name says nothing of when it came: its ctime the first time anyone
    asks, then never changed, although a flag change renames the file (new ctime)."""
    inbox = imap.maildir().folder("INBOX")
    odd = inbox.cur / "imported-message:2,"
    odd.write_bytes(b"Subject: odd\n\nx\n")
    c = connect()
    c.cmd("SELECT INBOX")
    first = _savedate(c, 1)
    assert abs(first.timestamp() - os.stat(odd).st_ctime) < 2
    time.sleep(1.1)
    assert tagged(c.cmd("STORE 1 +FLAGS (\\Flagged)")) == "OK STORE completed"
    renamed = next(p for p in inbox.cur.iterdir() if p.name.startswith("imported-message"))
    assert os.stat(renamed).st_ctime > first.timestamp() + 1  # the rename moved the ctime on
    assert _savedate(c, 1) == first
    other = connect()
    other.cmd("EXAMINE INBOX")
    assert _savedate(other, 1) == first  # the same for every session (the index)
    assert first.tzinfo is not None and first.utcoffset() == timezone.utc.utcoffset(None)


def test_savedate_with_a_broken_index_still_answers(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    inbox = imap.maildir().folder("INBOX")
    (inbox.cur / "plain:2,").write_bytes(b"Subject: x\n\nx\n")
    c = connect()
    c.cmd("SELECT INBOX")
    assert SAVEDATE.search(c.cmd("FETCH 1 (SAVEDATE)"))
    imap.service.index.close()
    (inbox.path / "mailstack-index.sqlite").write_bytes(b"not a database")
    other = connect()
    other.cmd("SELECT INBOX")
    assert SAVEDATE.search(other.cmd("FETCH 1 (SAVEDATE)"))
