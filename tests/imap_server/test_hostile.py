"""Issue 10 against a real server: a stranger's message or a user's command cannot stall it.

The message with ``To: bob@example.test)`` is delivered as the MDA would, then fetched
with imaplib; a LIST with 50 ``%`` runs while another client connects: each must answer
within a generous "did not hang" bound.
"""

from __future__ import annotations

import imaplib
import socket
import threading
import time

from tests.imap_server.conftest import IMAPServer, message

HUNG = 20.0  # seconds: far above any honest run on a loaded machine, far below "forever"


def test_stray_paren_in_to_then_fetch_envelope(imap: IMAPServer) -> None:
    imap.deliver("alice@example.test", message(to="bob@example.test)", subject="paren"))
    c = imap.client()
    c.sock.settimeout(HUNG)
    c.select("INBOX")
    start = time.monotonic()
    typ, data = c.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
    assert typ == "OK" and time.monotonic() - start < HUNG
    assert b'(NIL NIL "bob" "example.test")' in data[0]  # type: ignore[operator]
    c.logout()


def test_hostile_headers_and_mime_fetch_promptly(imap: IMAPServer) -> None:
    nested = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(3000))
    imap.deliver("alice@example.test", message(subject="=?a?q?a " * 40_000))  # email.header: ~4 min
    imap.deliver("alice@example.test", ("MIME-Version: 1.0\n" + nested + "\nx\n").encode())
    imap.deliver("alice@example.test", message(to="(" * 5000 + "a:" * 5000))
    c = imap.client()
    c.sock.settimeout(HUNG)
    c.select("INBOX")
    start = time.monotonic()
    typ, _ = c.fetch("1:*", "(ENVELOPE BODYSTRUCTURE BODY.PEEK[1.1.1])")
    assert typ == "OK"
    typ, data = c.search(None, "SUBJECT", "zzz")
    assert typ == "OK" and data == [b""]
    assert time.monotonic() - start < HUNG
    c.logout()


def _banner_delay(port: int) -> float:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=HUNG) as s:
        s.settimeout(HUNG)
        assert s.recv(100).startswith(b"* OK")
    return time.monotonic() - start


def test_list_with_50_percent_signs_does_not_stall_others(imap: IMAPServer) -> None:
    md = imap.maildir()
    for i in range(30):
        md.create_folder(f"Zed{i}.{'a' * 40}")
    for i in range(3):  # what the backtracking regex choked on: "A", no "y", no "."
        md.create_folder(f"Aaaaaaaa{i}")
    c = imap.client()
    c.sock.settimeout(HUNG)
    result: dict[str, object] = {}

    def run() -> None:
        start = time.monotonic()
        result["list"] = c.list('""', '"A' + "%" * 50 + 'y"')
        result["seconds"] = time.monotonic() - start

    t = threading.Thread(target=run)
    t.start()
    delays = [_banner_delay(imap.port) for _ in range(5)]
    t.join(HUNG)
    assert not t.is_alive(), "LIST did not answer"
    assert result["list"] == ("OK", [None])  # nothing matches: A...y
    assert max(delays) < 5.0 and result["seconds"] < HUNG  # type: ignore[operator]
    typ, data = c.list('""', '"Z%%%%%%%%%%"')  # the 30 parents, no child
    assert typ == "OK" and len(data) == 30
    try:
        c.logout()
    except imaplib.IMAP4.abort:  # pragma: no cover
        pass
