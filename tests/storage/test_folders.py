"""Folder hierarchy: create/delete/rename/list, Maildir++ layout, subscriptions file."""

from __future__ import annotations

import os

import pytest

from mailstack.storage import FolderExists, FolderNotFound, Maildir, StorageError, UnsafeName


def test_create_layout(maildir: Maildir) -> None:
    f = maildir.create_folder("Entwürfe")
    assert f.path == maildir.root / ".Entw&APw-rfe"
    assert sorted(os.listdir(f.path)) == ["cur", "maildirfolder", "new", "tmp"]
    assert (f.path / "maildirfolder").read_bytes() == b""
    assert os.stat(f.path).st_mode & 0o777 == 0o700
    with pytest.raises(FolderExists):
        maildir.create_folder("Entwürfe")
    with pytest.raises(FolderExists):
        maildir.create_folder("inbox")


def test_list(maildir: Maildir) -> None:
    for name in ("Sent", "Archive.2024", "Archive", "日本語"):
        maildir.create_folder(name)
    (maildir.root / ".not&valid").mkdir()  # not modified UTF-7: skipped
    (maildir.root / ".file").write_bytes(b"")  # not a directory
    assert maildir.list_folders() == ["INBOX", "Archive", "Archive.2024", "Sent", "日本語"]


def test_folder_lookup(maildir: Maildir) -> None:
    assert maildir.folder("inbox").name == "INBOX"
    with pytest.raises(FolderNotFound):
        maildir.folder("Nope")


def test_delete(maildir: Maildir) -> None:
    maildir.create_folder("Trash")
    maildir.create_folder("Trash.Old")
    maildir.deliver(b"abc\n", folder="Trash")
    maildir.deliver(b"abcdef\n")
    assert maildir.quota_usage() == (11, 2)
    maildir.delete_folder("Trash")
    assert maildir.list_folders() == ["INBOX", "Trash.Old"]
    assert maildir.quota_usage() == (7, 1)
    assert [n for n in os.listdir(maildir.root / "tmp")] == []
    with pytest.raises(FolderNotFound):
        maildir.delete_folder("Trash")
    with pytest.raises(StorageError):
        maildir.delete_folder("INBOX")


def test_new_uidvalidity_after_recreate(maildir: Maildir) -> None:
    a = maildir.create_folder("X").sync().uidvalidity
    maildir.delete_folder("X")
    b = maildir.create_folder("X").sync().uidvalidity
    assert b > a


def test_rename_moves_children_and_keeps_uids(maildir: Maildir) -> None:
    maildir.create_folder("Work")
    maildir.create_folder("Work.2024")
    maildir.create_folder("Workshop")  # not a child: same prefix without the separator
    maildir.deliver(b"x\n", folder="Work.2024")
    before = maildir.folder("Work.2024").sync()
    maildir.subscribe("Work.2024")
    maildir.rename_folder("Work", "Jobs.Old")
    assert maildir.list_folders() == ["INBOX", "Jobs.Old", "Jobs.Old.2024", "Workshop"]
    after = maildir.folder("Jobs.Old.2024").sync()
    assert (after.uidvalidity, after.uids()) == (before.uidvalidity, before.uids())
    assert maildir.list_subscriptions() == ["Jobs.Old.2024"]
    with pytest.raises(FolderNotFound):
        maildir.rename_folder("Work", "Other")
    with pytest.raises(FolderExists):
        maildir.rename_folder("Workshop", "Jobs.Old")
    with pytest.raises(UnsafeName):
        maildir.rename_folder("Workshop", "Workshop.sub")
    with pytest.raises(UnsafeName):
        maildir.rename_folder("Workshop", "../evil")


def test_rename_inbox_moves_messages(maildir: Maildir) -> None:
    maildir.deliver(b"one\n")
    maildir.deliver(b"two\n")
    maildir.rename_folder("INBOX", "Old")
    assert maildir.folder("INBOX").sync().messages == ()
    assert len(maildir.folder("Old").sync().messages) == 2


def test_subscriptions_format(maildir: Maildir) -> None:
    maildir.subscribe("Sent")
    maildir.subscribe("inbox")
    maildir.subscribe("Sent")  # idempotent
    maildir.subscribe("Archive.2024")
    # a new file is written like Dovecot writes one: a name per line
    assert (maildir.root / "subscriptions").read_text() == "Sent\nINBOX\nArchive.2024\n"
    maildir.unsubscribe("Sent")
    assert maildir.list_subscriptions() == ["INBOX", "Archive.2024"]
    with pytest.raises(UnsafeName):
        maildir.subscribe("../x")


def test_subscriptions_v2_kept(maildir: Maildir) -> None:
    # Dovecot 2.3's version 2: "V\t2\n\n" then names with the separator as TAB.
    (maildir.root / "subscriptions").write_text("V\t2\n\nINBOX\nArchive\t2024\n")
    assert maildir.list_subscriptions() == ["INBOX", "Archive.2024"]
    maildir.subscribe("Lists.python")
    assert (maildir.root / "subscriptions").read_text() == "V\t2\n\nINBOX\nArchive\t2024\nLists\tpython\n"
