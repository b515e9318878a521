"""Folder: sync, flags, keywords, expunge, append, copy/move, and files changed by others."""

from __future__ import annotations

import errno
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailstack.storage import Folder, Maildir, MessageNotFound, TooManyKeywords


def deliver(md: Maildir, n: int, folder: str | None = None) -> list[str]:
    return [md.deliver(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode(), folder=folder) for i in range(n)]


def test_sync_moves_new_to_cur_and_assigns_in_order(maildir: Maildir) -> None:
    names = deliver(maildir, 3)
    state = maildir.folder().sync()
    assert os.listdir(maildir.root / "new") == []
    assert [m.uid for m in state.messages] == [1, 2, 3]
    assert [m.filename for m in state.messages] == [n + ":2," for n in names]
    assert state.uidnext == 4
    assert all(m.flags == frozenset() for m in state.messages)


def test_uids_stable_across_syncs_and_instances(maildir: Maildir) -> None:
    deliver(maildir, 3)
    first = maildir.folder().sync()
    deliver(maildir, 2)
    second = Maildir(maildir.root).folder("INBOX").sync()
    assert second.uidvalidity == first.uidvalidity
    assert second.messages[:3] == first.messages
    assert [m.uid for m in second.messages] == [1, 2, 3, 4, 5]
    f = maildir.folder()
    f.expunge([2])
    deliver(maildir, 1)
    third = Maildir(maildir.root).folder("INBOX").sync()
    assert [m.uid for m in third.messages] == [1, 3, 4, 5, 6]  # UID 2 is never reused


def test_read_and_open_path(maildir: Maildir) -> None:
    maildir.deliver(b"Subject: a\r\n\r\nhello\r\n")
    f = maildir.folder()
    f.sync()
    assert f.read(1) == b"Subject: a\n\nhello\n"
    assert f.open_path(1).read_bytes() == b"Subject: a\n\nhello\n"
    with pytest.raises(MessageNotFound):
        f.read(99)


def test_set_flags_and_keywords(maildir: Maildir) -> None:
    deliver(maildir, 1)
    f = maildir.folder()
    f.sync()
    info = f.set_flags(1, {"\\Seen", "\\flagged"}, ["$Junk", "Work"])
    assert info.flags == {"\\Seen", "\\Flagged"}
    assert info.keywords == {"$Junk", "Work"}
    assert info.filename.endswith(":2,FSab")
    assert (maildir.root / "dovecot-keywords").read_text() == "0 $Junk\n1 Work\n"
    info = f.set_flags(1, {"\\Deleted"})  # keywords None: kept
    assert info.filename.endswith(":2,Tab")
    info = f.set_flags(1, (), ["work"])  # keyword names compare case-insensitively
    assert info.filename.endswith(":2,b")
    again = Maildir(maildir.root).folder().sync().messages[0]
    assert (again.flags, again.keywords) == (frozenset(), {"Work"})


def test_too_many_keywords(maildir: Maildir) -> None:
    deliver(maildir, 1)
    f = maildir.folder()
    f.sync()
    f.set_flags(1, (), [f"k{i}" for i in range(26)])
    with pytest.raises(TooManyKeywords):
        f.set_flags(1, (), ["one-too-many"])


def test_set_flags_after_someone_else_renamed(maildir: Maildir) -> None:
    deliver(maildir, 1)
    f = maildir.folder()
    info = f.sync().messages[0]
    # another process (Dovecot, another session) marks it \Answered behind our back
    os.rename(maildir.root / "cur" / info.filename, maildir.root / "cur" / (info.base + ":2,R"))
    new = f.set_flags(1, {"\\Seen"})
    assert new.filename == info.base + ":2,S"
    assert os.listdir(maildir.root / "cur") == [new.filename]
    assert f.read(1).startswith(b"Subject: 0")


def test_read_after_someone_else_renamed(maildir: Maildir) -> None:
    deliver(maildir, 1)
    f = maildir.folder()
    info = f.sync().messages[0]
    os.rename(maildir.root / "cur" / info.filename, maildir.root / "cur" / (info.base + ":2,S"))
    assert f.read(1).startswith(b"Subject: 0")


def test_expunge(maildir: Maildir) -> None:
    deliver(maildir, 4)
    f = maildir.folder()
    state = f.sync()
    # message 2 was flagged by someone else, message 3 expunged by someone else
    m2, m3 = state.messages[1], state.messages[2]
    os.rename(maildir.root / "cur" / m2.filename, maildir.root / "cur" / (m2.base + ":2,F"))
    os.unlink(maildir.root / "cur" / m3.filename)
    assert f.expunge([2, 3, 99]) == [2]
    assert [m.uid for m in f.sync().messages] == [1, 4]
    assert f.expunge([]) == []
    # we account for what we removed; whoever removed message 3 accounts for it
    assert (maildir.root / "maildirsize").read_text().splitlines()[-1] == f"-{m2.size} -1"


def test_append(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    f = maildir.folder()
    when = datetime(2020, 2, 29, 12, 0, tzinfo=timezone.utc)
    calls: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(a: str | Path, b: str | Path) -> None:
        calls.append(f"rename {a} {b}")
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    uid = f.append(b"Subject: sent\r\n\r\nx\r\n", {"\\Seen", "\\Answered"}, when, ["$Sent"])
    monkeypatch.undo()
    assert uid == 1
    # (the new keyword's dovecot-keywords write comes first; leave it out)
    calls = [c for c in calls if "dovecot-" not in c and c != f"fsync {maildir.root}"]
    # tmp file fsynced, renamed into cur/, cur/ fsynced, before the uidlist is written
    assert calls[0].startswith(f"fsync {maildir.root}/tmp/")
    assert calls[1].startswith(f"rename {maildir.root}/tmp/") and f" {maildir.root}/cur/" in calls[1]
    assert calls[2] == f"fsync {maildir.root}/cur"
    info = f.sync().messages[0]
    assert info.flags == {"\\Seen", "\\Answered"}
    assert info.keywords == {"$Sent"}
    assert info.internaldate == when
    assert (info.size, info.vsize) == (17, 20)
    assert f.read(1) == b"Subject: sent\n\nx\n"
    assert f.append(b"second\r\n") == 2
    assert maildir.quota_usage() == (24, 2)


def test_copy_and_move(maildir: Maildir) -> None:
    deliver(maildir, 3)
    inbox = maildir.folder()
    inbox.sync()
    inbox.set_flags(2, {"\\Seen"}, ["$Junk"])
    archive = maildir.create_folder("Archive")
    archive.append(b"already here\r\n", (), None, ["other", "$Junk"])  # different keyword letters
    pairs = inbox.copy_to([3, 2, 77], archive)
    assert pairs == [(2, 2), (3, 3)]
    state = archive.sync()
    copied = state.get(2)
    assert copied is not None
    assert copied.flags == {"\\Seen"} and copied.keywords == {"$Junk"}
    assert copied.filename.endswith(":2,Sb")  # $Junk is letter b in Archive
    src = inbox.state.get(2)
    assert src is not None
    assert os.stat(archive.path / "cur" / copied.filename).st_ino == os.stat(inbox.cur / src.filename).st_ino
    assert archive.read(3) == inbox.read(3)
    moved = inbox.move_to([1], archive)
    assert moved == [(1, 4)]
    assert [m.uid for m in inbox.sync().messages] == [2, 3]
    assert maildir.quota_usage()[1] == 6


def test_copy_without_hard_links(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(maildir, 1)
    inbox = maildir.folder()
    inbox.sync()
    other = maildir.create_folder("Other")

    def no_link(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert inbox.copy_to([1], other) == [(1, 1)]
    src, dst = inbox.state.messages[0], other.sync().messages[0]
    assert os.stat(inbox.cur / src.filename).st_ino != os.stat(other.cur / dst.filename).st_ino
    assert other.read(1) == inbox.read(1)
    assert dst.internaldate == src.internaldate


def test_copy_to_same_folder(maildir: Maildir) -> None:
    deliver(maildir, 1)
    inbox = maildir.folder()
    inbox.sync()
    assert inbox.copy_to([1], inbox) == [(1, 2)]
    assert len(inbox.sync().messages) == 2


def test_vanished_message_not_found(maildir: Maildir) -> None:
    deliver(maildir, 1)
    f = maildir.folder()
    info = f.sync().messages[0]
    os.unlink(f.cur / info.filename)
    with pytest.raises(MessageNotFound):
        f.read(1)
    with pytest.raises(MessageNotFound):
        f.set_flags(1, {"\\Seen"})
    assert f.sync().messages == ()


def test_ignores_dotfiles_and_cleans_tmp(maildir: Maildir) -> None:
    deliver(maildir, 1)
    (maildir.root / "cur" / ".hidden").write_bytes(b"")
    (maildir.root / "new" / ".hidden").write_bytes(b"")
    f: Folder = maildir.folder()
    assert len(f.sync().messages) == 1
    stale = maildir.root / "tmp" / "old"
    stale.write_bytes(b"x")
    os.utime(stale, (1, 1))
    (maildir.root / "tmp" / "fresh").write_bytes(b"x")
    assert f.clean_tmp() == 1
    assert os.listdir(maildir.root / "tmp") == ["fresh"]


def test_stale_dotlock_of_dead_process_is_overridden(maildir: Maildir) -> None:
    deliver(maildir, 1)
    lock = maildir.root / "dovecot-uidlist.lock"
    import socket

    lock.write_text(f"999999999:{socket.gethostname()}")
    os.utime(lock, (1, 1))
    assert len(maildir.folder().sync().messages) == 1
    assert not lock.exists()
