"""IMAP4rev2 (RFC 9051) next to IMAP4rev1 against the real server: ``ENABLE IMAP4rev2``
(§6.3.1) switches one session to rev2's rules (Appendix E) and leaves the others on rev1.
Transcripts after the RFC's examples."""

from __future__ import annotations

import re
from collections.abc import Callable

from .conftest import IMAPServer, message
from .test_corners import Raw, connect, tagged

__all__ = ["connect"]  # the fixture, re-exported for pytest


def _rev2(c: Raw) -> None:
    # RFC 9051 §6.3.1: "C: t2 ENABLE IMAP4rev2" / "S: * ENABLED IMAP4rev2"
    assert c.cmd("ENABLE IMAP4rev2") == f"* ENABLED IMAP4rev2\r\nt{c.n} OK ENABLE completed\r\n"


def test_both_revisions_are_announced_and_enable_answers_once(connect: Callable[[], Raw]) -> None:
    c = connect()
    caps = c.cmd("CAPABILITY").split("\r\n")[0].split()
    assert "IMAP4rev1" in caps and "IMAP4rev2" in caps  # RFC 9051 §6.3.1: both, client chooses
    _rev2(c)
    assert c.cmd("ENABLE imap4rev2").startswith("* ENABLED\r\n")  # RFC 5161 §3.1: already on


def test_select_and_updates_without_recent(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    imap.deliver("alice@example.test", message("one"))
    c = connect()
    _rev2(c)
    # RFC 9051 §6.3.2 example: FLAGS, EXISTS, LIST, PERMANENTFLAGS, UIDVALIDITY, UIDNEXT;
    # no RECENT and no [UNSEEN] (Appendix E)
    resp = c.cmd("SELECT INBOX")
    assert "* 1 EXISTS\r\n" in resp
    assert '* LIST () "." INBOX\r\n' in resp
    assert "RECENT" not in resp and "[UNSEEN" not in resp
    assert re.search(r"\* OK \[UIDVALIDITY \d+\] ", resp) and "* OK [UIDNEXT 2] " in resp
    assert tagged(resp) == "OK [READ-WRITE] SELECT completed"
    assert c.cmd("FETCH 1 (FLAGS)").startswith("* 1 FETCH (FLAGS ())\r\n")  # no \Recent (§2.3.2)
    imap.deliver("alice@example.test", message("two"))
    resp = c.cmd("NOOP")
    assert resp.startswith("* 2 EXISTS\r\n") and "RECENT" not in resp
    assert c.cmd("FETCH 2 (FLAGS)").startswith("* 2 FETCH (FLAGS ())\r\n")
    assert c.cmd("SEARCH RECENT").startswith('* ESEARCH (TAG "')
    # a flag change by another session: the unsolicited FETCH carries the UID (§7.5.2)
    setter = connect()
    setter.cmd("SELECT INBOX")
    setter.cmd("STORE 1 +FLAGS (\\Flagged)")
    assert c.cmd("NOOP").startswith("* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n")
    # a rev1 session on the same mailbox keeps rev1's responses
    other = connect()
    resp = other.cmd("SELECT INBOX")
    assert "* 0 RECENT\r\n" in resp and "* OK [UNSEEN 1] " in resp and "* LIST" not in resp


def test_enable_while_selected_stops_recent(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    imap.deliver("alice@example.test", message("one"))
    c = connect()
    assert "* 1 RECENT\r\n" in c.cmd("SELECT INBOX")
    assert "\\Recent" in c.cmd("FETCH 1 (FLAGS)")
    _rev2(c)
    assert c.cmd("FETCH 1 (FLAGS)").startswith("* 1 FETCH (FLAGS ())\r\n")


def test_search_answers_esearch_rfc9051(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    for subject in ("a", "b", "a", "a"):
        imap.deliver("alice@example.test", message(subject))
    c = connect()
    _rev2(c)
    c.cmd("SELECT INBOX")
    c.cmd("STORE 2 +FLAGS (\\Flagged)")
    # RFC 9051 §6.4.4: "S: * ESEARCH (TAG "A285") ALL 2,10:11" - SEARCH without RETURN is RETURN (ALL)
    n = c.n + 1
    assert c.cmd("SEARCH SUBJECT a") == f'* ESEARCH (TAG "t{n}") ALL 1,3:4\r\nt{n} OK SEARCH completed\r\n'
    n = c.n + 1
    assert c.cmd("UID SEARCH FLAGGED") == f'* ESEARCH (TAG "t{n}") UID ALL 2\r\nt{n} OK SEARCH completed\r\n'
    # nothing found: no ALL (RFC 9051 §7.3.4)
    n = c.n + 1
    assert c.cmd("SEARCH SUBJECT zzz") == f'* ESEARCH (TAG "t{n}")\r\nt{n} OK SEARCH completed\r\n'
    # "C: A282 SEARCH RETURN (MIN COUNT) FLAGGED ..." / "S: * ESEARCH (TAG "A282") MIN 2 COUNT 3"
    n = c.n + 1
    assert c.cmd("SEARCH RETURN (MIN COUNT) SUBJECT a").startswith(f'* ESEARCH (TAG "t{n}") MIN 1 COUNT 3\r\n')
    # SORT is not part of rev2: its answer stays SORT (RFC 5256)
    assert c.cmd("SORT (SUBJECT) UTF-8 ALL").startswith("* SORT ")
    other = connect()  # rev1: SEARCH as before
    other.cmd("SELECT INBOX")
    assert other.cmd("SEARCH SUBJECT a").startswith("* SEARCH 1 3 4\r\n")


def test_status_deleted_list_nonexistent_and_closed(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    for subject in ("a", "b", "c"):
        imap.deliver("alice@example.test", message(subject))
    c = connect()
    _rev2(c)
    c.cmd("SELECT INBOX")
    c.cmd("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    # RFC 9051 §6.3.11: STATUS DELETED, the number of messages with \Deleted
    assert c.cmd("STATUS INBOX (MESSAGES DELETED)").startswith("* STATUS INBOX (MESSAGES 3 DELETED 2)\r\n")
    # §7.3.1: a name that is only a parent of others is \NonExistent (not \Noselect)
    assert "OK " in tagged(c.cmd("CREATE a.b.c"))
    resp = c.cmd('LIST "" a*')
    assert '* LIST (\\NonExistent \\HasChildren) "." a\r\n' in resp
    assert "\\Noselect" not in resp
    # §7.1 CLOSED: a SELECT that replaces a selected mailbox says so before anything else
    assert c.cmd("EXAMINE a.b.c").startswith("* OK [CLOSED] Previous mailbox closed.\r\n* FLAGS ")
    assert not c.cmd("UNSELECT").startswith("* OK [CLOSED]")
    assert not c.cmd("SELECT INBOX").startswith("* OK [CLOSED]")  # nothing was selected
    other = connect()  # rev1 sessions: \Noselect; [CLOSED] too, as Dovecot sends it (RFC 7162 §3.2.11)
    assert '* LIST (\\Noselect \\HasChildren) "." a\r\n' in other.cmd('LIST "" a*')
    other.cmd("SELECT INBOX")
    assert other.cmd("EXAMINE INBOX").startswith("* OK [CLOSED] Previous mailbox closed.\r\n")


def test_mailbox_names_are_utf8_after_enable(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    """RFC 9051 §5.1: rev2 names are UTF-8 (quoted strings carry UTF-8, §9); rev1 sessions
    keep modified UTF-7 (RFC 3501 §5.1.3), for the same folder on disk."""
    c = connect()
    rev1 = connect()
    assert tagged(c.cmd('CREATE "Été"')).startswith("BAD ")  # rev1: 8-bit in a quoted string
    _rev2(c)
    assert tagged(c.cmd('CREATE "Été"')).startswith("OK [MAILBOXID (")
    assert tagged(c.cmd('CREATE "Été.Brouillons"')).startswith("OK [MAILBOXID (")
    resp = c.cmd('LIST "" "Été*"')  # the pattern in UTF-8 too
    assert '* LIST (\\HasChildren) "." "Été"\r\n' in resp
    assert '* LIST (\\HasNoChildren) "." "Été.Brouillons"\r\n' in resp
    assert '* LIST () "." "Été.Brouillons"\r\n' in c.cmd('SELECT "Été.Brouillons"')
    assert c.cmd('STATUS "Été" (MESSAGES)').startswith('* STATUS "Été" (MESSAGES 0)\r\n')
    # the same folders for a rev1 client, in modified UTF-7, and on disk as Dovecot keeps them
    resp = rev1.cmd('LIST "" *')
    assert '"." &AMk-t&AOk-\r\n' in resp and '"." &AMk-t&AOk-.Brouillons\r\n' in resp
    assert (imap.maildir().root / ".&AMk-t&AOk-.Brouillons").is_dir()
    # a rev2 name is not decoded as modified UTF-7: "&AMk-t&AOk-" is just those characters
    assert tagged(c.cmd("STATUS &AMk-t&AOk- (MESSAGES)")).startswith("NO [NONEXISTENT]")
    # octets that are not UTF-8 name no mailbox: NO, as a name that is not modified UTF-7 in rev1
    c.sock.sendall(b't99 CREATE "bad\xff\xfe"\r\n')
    assert c._until("t99").startswith("t99 NO [CANNOT]")
