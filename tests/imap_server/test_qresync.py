"""QRESYNC (RFC 7162 §3.2) against the real server over a raw socket, byte for byte.

The transcripts are RFC 7162's examples (§3.2.5.1, §3.2.5.2, §3.2.6, §3.2.7, §3.2.11)
adapted to our data; where the RFC leaves a choice the answer is what Dovecot 2.3 gives
(checked against a real Dovecot: ``ENABLE QRESYNC`` lists only QRESYNC, ``[CLOSED]`` goes
out whether QRESYNC is on or not and also before a SELECT that fails, known-uids limits
the FETCHes of a resync too, ``UID FETCH n:*`` takes ``*`` as unbounded for VANISHED, an
EXPUNGE or MOVE ends with ``OK [HIGHESTMODSEQ n]`` under QRESYNC).
Changes are made by other IMAP sessions and by storage directly (as POP3, the MDA or a
Dovecot on the same Maildir would); the index file is deleted between sessions to check
that the answer stays right (the conservative one of §3.2.5.2).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Generator
from pathlib import Path
from typing import cast

from mailstack.imap.index import INDEX_NAME

from .conftest import IMAPServer, make_server, message
from .test_commands import until
from .test_condstore import ALICE, cmd, highest, login
from .test_dovecot_maildir import PrivateDovecot, dovecot  # noqa: F401  (the fixture)

FLAGS = (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
         b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n")


def qlogin(imap: IMAPServer) -> socket.socket:
    s = login(imap)
    assert cmd(s, "ENABLE QRESYNC", "e") == b"* ENABLED QRESYNC\r\ne OK ENABLE completed\r\n"
    return s


def validity(data: bytes) -> int:
    m = re.search(rb"\[UIDVALIDITY (\d+)\]", data)
    assert m, data
    return int(m.group(1))


def deliver(imap: IMAPServer, n: int) -> None:
    for i in range(n):
        imap.deliver(ALICE, message(f"q{i}"))


def test_enable_bad_and_closed(imap: IMAPServer) -> None:
    deliver(imap, 3)
    s = login(imap)
    assert b" QRESYNC" in cmd(s, "CAPABILITY")
    out = cmd(s, "SELECT INBOX")
    assert b"CLOSED" not in out and b"HIGHESTMODSEQ" not in out  # nothing selected before; CONDSTORE off
    v = validity(out)
    # RFC 7162 §3.2.5, §3.2.6: QRESYNC parameters need ENABLE QRESYNC; nothing changes
    assert cmd(s, f"SELECT INBOX (QRESYNC ({v} 1))") == b"t BAD QRESYNC not enabled\r\n"
    assert cmd(s, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)") == b"t BAD QRESYNC not enabled\r\n"
    assert cmd(s, "FETCH 3 (UID)") == b"* 3 FETCH (UID 3)\r\nt OK FETCH completed\r\n"  # still selected
    # §3.2.3: QRESYNC turns CONDSTORE on: with a mailbox selected its HIGHESTMODSEQ comes now
    out = cmd(s, "ENABLE QRESYNC")
    m = re.fullmatch(rb"\* ENABLED QRESYNC\r\n\* OK \[HIGHESTMODSEQ (\d+)\] Highest\r\nt OK ENABLE completed\r\n", out)
    assert m, out
    h = int(m.group(1))
    assert cmd(s, "ENABLE CONDSTORE QRESYNC") == b"* ENABLED\r\nt OK ENABLE completed\r\n"
    # §3.2.4: a STORE's FETCH carries UID; CONDSTORE: MODSEQ even under .SILENT
    assert cmd(s, "STORE 1 +FLAGS.SILENT (\\Seen)") == b"* 1 FETCH (UID 1 MODSEQ (%d))\r\nt OK STORE completed\r\n" % (h + 1)
    assert cmd(s, "FETCH 1:3 (FLAGS) (CHANGEDSINCE 1 VANISHED)") == b"t BAD VANISHED is a UID FETCH modifier\r\n"
    assert cmd(s, "UID FETCH 1:3 (FLAGS) (VANISHED)") == b"t BAD VANISHED used without CHANGEDSINCE\r\n"
    assert cmd(s, f"SELECT INBOX (QRESYNC ({v} 1 1:*))") == b"t BAD Invalid QRESYNC known-uids\r\n"
    assert cmd(s, f"SELECT INBOX (QRESYNC ({v} 1 1:3 (1:2 1:3)))") == b"t BAD Invalid QRESYNC sets\r\n"
    # §3.2.11 CLOSED first; another UIDVALIDITY: the QRESYNC data is ignored (§3.2.5.1)
    out = cmd(s, f"EXAMINE INBOX (QRESYNC ({v + 1} 1))")
    assert out.startswith(b"* OK [CLOSED] Previous mailbox closed.\r\n* FLAGS (") and b"* 3 EXISTS\r\n" in out
    assert out.endswith(b"* OK [HIGHESTMODSEQ %d] Highest\r\nt OK [READ-ONLY] EXAMINE completed\r\n" % (h + 1))
    # a SELECT that fails has closed the old mailbox all the same; nothing is selected after it
    assert cmd(s, "SELECT nosuch") == (b"* OK [CLOSED] Previous mailbox closed.\r\n"
                                       b"t NO [NONEXISTENT] Mailbox does not exist\r\n")
    assert b"CLOSED" not in cmd(s, "SELECT INBOX")
    assert cmd(s, "UNSELECT") == b"t OK UNSELECT completed\r\n"
    s.close()


def test_expunge_rfc7162_example(imap: IMAPServer) -> None:
    """RFC 7162 §3.2.7 / §3.2.9: "* VANISHED 405,407,410,425" then "OK [HIGHESTMODSEQ n]"."""
    deliver(imap, 30)
    s = qlogin(imap)
    h0 = highest(cmd(s, "SELECT INBOX"))
    cmd(s, "UID STORE 5,7,10,25 +FLAGS.SILENT (\\Deleted)")
    out = cmd(s, "EXPUNGE")
    m = re.fullmatch(rb"\* VANISHED 5,7,10,25\r\nt OK \[HIGHESTMODSEQ (\d+)\] EXPUNGE completed\r\n", out)
    assert m, out
    h1 = int(m.group(1))
    assert h1 > h0 and highest(cmd(s, "STATUS INBOX (HIGHESTMODSEQ)")) == h1
    cmd(s, "STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    out = cmd(s, "UID EXPUNGE 2:30")
    m = re.fullmatch(rb"\* VANISHED 2:3\r\nt OK \[HIGHESTMODSEQ (\d+)\] EXPUNGE completed\r\n", out)
    assert m, out
    h2 = int(m.group(1))
    # RFC 7162 §3.2.6: what went since h1 (not in the view any more) and what changed
    out = cmd(s, f"UID FETCH 1:30 (FLAGS) (CHANGEDSINCE {h1} VANISHED)")
    assert out == (b"* VANISHED (EARLIER) 2:3\r\n"
                   b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent) MODSEQ (%d))\r\n"
                   b"t OK FETCH completed\r\n") % (h2 - 1)
    assert cmd(s, f"UID FETCH 1:30 (FLAGS) (CHANGEDSINCE {h2} VANISHED)") == b"t OK FETCH completed\r\n"
    s.close()


def test_other_sessions_and_processes_expunges_come_as_vanished(imap: IMAPServer) -> None:
    deliver(imap, 8)
    imap.maildir().create_folder("Trash")
    a = qlogin(imap)
    v = validity(cmd(a, "SELECT INBOX"))
    b = login(imap)
    cmd(b, "SELECT INBOX")
    cmd(b, "STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    assert cmd(b, "EXPUNGE") == b"* 4 EXPUNGE\r\n* 2 EXPUNGE\r\nt OK EXPUNGE completed\r\n"  # b: no QRESYNC
    # held back during FETCH like EXPUNGE (RFC 3501 §7.4.1: sequence numbers must not move)
    assert cmd(a, "FETCH 4 (UID)") == b"* 4 FETCH (UID 4)\r\nt OK FETCH completed\r\n"
    assert cmd(a, "NOOP") == b"* VANISHED 2,4\r\nt OK NOOP completed\r\n"
    # a flag change by another session: unsolicited FETCH with UID (§3.2.4) and MODSEQ
    cmd(b, "UID STORE 6 +FLAGS.SILENT (\\Flagged)")
    out = cmd(a, "NOOP")
    assert re.fullmatch(rb"\* 4 FETCH \(UID 6 FLAGS \(\\Flagged \\Recent\) MODSEQ \(\d+\)\)\r\nt OK NOOP completed\r\n",
                        out), out
    cmd(b, "UID MOVE 1 Trash")  # MOVE, CLOSE by another session; an expunge by another process
    assert cmd(a, "NOOP") == b"* VANISHED 1\r\nt OK NOOP completed\r\n"
    cmd(b, "UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    cmd(b, "CLOSE")
    assert cmd(a, "NOOP") == b"* VANISHED 3\r\nt OK NOOP completed\r\n"
    folder = imap.maildir().folder("INBOX")
    folder.sync()
    folder.expunge([8])
    assert cmd(a, "NOOP") == b"* VANISHED 8\r\nt OK NOOP completed\r\n"
    # pushed while idling (RFC 2177)
    a.sendall(b"i IDLE\r\n")
    got = b""
    while not got.endswith(b"+ idling\r\n"):
        got += a.recv(4096)
    assert got == b"+ idling\r\n"
    cmd(b, "SELECT INBOX")
    cmd(b, "UID STORE 5 +FLAGS.SILENT (\\Deleted)")
    cmd(b, "EXPUNGE")
    got = b""
    while b"VANISHED" not in got:
        got += a.recv(4096)
    a.sendall(b"DONE\r\n")
    got += until(a, b"i")
    assert got.endswith(b"* VANISHED 5\r\ni OK IDLE terminated\r\n"), got
    # its own MOVE: COPYUID first (RFC 6851 §4.3), then VANISHED, then HIGHESTMODSEQ
    out = cmd(a, "MOVE 1 Trash")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 6 2\] Moved\r\n\* VANISHED 6\r\n"
                        rb"t OK \[HIGHESTMODSEQ \d+\] MOVE completed\r\n", out), out
    assert b"* 1 EXISTS" in cmd(a, f"SELECT INBOX (QRESYNC ({v} 1))")  # only UID 7 is left
    for s in (a, b):
        s.close()


def test_resync_after_expunges_and_flag_changes(imap: IMAPServer) -> None:
    """RFC 7162 §3.2.5.1 and §3.2.6: a client comes back; exact, not merely generous."""
    deliver(imap, 20)
    folder = imap.maildir().folder("INBOX")
    folder.sync()
    folder.expunge([20])  # gone before the client's first sync: it never knew UID 20
    a = qlogin(imap)
    out = cmd(a, "SELECT INBOX")
    h0, v = highest(out), validity(out)
    a.close()
    # while it is away: another session expunges 3, 8, 9 and sets \Seen on 12, another
    # process expunges 15, and UID 21 arrives
    b = login(imap)
    cmd(b, "SELECT INBOX")
    cmd(b, "UID STORE 3,8:9 +FLAGS.SILENT (\\Deleted)")
    cmd(b, "EXPUNGE")
    cmd(b, "UID STORE 12 +FLAGS.SILENT (\\Seen)")
    b.close()
    folder.sync()
    folder.expunge([15])
    imap.deliver(ALICE, message("q20"))
    a = qlogin(imap)
    out = cmd(a, f"SELECT INBOX (QRESYNC ({v} {h0} 1:20))")
    m = re.search(rb"HIGHESTMODSEQ (\d+)", out)
    assert m
    h = int(m.group(1))
    assert h > h0
    mailboxid = re.search(rb"\[MAILBOXID \((\w+)\)\]", out)
    assert mailboxid
    assert out == FLAGS + (
        b"* 16 EXISTS\r\n"
        b"* 1 RECENT\r\n"
        b"* OK [UNSEEN 1] First unseen\r\n"
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
        b"* OK [UIDNEXT 22] Predicted next UID\r\n"
        b"* OK [MAILBOXID (%s)] Ok\r\n"  # RFC 8474 §4.2
        b"* OK [HIGHESTMODSEQ %d] Highest\r\n"
        b"* VANISHED (EARLIER) 3,8:9,15\r\n"  # not 20: the client synced after it went
        b"* 9 FETCH (UID 12 FLAGS (\\Seen) MODSEQ (%d))\r\n"  # 21 is not in known-uids
        b"t OK [READ-WRITE] SELECT completed\r\n") % (v, mailboxid.group(1), h, h)
    # the same over UID FETCH (RFC 7162 §3.2.6); now the arrival is in the set
    out = cmd(a, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)")
    assert out == (b"* VANISHED (EARLIER) 3,8:9,15\r\n"
                   b"* 9 FETCH (UID 12 FLAGS (\\Seen) MODSEQ (%d))\r\n"
                   b"* 16 FETCH (UID 21 FLAGS (\\Recent) MODSEQ (%d))\r\n"
                   b"t OK FETCH completed\r\n") % (h, h)
    out = cmd(a, f"UID FETCH 10:14 (FLAGS) (CHANGEDSINCE {h0} VANISHED)")
    assert out == b"* 9 FETCH (UID 12 FLAGS (\\Seen) MODSEQ (%d))\r\nt OK FETCH completed\r\n" % h
    # up to date: nothing at all
    assert cmd(a, f"SELECT INBOX (QRESYNC ({v} {h} 1:21))").endswith(
        b"* OK [HIGHESTMODSEQ %d] Highest\r\nt OK [READ-WRITE] SELECT completed\r\n" % h)
    a.close()


def test_index_lost_between_sessions(tmp_path: Path) -> None:
    """The index is a cache: lost, modseqs restart above the floor and the answer is the
    conservative one of RFC 7162 §3.2.5.2 (every known UID that is gone), never a wrong one;
    the message sequence match data narrows it."""
    gen = cast(Generator[IMAPServer, None, None], make_server(tmp_path))
    imap = next(gen)
    deliver(imap, 10)
    root = imap.maildir().root
    folder = imap.maildir().folder("INBOX")
    folder.sync()
    folder.expunge([1])  # before the client's sync: it knows
    a = qlogin(imap)
    out = cmd(a, "SELECT INBOX")
    h0, v = highest(out), validity(out)
    a.close()
    b = login(imap)
    cmd(b, "SELECT INBOX")
    cmd(b, "UID STORE 6 +FLAGS.SILENT (\\Deleted)")
    cmd(b, "EXPUNGE")
    cmd(b, "UID STORE 9 +FLAGS.SILENT (\\Flagged)")
    b.close()
    gen.close()
    for p in root.glob(INDEX_NAME + "*"):
        p.unlink()
    folder.sync()
    folder.expunge([7])  # while the server is down (a Dovecot on the same Maildir)
    gen = cast(Generator[IMAPServer, None, None], make_server(tmp_path))
    imap = next(gen)
    a = qlogin(imap)
    out = cmd(a, f"SELECT INBOX (QRESYNC ({v} {h0} 1:10))")
    h = highest(out)
    assert h > h0  # RFC 7162 §3.1.1: never backwards
    vanished = re.findall(rb"\* VANISHED \(EARLIER\) (\S+)\r\n", out)
    assert vanished == [b"1,6:7"]  # 6 and 7 went; 1 too (generous: the client ignores it)
    fetched = re.findall(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)\r\n", out)
    # every message the client knows is sent again, with its flags as they are now (the
    # \Recent claims went with the index: recent once more, as docs/on-disk.md says)
    assert [(int(n), int(u), f.replace(b"\\Recent", b"").strip()) for n, u, f, _ in fetched] == [
        (1, 2, b""), (2, 3, b""), (3, 4, b""), (4, 5, b""), (5, 8, b""), (6, 9, b"\\Flagged"), (7, 10, b"")]
    assert all(h0 < int(m) <= h for *_, m in fetched)
    # RFC 7162 §3.2.5.2: the client says messages 1:3 were UIDs 2:4; they still are, so
    # nothing at or below UID 4 can be gone: UID 1 is no longer reported
    out = cmd(a, f"EXAMINE INBOX (QRESYNC ({v} {h0} 1:10 (1:3 2:4)))")
    assert re.findall(rb"\* VANISHED \(EARLIER\) (\S+)\r\n", out) == [b"6:7"]
    out = cmd(a, f"EXAMINE INBOX (QRESYNC ({v} {h0} 1:10 (5:6 6:7)))")  # message 5 is UID 8 now: no help
    assert re.findall(rb"\* VANISHED \(EARLIER\) (\S+)\r\n", out) == [b"1,6:7"]
    # huge sets cost nothing: bounded by UIDNEXT and EXISTS, not by what the client names
    out = cmd(a, f"EXAMINE INBOX (QRESYNC ({v} {h0} 1:4294967295 (1:4294967295 1:4294967295)))")
    assert re.findall(rb"\* VANISHED \(EARLIER\) (\S+)\r\n", out) == [b"1,6:7"]
    out = cmd(a, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)")
    assert out.startswith(b"* VANISHED (EARLIER) 1,6:7\r\n")
    # from the new index on, answers are exact again
    cmd(a, "SELECT INBOX")
    cmd(a, "UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    cmd(a, "EXPUNGE")
    out = cmd(a, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h} VANISHED)")
    assert out.startswith(b"* VANISHED (EARLIER) 2\r\n")
    a.close()
    gen.close()


# -- the reference: the same conversation with a real Dovecot 2.3 ---------------------------------

def _essence(data: bytes) -> list[object]:
    """What must agree between two servers: VANISHED sets, [CLOSED], each FETCH's sequence
    number, UID and flags (not \\Recent, not modseq values: those are each server's own),
    and each tagged status."""
    out: list[object] = []
    for line in data.split(b"\r\n"):
        if line.startswith((b"* VANISHED", b"* OK [CLOSED]")):
            out.append(line.split(b"]")[0] if b"CLOSED" in line else line)
        elif m := re.match(rb"\* (\d+) FETCH \((.*)\)$", line):
            uid = re.search(rb"UID (\d+)", m.group(2))
            flags = re.search(rb"FLAGS \(([^)]*)\)", m.group(2))
            out.append((int(m.group(1)), int(uid.group(1)) if uid else None,
                        sorted(set(flags.group(1).split()) - {b"\\Recent"}) if flags else None))
        elif m := re.match(rb"t\d+ (OK|NO|BAD)", line):
            out.append(m.group(1))
    return out


def _conversation(port: int, user: str) -> list[list[object]]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.recv(4096)
    n = 0

    def run(line: str) -> bytes:
        nonlocal n
        n += 1
        return cmd(s, line, f"t{n}")

    run(f"LOGIN {user} secret")
    for i in range(10):
        body = f"Subject: d{i}\r\n\r\nbody {i}\r\n".encode()
        s.sendall(b"t0 APPEND INBOX {%d+}\r\n%s\r\n" % (len(body), body))
        until(s, b"t0")
    got = [_essence(run("ENABLE QRESYNC"))]
    out = run("SELECT INBOX")
    h0, v = highest(out), validity(out)
    run("UID STORE 2,4,6 +FLAGS.SILENT (\\Deleted)")
    for line in ("EXPUNGE", "UID STORE 7 +FLAGS (\\Flagged)", "UID STORE 10 +FLAGS.SILENT (\\Deleted)",
                 "UID EXPUNGE 10", f"SELECT INBOX (QRESYNC ({v} {h0} 1:10))",
                 f"UID FETCH 5:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)",
                 f"UID FETCH 9:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)",
                 f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0 + 100} VANISHED)",
                 f"FETCH 1 (FLAGS) (CHANGEDSINCE {h0} VANISHED)",
                 "UID FETCH 1 (FLAGS) (VANISHED)",
                 f"EXAMINE INBOX (QRESYNC ({v} {h0} 1:10 (1:3 1,3,5)))",
                 f"SELECT INBOX (QRESYNC ({v} 0 3:8))",
                 f"SELECT INBOX (QRESYNC ({v + 1} {h0}))",
                 "SELECT nosuch", "SELECT INBOX", "LOGOUT"):
        got.append(_essence(run(line)))
    s.close()
    return got


def test_same_answers_as_dovecot(dovecot: PrivateDovecot, imap: IMAPServer) -> None:
    dovecot.start()
    theirs = _conversation(dovecot.port, "alice@example.test")
    ours = _conversation(imap.port, ALICE)
    assert ours == theirs
    # and the conversation said something: the resync found what went and what changed
    assert [b"* VANISHED 2,4,6", b"OK"] in ours
    assert [b"* OK [CLOSED", b"* VANISHED (EARLIER) 2,4,6,10", (4, 7, [b"\\Flagged"]), b"OK"] in ours
