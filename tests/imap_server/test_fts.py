"""SEARCH BODY/TEXT from the full-text index, over a real server and imaplib.

How "no message file is read" is observed, honestly and without a counter: once a
search has indexed the folder, every message file is overwritten in place (same name,
so storage sees the same messages with the same flags) with another text. A server that
answers from the index still finds the old words and not the new ones; one that reads
the files (``full_text_index = false``, or the code before the index) finds the new ones.
"""

from __future__ import annotations

import imaplib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.imap.fts import FTS_NAME, Indexer
from mailstack.storage import hooks as storage_hooks

from .conftest import IMAPServer, make_server, message


@pytest.fixture
def scanning(tmp_path: Path) -> Iterator[IMAPServer]:
    """A second server that reads the files for every BODY/TEXT search."""
    yield from make_server(tmp_path / "scan", imap={"full_text_index": False})


def search(c: imaplib.IMAP4, *criteria: str) -> list[bytes]:
    typ, data = c.uid("SEARCH", *criteria)
    assert typ == "OK", data
    uids: list[bytes] = data[0].split()
    return uids


def overwrite_files(imap: IMAPServer, text: str) -> None:
    for path in (imap.maildir().root / "cur").iterdir():
        data = path.read_bytes()
        head = data[: data.index(b"\n\n") + 2]
        path.write_bytes(head + text.encode())


def docs(imap: IMAPServer) -> int:
    db = sqlite3.connect(imap.maildir().root / FTS_NAME)
    try:
        return int(db.execute("SELECT count(*) FROM doc").fetchone()[0])
    finally:
        db.close()


def test_a_current_index_answers_without_reading_the_files(imap: IMAPServer) -> None:
    for i in range(5):
        imap.deliver("alice@example.test", message(f"m{i}", f"the hedgehog number {i}\n"))
    c = imap.client()
    c.select("INBOX")
    assert search(c, "BODY", "HEDGEHOG") == [b"1", b"2", b"3", b"4", b"5"]  # reads and indexes
    overwrite_files(imap, "a porcupine instead\n")
    assert search(c, "BODY", "hedgehog") == [b"1", b"2", b"3", b"4", b"5"]
    assert search(c, "BODY", "porcupine") == []
    assert search(c, "TEXT", "\"number 3\"") == [b"4"]
    assert search(c, "BODY", "og") == [b"1", b"2", b"3", b"4", b"5"]  # short: the stored text
    assert search(c, "NOT", "BODY", "\"number 2\"") == [b"1", b"2", b"4", b"5"]
    # a message delivered now is read once, at the first search that needs it
    imap.deliver("alice@example.test", message("m5", "the hedgehog number 5\n"))
    c.noop()
    assert search(c, "BODY", "\"number 5\"") == [b"6"]
    overwrite_files(imap, "a porcupine instead\n")
    assert search(c, "BODY", "\"number 5\"") == [b"6"]
    c.logout()


def test_without_the_index_the_files_are_read(scanning: IMAPServer) -> None:
    """The observable of the test above is real: a scanning server sees the new text."""
    for i in range(3):
        scanning.deliver("alice@example.test", message(f"m{i}", f"the hedgehog number {i}\n"))
    c = scanning.client()
    c.select("INBOX")
    assert search(c, "BODY", "hedgehog") == [b"1", b"2", b"3"]
    overwrite_files(scanning, "a porcupine instead\n")
    assert search(c, "BODY", "hedgehog") == []
    assert search(c, "BODY", "porcupine") == [b"1", b"2", b"3"]
    assert not (scanning.maildir().root / FTS_NAME).exists()
    c.logout()


BODIES = [
    ("plain", "Hello World, the quick brown fox\n", ""),
    ("german", "Gr=C3=BC=C3=9Fe aus der Stra=C3=9Fe\n",
     "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n"),
    ("latin1", "Caf\xe9 cr\xe8me\n", "Content-Type: text/plain; charset=iso-8859-1\n"),
    ("b64", "SGVsbG8gaGVkZ2Vob2cgd29ybGQ=\n", "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n"),
    ("html", "<p>Quick &amp; brown</p>\n", "Content-Type: text/html; charset=utf-8\n"),
    ("attachment", '--b\n\nfirst part fox\n--b\nContent-Type: application/octet-stream\n\nhidden fox\n--b--\n',
     'Content-Type: multipart/mixed; boundary="b"\n'),
    ("empty", "", ""),
]
QUERIES = [
    ("BODY", "fox"), ("BODY", "FOX"), ("BODY", "strasse"), ("BODY", "STRAẞE"), ("BODY", "grüße"), ("BODY", "café"),
    ("BODY", "hedgehog"), ("BODY", "hidden"), ("BODY", "x"), ("BODY", "ox"), ("BODY", ""), ("BODY", "&amp;"),
    ("TEXT", "subject: german"), ("TEXT", "fox"), ("TEXT", "carol"), ("OR", "BODY", "fox", "BODY", "crème"),
    ("NOT", "BODY", "o"), ("BODY", "quick", "BODY", "brown"), ("UNDELETED", "BODY", "hedgehog"), ("BODY", "the quick brown fox\n"),
]


def test_answers_are_byte_identical_with_and_without_the_index(imap: IMAPServer, scanning: IMAPServer) -> None:
    for server in (imap, scanning):
        for subject, body, head in BODIES:
            server.deliver("alice@example.test", message(subject, "", extra=head.rstrip("\n")).rstrip(b"\n")
                           + b"\n\n" + body.encode("latin-1" if subject == "latin1" else "utf-8"))
    clients = [imap.client(), scanning.client()]
    for c in clients:
        c.select("INBOX")
        c.uid("SEARCH", "BODY", "warm-up")  # the indexed server learns the folder here
    seen: set[str] = set()
    for query in QUERIES:
        answers = []
        for c in clients:  # the last argument as a literal (imaplib sends it after the others)
            c.literal = query[-1].encode()  # type: ignore[assignment]  # typeshed: str
            answers.append(c.uid("SEARCH", "CHARSET", "UTF-8", *query[:-1]))
        assert answers[0] == answers[1], query
        seen.add(repr(answers[0]))
    assert len(seen) >= 8  # the queries tell the messages apart: no vacuous agreement
    assert docs(imap) == len(BODIES)
    for c in clients:
        c.logout()


def test_expunged_messages_leave_the_index(imap: IMAPServer) -> None:
    for i in range(4):
        imap.deliver("alice@example.test", message(f"m{i}", f"text {i}\n"))
    c = imap.client()
    c.select("INBOX")
    assert search(c, "BODY", "text") == [b"1", b"2", b"3", b"4"]
    assert docs(imap) == 4
    c.uid("STORE", "2:3", "+FLAGS", r"(\Deleted)")
    c.expunge()
    assert search(c, "BODY", "text") == [b"1", b"4"]
    assert docs(imap) == 2
    c.logout()


def test_a_deleted_index_is_rebuilt_and_answers_meanwhile(imap: IMAPServer) -> None:
    for i in range(3):
        imap.deliver("alice@example.test", message(f"m{i}", f"text {i}\n"))
    c = imap.client()
    c.select("INBOX")
    assert search(c, "BODY", "\"text 1\"") == [b"2"]
    for p in imap.maildir().root.glob(FTS_NAME + "*"):
        p.unlink()
    assert search(c, "BODY", "\"text 1\"") == [b"2"]
    assert docs(imap) == 3
    (imap.maildir().root / FTS_NAME).write_bytes(b"garbage" * 1000)
    assert search(c, "BODY", "\"text 2\"") == [b"3"]
    assert docs(imap) == 3
    c.logout()


def test_sort_and_thread_fields_come_from_the_index(imap: IMAPServer) -> None:
    """SORT, and THREAD's Message-ID / In-Reply-To / References / Subject / Date, need no
    message file once the folder index holds a message's top-level header fields."""
    imap.deliver("alice@example.test", message("beta", "x\n", extra="References: <root@example.test>"))
    imap.deliver("alice@example.test", message("alpha", "y\n", extra="In-Reply-To: <root@example.test>"))
    c = imap.client()
    c.select("INBOX")
    typ, data = c.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
    assert data == [b"2 1"]
    for path in (imap.maildir().root / "cur").iterdir():  # every header changed on disk
        path.write_bytes(b"Subject: zzz\nMessage-ID: <other@example.test>\n\nz\n")
    typ, data = c.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
    assert data == [b"2 1"]
    typ, data = c.uid("SORT", "(DATE)", "UTF-8", "ALL")
    assert data == [b"1 2"]
    assert search(c, "HEADER", "References", "<root@example.test>") == [b"1"]
    assert search(c, "HEADER", "In-Reply-To", "<root@example.test>") == [b"2"]
    assert search(c, "HEADER", "Message-ID", "@example.org") == [b"1", b"2"]
    assert search(c, "HEADER", "Message-ID", "other") == []
    c.logout()


@pytest.fixture
def indexer() -> Iterator[Indexer]:
    """The delivery-time indexer, registered as ``mailstack serve`` registers it."""
    ix = Indexer()
    storage_hooks.add(ix)
    yield ix
    storage_hooks.remove(ix)
    ix.close()


def test_mail_is_indexed_at_delivery(imap: IMAPServer, indexer: Indexer) -> None:
    """Kept in step at delivery (Dovecot's fts_autoindex): no search has read these
    messages, yet after their files are replaced the index still answers from what was
    delivered, by LMTP/MX delivery (Maildir.deliver) and by APPEND alike."""
    for i in range(3):
        imap.deliver("alice@example.test", message(f"m{i}", f"the hedgehog number {i}\n"))
    c = imap.client()
    c.append("INBOX", "", None, message("m3", "the hedgehog number 3\n"))
    indexer.drain()
    assert indexer.indexed == 4 and docs(imap) == 4
    overwrite_files(imap, "a porcupine instead\n")
    c.select("INBOX")
    assert search(c, "BODY", "hedgehog") == [b"1", b"2", b"3", b"4"]
    assert search(c, "BODY", "porcupine") == []
    c.logout()


def test_a_full_backlog_never_holds_up_delivery(imap: IMAPServer) -> None:
    ix = Indexer(backlog=1)
    ix._queue.put_nowait((imap.maildir().root, "x", b""))  # with a backlog of 1 the queue is often full
    storage_hooks.add(ix)
    try:
        for i in range(20):  # a put that finds it full skips the message: never waits
            imap.deliver("alice@example.test", message(f"m{i}", f"text {i}\n"))
    finally:
        storage_hooks.remove(ix)
        ix.close()
    c = imap.client()
    c.select("INBOX")
    assert len(search(c, "BODY", "text")) == 20  # what was skipped is indexed lazily, same answer
    c.logout()
