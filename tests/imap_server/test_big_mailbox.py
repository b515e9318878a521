"""Requirement 5: SELECT, ``UID FETCH 1:* (FLAGS)`` and ``UID SEARCH`` on a folder of
100,000 messages without reading one message file.

The files are made empty on purpose (their sizes are in their names, ``,S=``/``,W=``, as
our MDA and Dovecot write them): had the server opened one for these commands, it would
have found nothing to parse; the flags-only SEARCH still answers correctly."""

from __future__ import annotations

import os
import time

from .conftest import IMAPServer

N = 100_000


def test_100k_select_fetch_flags_search(imap: IMAPServer) -> None:
    md = imap.maildir()
    cur = md.root / "cur"
    for i in range(N):
        flags = "S" if i % 3 == 0 else ""
        flags += "F" if i % 1000 == 0 else ""
        with open(cur / f"1700000000.M{i}P1Q1.host,S=100,W=102:2,{flags}", "wb"):
            pass
    c = imap.client()
    c.sock.settimeout(120)
    t0 = time.process_time(), time.monotonic()
    typ, data = c.select("INBOX")
    assert data == [str(N).encode()]
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK" and len(data) == N
    typ, data = c.uid("SEARCH", "FLAGGED")
    assert len(data[0].split()) == N // 1000
    typ, data = c.uid("SEARCH", "UNSEEN", "LARGER", "50")
    assert len(data[0].split()) == N - (N + 2) // 3
    typ, data = c.fetch("99999:*", "(UID RFC822.SIZE FLAGS)")
    assert b"RFC822.SIZE 102" in data[-1]
    elapsed = time.monotonic() - t0[1]
    c.select("INBOX")  # a second SELECT: the uidlist exists now
    second = time.monotonic() - t0[1] - elapsed
    c.logout()
    assert all(os.path.getsize(cur / n) == 0 for n in os.listdir(cur)[:100])
    print(f"100k: first SELECT+FETCH+SEARCHes {elapsed:.1f}s, second SELECT {second:.2f}s")
    # did not hang (a quadratic path takes many minutes at 100k); not a speed claim: benchmarks/ measures
    assert elapsed < 180 and second < 60
