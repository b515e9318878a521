"""Folder.update_flags: flag changes from several Folder objects, threads and processes.

Each writer applies its change to the flags on disk at the moment of the rename, so no
writer ever undoes another's (the "flags lost between sessions" data loss).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from mailstack.storage import Maildir, MessageNotFound

ROUNDS = 60


def test_two_folder_objects_add_different_flags(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    a, b = maildir.folder(), maildir.folder()
    a.sync()
    b.sync()  # both know the message with no flags
    b.update_flags(1, add=["\\Draft"], add_keywords=["$Work"])
    got = a.update_flags(1, add=["\\Answered"])  # a's cached name is stale
    assert got.flags == {"\\Draft", "\\Answered"}
    assert got.keywords == {"$Work"}
    a.update_flags(1, remove=["\\Draft"], remove_keywords=["$Nonexistent"])
    final = maildir.folder().sync().messages[0]
    assert final.flags == {"\\Answered"}
    assert final.keywords == {"$Work"}
    b.update_flags(1, remove_keywords=["$work"])  # keyword names compare case-insensitively
    assert maildir.folder().sync().messages[0].keywords == frozenset()


def test_replace_and_unknown_letters_kept(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    f = maildir.folder()
    info = f.sync().messages[0]
    os.rename(maildir.root / "cur" / info.filename, maildir.root / "cur" / (info.base + ":2,PS"))
    got = f.update_flags(1, replace=["\\Flagged"], replace_keywords=["Work"])
    assert got.filename == info.base + ":2,FPa"  # P (passed, not an IMAP flag) stays
    assert got.flags == {"\\Flagged"} and got.keywords == {"Work"}


def test_unchanged_flags_still_checked_on_disk(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    a, b = maildir.folder(), maildir.folder()
    a.sync()
    a.update_flags(1, add=["\\Seen"])
    b.sync()
    b.update_flags(1, remove=["\\Seen"])
    assert a.update_flags(1, add=["\\Seen"]).flags == {"\\Seen"}  # a believed it was set already
    assert maildir.folder().sync().messages[0].flags == {"\\Seen"}
    b.expunge([1])
    with pytest.raises(MessageNotFound):
        a.update_flags(1, add=["\\Flagged"])


# (system flags, keywords) each writer owns
WRITERS = [(["\\Draft"], []), (["\\Flagged"], []), (["\\Answered"], ["$Work"]), ([], ["$Home", "Later"])]


def _toggle(root: str, n: int) -> None:
    """Remove then add again this writer's flags, ROUNDS times, through its own Folder."""
    folder = Maildir(Path(root)).folder("INBOX")
    folder.sync()
    flags, kws = WRITERS[n]
    for _ in range(ROUNDS):
        folder.update_flags(1, remove=flags, remove_keywords=kws)
        folder.update_flags(1, add=flags, add_keywords=kws)


def _check_all_set(md: Maildir) -> None:
    info = md.folder().sync().messages[0]
    assert info.flags == {"\\Draft", "\\Flagged", "\\Answered"}
    assert info.keywords == {"$Work", "$Home", "Later"}
    assert len(os.listdir(md.root / "cur")) == 1


def test_threads_toggle_their_own_flags(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    maildir.folder().sync()
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            _toggle(str(maildir.root), n)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(WRITERS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    _check_all_set(maildir)


def test_processes_toggle_their_own_flags(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    maildir.folder().sync()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_toggle, args=(str(maildir.root), n)) for n in range(len(WRITERS))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    _check_all_set(maildir)


def _renaming_scan(folder, cur: Path, letters: str):
    """Folder._scan_cur that returns a listing and then renames the message (another
    session's flag change landing between the listing and the next step)."""
    real = folder._scan_cur
    done = []

    def scan() -> dict[str, str]:
        listing = real()
        if not done:
            done.append(True)
            for base, name in listing.items():
                os.rename(cur / name, cur / f"{base}:2,{letters}")
        return listing

    return scan


def test_rename_between_listing_and_stat_is_not_an_expunge(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    maildir.folder().sync()
    f = maildir.folder()  # knows no mtimes yet: it stats every name it lists
    f._scan_cur = _renaming_scan(f, maildir.root / "cur", "S")
    state = f.sync()
    assert [m.uid for m in state.messages] == [1]
    assert state.messages[0].flags == {"\\Seen"}


def test_base_missing_from_one_listing_keeps_its_uid(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    maildir.deliver(b"Subject: y\r\n\r\nbody\r\n")
    maildir.folder().sync()
    f = maildir.folder()
    real = f._scan_cur
    calls = []

    def scan() -> dict[str, str]:  # the first listing misses a file being renamed
        listing = real()
        calls.append(1)
        if len(calls) == 1:
            listing.pop(sorted(listing)[0])
        return listing

    f._scan_cur = scan
    assert [m.uid for m in f.sync().messages] == [1, 2]
    assert [m.uid for m in maildir.folder().sync().messages] == [1, 2]  # uidlist kept both
    b = maildir.folder()
    b.expunge([1])  # a real expunge is still one
    assert [m.uid for m in f.sync().messages] == [2]
