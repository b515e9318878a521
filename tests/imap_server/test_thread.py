"""THREAD (RFC 5256) against the real server: byte-level transcripts over a raw socket,
shaped after the RFC's examples (§4 A284 "* THREAD" for nothing found, §5's trees)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from .conftest import IMAPServer
from .test_search_ext import cmd, login  # noqa: F401  (login is a fixture)


def _msg(n: int, minute: int, extra: str = "", subject: str = "three") -> bytes:
    return (f"From: carol@example.org\nSubject: {subject}\nMessage-ID: <{n}@x>\n"
            f"Date: Sun, 5 Mar 2000 10:{minute:02d}:00 +0000\nX-Pick: {'yes' if extra is not None else 'no'}\n"
            f"{extra}\nbody {n}\n").encode()


def rfc5256_mailbox(imap: IMAPServer) -> None:
    """96 messages; those with X-Pick: yes form RFC 5256 §5's tree "(2)(3 6 (4 23)(44 7 96))"."""
    tree = {  # seq -> (minute, References)
        2: (1, ""), 3: (2, ""), 6: (3, "<3@x>"), 4: (4, "<3@x> <6@x>"), 23: (5, "<3@x> <6@x> <4@x>"),
        44: (6, "<3@x> <6@x>"), 7: (7, "<3@x> <6@x> <44@x>"), 96: (8, "<3@x> <6@x> <44@x> <7@x>"),
    }
    for n in range(1, 97):
        if n in tree:
            minute, refs = tree[n]
            extra = f"References: {refs}\n" if refs else ""
            imap.deliver("alice@example.test", _msg(n, minute, extra, "two" if n == 2 else "three")
                         .replace(b"X-Pick: no", b"X-Pick: yes"))
        else:
            imap.deliver("alice@example.test", _msg(n, 30).replace(b"X-Pick: yes", b"X-Pick: no"))


def test_capability(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    caps = cmd(login(imap), "CAPABILITY").split(b"\r\n")[0].split()
    assert b"THREAD=REFERENCES" in caps and b"THREAD=ORDEREDSUBJECT" in caps


def test_rfc5256_examples(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    rfc5256_mailbox(imap)
    s = login(imap)
    cmd(s, "SELECT INBOX")
    # RFC 5256 §5 thread-list example
    out = cmd(s, "THREAD REFERENCES UTF-8 HEADER X-Pick yes", "A285")
    assert out == b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\nA285 OK THREAD completed\r\n"
    # RFC 5256 §4 A284: nothing found is "* THREAD" alone
    out = cmd(s, 'THREAD ORDEREDSUBJECT US-ASCII TEXT "gewp"', "A284")
    assert out == b"* THREAD\r\nA284 OK THREAD completed\r\n"
    # ORDEREDSUBJECT: "two", then every "three" under the first one (sent date order)
    out = cmd(s, "THREAD ORDEREDSUBJECT UTF-8 HEADER X-Pick yes", "A283")
    assert out == b"* THREAD (2)(3 (6)(4)(23)(44)(7)(96))\r\nA283 OK THREAD completed\r\n"


def test_uid_thread_and_expunge(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    for n, refs in ((1, ""), (2, "<1@x>"), (3, "<1@x>"), (4, "<1@x> <2@x>")):
        imap.deliver("alice@example.test", _msg(n, n, f"References: {refs}\n" if refs else ""))
    s = login(imap)
    cmd(s, "SELECT INBOX")
    cmd(s, "STORE 1 +FLAGS.SILENT (\\Deleted)")
    cmd(s, "EXPUNGE")
    # message 1 is gone: its container is a dummy at the top with two children (RFC 5256 §4 step 4)
    assert cmd(s, "THREAD REFERENCES US-ASCII ALL") == b"* THREAD ((1 3)(2))\r\nt OK THREAD completed\r\n"
    assert cmd(s, "UID THREAD REFERENCES US-ASCII ALL") == b"* THREAD ((2 4)(3))\r\nt OK THREAD completed\r\n"
    # only what the search finds is threaded: 4's parent (UID 2) is left out, a dummy like 1
    assert cmd(s, "UID THREAD REFERENCES US-ASCII UID 3:4") == b"* THREAD ((3)(4))\r\nt OK THREAD completed\r\n"


def test_bad_thread_commands(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(imap)
    assert cmd(s, "THREAD REFERENCES UTF-8 ALL").startswith(b"t BAD")  # not selected
    cmd(s, "SELECT INBOX")
    assert cmd(s, "THREAD JWZ UTF-8 ALL") == b"t BAD Unknown thread algorithm JWZ\r\n"
    assert cmd(s, "THREAD REFERENCES").startswith(b"t BAD")
    assert cmd(s, "THREAD REFERENCES KOI8-R ALL").startswith(b"t NO [BADCHARSET")
    assert cmd(s, "NOOP") == b"t OK NOOP completed\r\n"


def test_threads_from_the_index_not_the_files(imap: IMAPServer,
                                              login: Callable[[IMAPServer], socket.socket]) -> None:
    # Threading reads the folder index: once a message is indexed its file is not read
    # again, so a file changed behind the server's back (never done to a real Maildir)
    # does not change the answer.
    names = [imap.deliver("alice@example.test", _msg(n, n, "References: <1@x>\n" if n == 2 else ""))
             for n in (1, 2)]
    s = login(imap)
    cmd(s, "SELECT INBOX")
    assert cmd(s, "THREAD REFERENCES UTF-8 ALL") == b"* THREAD (1 2)\r\nt OK THREAD completed\r\n"
    cur = imap.maildir().root / "cur"
    path = next(p for p in cur.iterdir() if p.name.startswith(names[1]))
    path.write_bytes(_msg(2, 2, "References: <other@x>\n"))
    assert cmd(s, "THREAD REFERENCES UTF-8 ALL") == b"* THREAD (1 2)\r\nt OK THREAD completed\r\n"


def test_hostile_references_answered_quickly(imap: IMAPServer,
                                             login: Callable[[IMAPServer], socket.socket]) -> None:
    # a References field of 10,000 ids twice over, with a loop back to the message itself
    ids = " ".join(f"<r{i}@x>" for i in range(10_000))
    imap.deliver("alice@example.test", _msg(1, 1, f"References: {ids} <1@x> {ids}\n"))
    imap.deliver("alice@example.test", _msg(2, 2, "References: <r9999@x> <r0@x>\nIn-Reply-To: <1@x>\n"))
    s = login(imap)
    cmd(s, "SELECT INBOX")
    start = time.monotonic()
    out = cmd(s, "THREAD REFERENCES UTF-8 ALL")
    assert time.monotonic() - start < 20  # did not hang
    assert out.endswith(b"t OK THREAD completed\r\n") and out.startswith(b"* THREAD (")
