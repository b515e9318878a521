"""``FolderIndex`` modseq and ``\\Recent`` state without a server (RFC 7162 §3.1, RFC 3501 §2.3.2).

A table of folder histories, each step a FolderState as storage would report it, with
what HIGHESTMODSEQ and the per-message MODSEQ must do; plus the floor that keeps
HIGHESTMODSEQ from going backwards when the index is lost.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailstack.imap import index as index_mod
from mailstack.imap.index import FLOOR_NAME, INDEX_NAME, MODSEQ_BLOCK, FolderIndex
from mailstack.storage import FolderState, MessageInfo

WHEN = datetime(2024, 1, 1, tzinfo=timezone.utc)


def info(uid: int, flags: str = "", keywords: tuple[str, ...] = ()) -> MessageInfo:
    fl = frozenset({"S": "\\Seen", "F": "\\Flagged", "D": "\\Deleted"}[c] for c in flags)
    return MessageInfo(uid, f"{uid}.base:2,{flags}", fl, frozenset(keywords), 10, 12, WHEN)


def state(*msgs: MessageInfo, validity: int = 7) -> FolderState:
    return FolderState(validity, max((m.uid for m in msgs), default=0) + 1, tuple(msgs))


def test_changes_bump_once_per_reconcile(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)
    h1 = idx.reconcile(state(info(1), info(2)))
    assert idx.modseq(1) == idx.modseq(2) == h1
    assert idx.reconcile(state(info(1), info(2))) == h1  # nothing changed: no bump
    h2 = idx.reconcile(state(info(1, "S"), info(2)))  # a flag change (any process)
    assert h2 > h1 and idx.modseq(1) == h2 and idx.modseq(2) == h1
    h3 = idx.reconcile(state(info(1, "S"), info(2), info(3)))  # an arrival
    assert h3 > h2 and idx.modseq(3) == h3 and idx.modseq(1) == h2
    h4 = idx.reconcile(state(info(1, "S"), info(3)))  # an expunge
    assert h4 > h3
    h5 = idx.reconcile(state(info(1, "S", ("$Work",)), info(3)))  # a keyword
    assert h5 > h4 and idx.modseq(1) == h5
    h6 = idx.record([info(3, "F")])  # this process's own STORE
    assert h6 > h5 and idx.modseq(3) == h6
    assert idx.reconcile(state(info(1, "S", ("$Work",)), info(3, "F"))) == h6  # already recorded
    idx.close()


def test_state_is_shared_across_instances_and_survives_reopen(tmp_path: Path) -> None:
    a, b = FolderIndex(tmp_path), FolderIndex(tmp_path)  # two processes, in effect
    h1 = a.reconcile(state(info(1), info(2)))
    h2 = b.reconcile(state(info(1), info(2, "S")))
    assert h2 > h1 and b.modseq(2) == h2
    assert a.reconcile(state(info(1), info(2, "S"))) == h2  # a sees b's work, no new bump
    assert a.modseq(2) == h2
    a.close()
    b.close()
    c = FolderIndex(tmp_path)
    assert c.reconcile(state(info(1), info(2, "S"))) == h2
    c.close()


def test_floor_keeps_highestmodseq_above_anything_seen(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)
    h = idx.reconcile(state(info(1)))
    for i in range(5):
        h = idx.reconcile(state(info(1, "S" if i % 2 == 0 else "")))
    ceiling = int((tmp_path / FLOOR_NAME).read_text())
    assert h < ceiling <= h + MODSEQ_BLOCK + 1
    idx.close()
    for p in tmp_path.glob(INDEX_NAME + "*"):
        p.unlink()
    again = FolderIndex(tmp_path)
    h2 = again.reconcile(state(info(1, "S")))
    assert h2 > ceiling >= h and again.modseq(1) == h2
    again.close()


def test_corrupt_index_is_rebuilt_above_the_floor(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)
    h = idx.reconcile(state(info(1)))
    idx.close()
    (tmp_path / INDEX_NAME).write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    again = FolderIndex(tmp_path)
    assert again.reconcile(state(info(1))) > h
    again.close()


def test_recent_claims_and_uidvalidity(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)
    assert idx.claim_recent(7, 3, claim=False) == 0  # EXAMINE / STATUS: look only
    assert idx.claim_recent(7, 3, claim=True) == 0  # the first SELECT takes 1..3
    assert idx.claim_recent(7, 3, claim=True) == 3  # the next one gets none of them
    assert idx.claim_recent(7, 5, claim=True) == 3  # 4, 5 arrive: the next claimer's
    h = idx.reconcile(state(info(1), info(2)))
    assert idx.claim_recent(7, 5, claim=False) == 5  # a first reconcile keeps the claims
    h2 = idx.reconcile(state(info(1), validity=8))  # new UIDVALIDITY: all starts over ...
    assert h2 > h  # ... but HIGHESTMODSEQ still only grows
    assert idx.claim_recent(8, 1, claim=False) == 0
    idx.close()


# -- expunge records for QRESYNC (RFC 7162 §3.2.5.1) -------------------------------------------

def test_expunges_are_recorded_with_their_modseq(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)
    h1 = idx.reconcile(state(info(1), info(2), info(3), info(4)))
    assert idx.expunged_since(7, h1) == []  # tracking starts here: exact from h1 on
    assert idx.expunged_since(7, h1 - 1) is None  # before: the index cannot tell
    h2 = idx.reconcile(state(info(1), info(3), info(4)))  # 2 expunged (any process)
    h3 = idx.reconcile(state(info(1), info(4)))  # then 3
    assert idx.expunged_since(7, h1) == [(2, 3)]
    assert idx.expunged_since(7, h2) == [(3, 3)]
    assert idx.expunged_since(7, h3) == []
    assert idx.expunged_since(8, h1) is None  # another UIDVALIDITY
    # a UID that came and went between two reconciles was never in the modseq table:
    # it is found below UIDNEXT all the same
    h4 = idx.reconcile(FolderState(7, 9, (info(1), info(4), info(6))))  # 5, 7, 8 came and went
    assert idx.expunged_since(7, h3) == [(5, 5), (7, 8)]
    # another process's index (same file) sees the same records
    other = FolderIndex(tmp_path)
    assert other.expunged_since(7, h1) == [(2, 3), (5, 5), (7, 8)]
    assert other.expunged_since(7, h4) == []


def test_lost_index_answers_none_for_older_modseqs(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)
    idx.reconcile(state(info(1), info(2), info(3)))
    h = idx.reconcile(state(info(1), info(3)))
    idx.close()
    for p in tmp_path.glob(INDEX_NAME + "*"):
        p.unlink()
    fresh = FolderIndex(tmp_path)
    h2 = fresh.reconcile(state(info(1)))  # 3 went while the index was gone: nobody saw it
    assert h2 > h
    assert fresh.expunged_since(7, h) is None  # every older modseq: conservative answer
    assert fresh.expunged_since(7, h2) == []


def test_new_uidvalidity_restarts_the_records(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)
    idx.reconcile(state(info(1), info(2)))
    h = idx.reconcile(state(info(1)))
    h2 = idx.reconcile(state(info(1), validity=9))  # the uidlist was rebuilt
    assert idx.expunged_since(7, h) is None and idx.expunged_since(9, h) is None
    assert idx.expunged_since(9, h2) == []


def test_records_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "VANISHED_KEEP_ROWS", 3)
    idx = FolderIndex(tmp_path)
    msgs = [info(u) for u in range(1, 11)]
    seen = [idx.reconcile(state(*msgs))]
    for _ in range(6):  # six reconciles, each finding one expunge
        msgs = msgs[1:]
        seen.append(idx.reconcile(FolderState(7, 11, tuple(msgs))))
    db = sqlite3.connect(tmp_path / INDEX_NAME)
    assert db.execute("SELECT count(*) FROM vanished").fetchone()[0] == 3
    db.close()
    assert idx.expunged_since(7, seen[3]) == [(4, 6)]  # the newest three rows are kept
    assert idx.expunged_since(7, seen[2]) is None  # its row is gone: conservative answer
    monkeypatch.setattr(index_mod, "VANISHED_KEEP_BYTES", 2)  # rows "7", "6" fit, "5" not
    seen.append(idx.reconcile(FolderState(7, 11, tuple(msgs[1:]))))
    assert idx.expunged_since(7, seen[5]) == [(6, 7)]
    assert idx.expunged_since(7, seen[4]) is None
