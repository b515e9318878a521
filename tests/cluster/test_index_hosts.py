"""Per-folder SQLite files on a file system several hosts share (storage.fstype).

On NFS or CephFS the IMAP index (``mailstack-index.sqlite``), the full-text index
(``mailstack-fts.sqlite``) and the import state (``mailstack-import.sqlite``) must not run
in WAL mode: its ``-shm`` memory map cannot be
shared between hosts. Here the mount table is made to say that the test folder is an
``nfs4`` mount; the files must then use a rollback journal and no mmap, and several
processes must still never hand out one MODSEQ twice. On a local disk nothing changes.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailstack.imap import fts
from mailstack.imap.index import INDEX_NAME, FolderIndex
from mailstack.migrate.state import STATE_FILE, ImportState
from mailstack.storage import FolderState, MessageInfo, fstype

WHEN = datetime(2024, 1, 1, tzinfo=timezone.utc)
MOUNTINFO = (
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "40 22 0:35 / /srv/mail\\040store rw,relatime shared:20 - nfs4 fs1:/export/mail rw,vers=4.2\n"
    "41 22 0:36 / /srv/ceph rw - ceph 10.0.0.1:/ rw,name=mail\n"
    "42 40 0:37 / /srv/mail\\040store/local rw master:3 - ext4 /dev/vdb1 rw\n"
)


def test_mount_table_names_the_file_system_of_a_path() -> None:
    mounts = fstype.parse_mountinfo(MOUNTINFO)
    assert fstype.fs_type(Path("/srv/mail store/example.test/alice"), mounts) == "nfs4"
    assert fstype.fs_type(Path("/srv/mail store/local/x"), mounts) == "ext4"  # the longest mount point wins
    assert fstype.fs_type(Path("/srv/mail storefront"), mounts) == "ext4"  # a prefix of the name is not a parent
    assert fstype.fs_type(Path("/srv/ceph"), mounts) == "ceph"
    assert fstype.sqlite_journal_mode(Path("/srv/ceph/a"), mounts) == "DELETE"
    assert fstype.sqlite_journal_mode(Path("/var/lib"), mounts) == "WAL"
    assert fstype.fs_type(Path("/x"), []) is None and fstype.sqlite_journal_mode(Path("/x"), []) == "WAL"


@pytest.fixture
def on_nfs(tmp_path: Path) -> Iterator[Path]:
    """tmp_path as an NFS mount, for this process and the ones it forks."""
    fstype._mounts = [(str(tmp_path.resolve()), "nfs4"), ("/", "ext4")]
    yield tmp_path
    fstype.refresh()


def info(uid: int, flags: frozenset[str] = frozenset()) -> MessageInfo:
    return MessageInfo(uid, f"{uid}.base:2,", flags, frozenset(), 10, 12, WHEN)


def journal_mode(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        db.close()


def test_index_uses_a_rollback_journal_on_nfs(on_nfs: Path) -> None:
    idx = FolderIndex(on_nfs)
    h = idx.reconcile(FolderState(7, 3, (info(1), info(2))))
    assert h > 0 and idx.modseq(2) == h
    idx.close()
    assert journal_mode(on_nfs / INDEX_NAME) == "delete"
    assert not list(on_nfs.glob("*-wal")) and not list(on_nfs.glob("*-shm"))


def test_a_wal_index_is_switched_when_the_folder_is_on_nfs(tmp_path: Path) -> None:
    idx = FolderIndex(tmp_path)  # made on a local disk (the mount table is the real one)
    h = idx.reconcile(FolderState(7, 2, (info(1),)))
    idx.close()
    assert journal_mode(tmp_path / INDEX_NAME) == "wal"
    fstype._mounts = [(str(tmp_path.resolve()), "nfs4"), ("/", "ext4")]
    try:
        again = FolderIndex(tmp_path)
        assert again.reconcile(FolderState(7, 2, (info(1),))) == h  # same state, kept
        again.close()
        assert journal_mode(tmp_path / INDEX_NAME) == "delete"
    finally:
        fstype.refresh()


def test_index_stays_in_wal_mode_on_a_local_disk(tmp_path: Path) -> None:
    fstype.refresh()
    idx = FolderIndex(tmp_path)
    idx.reconcile(FolderState(7, 2, (info(1),)))
    idx.close()
    assert journal_mode(tmp_path / INDEX_NAME) == "wal"


def test_full_text_index_uses_a_rollback_journal_on_nfs(on_nfs: Path) -> None:
    path = on_nfs / fts.FTS_NAME
    db = fts._connect(path)
    try:
        assert fts._add_documents(path, [("1.base", "hello world")], db)
    finally:
        db.close()
    assert journal_mode(on_nfs / fts.FTS_NAME) == "delete"
    assert not list(on_nfs.glob("*-wal")) and not list(on_nfs.glob("*-shm"))


def test_import_state_uses_a_rollback_journal_on_nfs(on_nfs: Path) -> None:
    with ImportState(on_nfs) as state:
        assert state.copied_uids("a@h:143", b"INBOX", 1) == set()
    assert journal_mode(on_nfs / STATE_FILE) == "delete"


def _store_flags(folder: str, uid: int, rounds: int, out: mp.Queue[list[int]]) -> None:
    idx = FolderIndex(Path(folder))
    got = []
    for i in range(rounds):
        got.append(idx.record([info(uid, frozenset() if i % 2 else frozenset({"\\Seen"}))]))  # a change each time
    idx.close()
    out.put(got)


def test_processes_never_share_a_modseq_on_nfs(on_nfs: Path) -> None:
    first = FolderIndex(on_nfs)
    first.reconcile(FolderState(7, 5, tuple(info(u) for u in range(1, 5))))
    first.close()
    ctx = mp.get_context("fork")  # the children inherit the "nfs4" mount table
    out: mp.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_store_flags, args=(str(on_nfs), uid, 25, out)) for uid in range(1, 5)]
    for p in procs:
        p.start()
    seqs = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    every = [m for s in seqs for m in s]
    assert len(every) == len(set(every)) == 100, "a MODSEQ was handed out twice"
    assert all(s == sorted(s) for s in seqs)
    assert journal_mode(on_nfs / INDEX_NAME) == "delete"
