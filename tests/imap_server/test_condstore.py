"""CONDSTORE (RFC 7162 §3.1) and ``\\Recent`` (RFC 3501 §2.3.2) against the real server.

Raw transcripts (imaplib's socket) and imapclient's CONDSTORE helpers. Changes made
*outside* the IMAP server (storage calls, as POP3, the MDA or a Dovecot would make them)
must come back with a higher MODSEQ; HIGHESTMODSEQ must never go backwards, even when the
index file is lost.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

from imapclient import IMAPClient

from mailstack.imap.index import FLOOR_NAME, INDEX_NAME

from .conftest import PASSWORD, IMAPServer, make_server, message
from .test_commands import raw, until

ALICE = "alice@example.test"


def login(imap: IMAPServer) -> socket.socket:
    s = raw(imap)
    s.sendall(b"a LOGIN alice@example.test secret\r\n")
    assert b"a OK" in until(s, b"a")
    return s


def cmd(s: socket.socket, line: str, tag: str = "t") -> bytes:
    s.sendall(f"{tag} {line}\r\n".encode())
    return until(s, tag.encode())


def highest(data: bytes) -> int:
    m = re.search(rb"HIGHESTMODSEQ (\d+)", data)
    assert m, data
    return int(m.group(1))


def modseqs(data: bytes) -> dict[int, int]:
    """UID -> MODSEQ from FETCH responses that carry both."""
    out = {}
    for line in data.split(b"\r\n"):
        u, m = re.search(rb"UID (\d+)", line), re.search(rb"MODSEQ \((\d+)\)", line)
        if u and m:
            out[int(u.group(1))] = int(m.group(1))
    return out


def test_capability_enable_select_status(imap: IMAPServer) -> None:
    for i in range(3):
        imap.deliver(ALICE, message(f"c{i}"))
    s = login(imap)
    assert b"CONDSTORE" in cmd(s, "CAPABILITY")
    out = cmd(s, "SELECT INBOX")
    assert b"HIGHESTMODSEQ" not in out  # not enabled yet
    out = cmd(s, "ENABLE CONDSTORE")
    assert b"* ENABLED CONDSTORE\r\n" in out  # RFC 5161
    assert b"* ENABLED\r\n" in cmd(s, "ENABLE CONDSTORE")  # already on: nothing new
    out = cmd(s, "SELECT INBOX")
    h = highest(out)
    assert h >= 1 and b"t OK [READ-WRITE]" in out
    out = cmd(s, "STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
    assert b"* STATUS INBOX (HIGHESTMODSEQ %d MESSAGES 3)" % h in out
    out = cmd(s, "EXAMINE INBOX (CONDSTORE)")
    assert highest(out) == h and b"[READ-ONLY]" in out
    s.close()
    # SELECT (CONDSTORE) alone enables it (RFC 7162 §3.2.5)
    s = login(imap)
    out = cmd(s, "SELECT INBOX (CONDSTORE)")
    assert highest(out) == h
    out = cmd(s, "FETCH 1:* (UID FLAGS MODSEQ)")
    assert len(modseqs(out)) == 3 and max(modseqs(out).values()) <= h
    s.close()


def test_store_fetch_changedsince_unchangedsince_search(imap: IMAPServer) -> None:
    for i in range(4):
        imap.deliver(ALICE, message(f"s{i}"))
    s = login(imap)
    h0 = highest(cmd(s, "SELECT INBOX (CONDSTORE)"))
    out = cmd(s, "STORE 2 +FLAGS (\\Flagged)")
    m = re.search(rb"\* 2 FETCH \(FLAGS \([^)]*\\Flagged[^)]*\) MODSEQ \((\d+)\)\)", out)
    assert m, out
    m2 = int(m.group(1))
    assert m2 > h0
    # .SILENT still reports the new MODSEQ (RFC 7162 §3.1.3)
    out = cmd(s, "UID STORE 3 +FLAGS.SILENT (\\Seen)")
    assert re.search(rb"\* 3 FETCH \(UID 3 MODSEQ \((\d+)\)\)", out), out
    m3 = modseqs(out)[3]
    assert m3 > m2
    # CHANGEDSINCE: only what changed after the value; MODSEQ implied (RFC 7162 §3.1.4.1)
    out = cmd(s, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0})")
    assert modseqs(out) == {2: m2, 3: m3}
    out = cmd(s, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m2})")
    assert modseqs(out) == {3: m3}
    # UNCHANGEDSINCE: 3 changed after m2, so only 2 and 4 are stored (RFC 7162 §3.1.3)
    out = cmd(s, f"STORE 2:4 (UNCHANGEDSINCE {m2}) +FLAGS (\\Answered)")
    assert b"t OK [MODIFIED 3]" in out, out
    assert b"* 3 FETCH" not in out and b"* 2 FETCH" in out and b"* 4 FETCH" in out
    out = cmd(s, "UID STORE 1:4 (UNCHANGEDSINCE 0) -FLAGS (\\Answered)")
    assert b"t OK [MODIFIED 1:4]" in out  # 0 always fails
    out = cmd(s, "FETCH 2,3,4 (FLAGS)")
    assert out.count(b"\\Answered") == 2
    # SEARCH MODSEQ answers with the highest modseq found (RFC 7162 §3.1.5)
    out = cmd(s, f"UID SEARCH MODSEQ {m3}")
    top = max(modseqs(cmd(s, "UID FETCH 1:* (MODSEQ)")).values())
    assert re.search(rb"\* SEARCH( \d+)+ \(MODSEQ %d\)" % top, out), out
    out = cmd(s, f'SEARCH MODSEQ "/flags/\\\\draft" all {top + 1}')
    assert b"* SEARCH\r\n" in out
    assert highest(cmd(s, "STATUS INBOX (HIGHESTMODSEQ)")) == top
    s.close()


def test_changes_by_other_processes_get_higher_modseq(imap: IMAPServer) -> None:
    for i in range(3):
        imap.deliver(ALICE, message(f"o{i}"))
    s = login(imap)
    h0 = highest(cmd(s, "SELECT INBOX (CONDSTORE)"))
    # another process (POP3, Dovecot, ...) renames a file: new flags in storage only
    folder = imap.maildir().folder("INBOX")
    folder.sync()
    folder.set_flags(2, {"\\Seen", "\\Flagged"})
    out = cmd(s, "NOOP")
    m = re.search(rb"\* 2 FETCH \(FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)", out)
    assert m and b"\\Flagged" in m.group(1), out
    m2 = int(m.group(2))
    assert m2 > h0
    # an arrival, then an expunge by another process: HIGHESTMODSEQ goes up each time
    imap.deliver(ALICE, message("o3"))
    out = cmd(s, "NOOP")
    assert b"* 4 EXISTS" in out
    h1 = highest(cmd(s, "STATUS INBOX (HIGHESTMODSEQ)"))
    assert h1 > m2
    out = cmd(s, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m2})")
    assert set(modseqs(out)) == {4}
    folder.sync()
    folder.expunge([1])
    assert b"* 1 EXPUNGE" in cmd(s, "NOOP")
    assert highest(cmd(s, "STATUS INBOX (HIGHESTMODSEQ)")) > h1
    # a session without CONDSTORE changes flags; a CONDSTORE session sees a higher MODSEQ
    plain = login(imap)
    cmd(plain, "SELECT INBOX")
    cmd(plain, "UID STORE 3 +FLAGS (\\Deleted)")
    out = cmd(s, "NOOP")
    assert re.search(rb"\* \d FETCH \(FLAGS \([^)]*\\Deleted[^)]*\) MODSEQ \((\d+)\)\)", out), out
    plain.close()
    s.close()


def test_modseq_survives_restart_and_lost_index(tmp_path: Path) -> None:
    gen = make_server(tmp_path)
    imap = next(gen)
    for i in range(3):
        imap.deliver(ALICE, message(f"l{i}"))
    s = login(imap)
    cmd(s, "SELECT INBOX (CONDSTORE)")
    cmd(s, "STORE 1:3 +FLAGS (\\Seen)")
    cmd(s, "STORE 1 +FLAGS (\\Flagged)")
    seen = modseqs(cmd(s, "UID FETCH 1:* (MODSEQ)"))
    h = highest(cmd(s, "STATUS INBOX (HIGHESTMODSEQ)"))
    s.close()
    gen.close()
    root = imap.maildir().root
    assert (root / FLOOR_NAME).exists()
    gen = make_server(tmp_path)  # a restart keeps every modseq
    imap = next(gen)
    s = login(imap)
    assert highest(cmd(s, "SELECT INBOX (CONDSTORE)")) == h
    assert modseqs(cmd(s, "UID FETCH 1:* (MODSEQ)")) == seen
    s.close()
    gen.close()
    for p in root.glob(INDEX_NAME + "*"):  # the index is lost
        p.unlink()
    gen = make_server(tmp_path)
    imap = next(gen)
    s = login(imap)
    h2 = highest(cmd(s, "SELECT INBOX (CONDSTORE)"))
    assert h2 > h  # RFC 7162 §3.1.1: never backwards for the same UIDVALIDITY
    assert all(m > h for m in modseqs(cmd(s, "UID FETCH 1:* (MODSEQ)")).values())
    assert b"* SEARCH\r\n" not in cmd(s, f"SEARCH MODSEQ {h + 1}")
    s.close()
    gen.close()


def test_imapclient_condstore_helpers(imap: IMAPServer) -> None:
    for i in range(3):
        imap.deliver(ALICE, message(f"ic{i}"))
    with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
        c.login(ALICE, PASSWORD)
        assert c.has_capability("CONDSTORE")
        assert c.enable("CONDSTORE") == [b"CONDSTORE"]
        info = c.select_folder("INBOX")
        h0 = info[b"HIGHESTMODSEQ"]
        c.add_flags([2], [b"\\Flagged"])
        changed = c.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {h0}"])
        assert list(changed) == [2] and changed[2][b"MODSEQ"][0] > h0
        assert c.search(["MODSEQ", h0 + 1]) == [2]
        status = c.folder_status("INBOX", [b"HIGHESTMODSEQ"])
        assert status[b"HIGHESTMODSEQ"] == changed[2][b"MODSEQ"][0]


def test_recent_is_claimed_once(imap: IMAPServer) -> None:
    for i in range(2):
        imap.deliver(ALICE, message(f"r{i}"))
    a, b = login(imap), login(imap)
    assert b"RECENT 2" in cmd(a, "STATUS INBOX (RECENT MESSAGES)")
    out = cmd(a, "EXAMINE INBOX")  # EXAMINE looks, never claims
    assert b"* 2 RECENT" in out
    out = cmd(a, "SELECT INBOX")
    assert b"* 2 RECENT" in out
    assert cmd(a, "FETCH 1 (FLAGS)").count(b"\\Recent") == 1
    out = cmd(b, "SELECT INBOX")
    assert b"* 0 RECENT" in out and b"\\Recent" not in cmd(b, "FETCH 1:* (FLAGS)")
    assert b"RECENT 0" in cmd(b, "STATUS INBOX (RECENT)")
    assert b"* 2 SEARCH" not in cmd(a, "SEARCH RECENT") and b"* SEARCH 1 2" in cmd(a, "SEARCH RECENT")
    # an arrival while both have it selected: recent for exactly one of them
    imap.deliver(ALICE, message("r2"))
    out_a, out_b = cmd(a, "NOOP"), cmd(b, "NOOP")
    assert b"* 3 EXISTS" in out_a and b"* 3 EXISTS" in out_b
    recent = [b"\\Recent" in cmd(x, "FETCH 3 (FLAGS)") for x in (a, b)]
    assert recent == [True, False]
    a.close()
    b.close()
    c = login(imap)
    assert b"* 0 RECENT" in cmd(c, "SELECT INBOX")
    c.close()


def test_recent_claim_kept_when_modseqs_start_later(imap: IMAPServer) -> None:
    """A claim made before any CONDSTORE session ever reconciled the folder stays made."""
    imap.deliver(ALICE, message("x"))
    a = login(imap)
    assert b"* 1 RECENT" in cmd(a, "SELECT INBOX")
    b = login(imap)
    out = cmd(b, "SELECT INBOX (CONDSTORE)")
    assert b"* 0 RECENT" in out and highest(out) >= 1
    d = login(imap)
    assert b"* 0 RECENT" in cmd(d, "SELECT INBOX")
    d.close()
    imap.deliver(ALICE, message("y"))
    out = cmd(b, "NOOP")
    assert b"* 2 EXISTS" in out and b"* 1 RECENT" in out
    c = login(imap)
    assert b"* 0 RECENT" in cmd(c, "SELECT INBOX")
    for x in (a, b, c):
        x.close()


def test_big_search_does_not_block_other_sessions(imap: IMAPServer) -> None:
    """SEARCH BODY over 10,000 messages runs in a worker thread: another session's
    commands are answered meanwhile (requirement: no session blocks the others)."""
    md = imap.maildir()
    cur = md.root / "cur"
    body = b"From: a@example.org\nSubject: x\n\n" + b"filler text line\n" * 200
    for i in range(10_000):
        extra = b"needle\n" if i % 2500 == 0 else b""
        data = body + extra
        vsize = len(data) + data.count(b"\n")
        (cur / f"1700000000.M{i}P2Q1.host,S={len(data)},W={vsize}:2,").write_bytes(data)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    other = login(imap)
    result: dict[str, object] = {}

    def search() -> None:
        t = time.monotonic()
        result["out"] = cmd(s, "UID SEARCH BODY needle")
        result["took"] = time.monotonic() - t

    th = threading.Thread(target=search)
    th.start()
    time.sleep(0.05)
    answered = []
    while th.is_alive():
        t = time.monotonic()
        assert b"t OK" in cmd(other, "NOOP")
        answered.append(time.monotonic() - t)
        time.sleep(0.05)
    th.join()
    out = result["out"]
    assert isinstance(out, bytes) and re.search(rb"\* SEARCH 1 2501 5001 7501\r\n", out), out
    assert answered, "the SEARCH finished before another command could be sent"
    assert max(answered) < 1.0, (max(answered), result["took"])
    print(f"SEARCH BODY over 10,000: {result['took']:.2f}s; {len(answered)} NOOPs meanwhile, slowest {max(answered):.3f}s")
    s.close()
    other.close()
