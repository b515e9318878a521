"""imap.expunged: files of messages another session expunged, kept for views that list them.

The race these cover: a view syncing while another session expunges takes its listing of
cur/ just before the unlink and adopts it just after, so at the moment of the expunge it
did not list the UID, and a moment later it does. RFC 2180 §4.1 (and Dovecot) serve it
such a message until it is told of the expunge; before the grace period it was answered
``NO [EXPUNGEISSUED]`` (a few times per imaptest stress run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.imap import expunged
from mailstack.imap.expunged import ExpungedFiles
from mailstack.imap.mailbox import MailboxView
from mailstack.storage import Maildir


@pytest.fixture
def maildir(tmp_path: Path) -> Maildir:
    md = Maildir.for_user(tmp_path / "mailboxes", "example.test", "alice")
    md.ensure()
    return md


def test_a_view_that_lists_the_uid_after_the_expunge_is_served(maildir: Maildir,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    keeper = ExpungedFiles()
    body = b"Subject: kept\n\nthe body\n"
    before = maildir.folder().sync()  # the late view's last sync: no message yet
    maildir.deliver(body)
    a_folder = maildir.folder()
    listing = a_folder.sync()  # what the late view's next sync listed: UID 1, not yet unlinked
    a = MailboxView(a_folder, listing, readonly=False)
    b = MailboxView(maildir.folder(), before, readonly=False)
    keeper.register(a)
    keeper.register(b)
    with keeper.expunging(a, [1]):
        assert a_folder.expunge([1]) == [1]
    b.changes(listing, allow_expunge=False)  # b adopts its listing after the unlink
    assert 1 in b.infos
    assert keeper.read(b, 1) == body
    assert len(keeper) == 1
    b.changes(maildir.folder().sync())  # b is told the EXPUNGE
    monkeypatch.setattr(expunged, "GRACE", 0.0)
    keeper.release()
    assert len(keeper) == 0  # nobody lists it and the grace is over: let go


def test_kept_through_the_grace_without_other_views(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session in the middle of SELECT is no registered view yet, but lists the UID next."""
    keeper = ExpungedFiles()
    maildir.deliver(b"Subject: x\n\nbody\n")
    folder = maildir.folder()
    listing = folder.sync()
    a = MailboxView(folder, listing, readonly=False)
    keeper.register(a)
    with keeper.expunging(a, [1]):
        folder.expunge([1])
    assert len(keeper) == 1
    late = MailboxView(maildir.folder(), listing, readonly=True)  # its SELECT listed cur/ before the unlink
    keeper.register(late)
    assert keeper.read(late, 1) == b"Subject: x\n\nbody\n"
    late.changes(maildir.folder().sync())
    monkeypatch.setattr(expunged, "GRACE", 0.0)
    keeper.release()
    assert len(keeper) == 0


def test_kept_files_are_bounded(maildir: Maildir) -> None:
    keeper = ExpungedFiles(max_kept=3)
    for i in range(5):
        maildir.deliver(b"Subject: %d\n\nbody\n" % i)
    folder = maildir.folder()
    state = folder.sync()
    a = MailboxView(folder, state, readonly=False)
    b = MailboxView(maildir.folder(), state, readonly=False)
    keeper.register(a)
    keeper.register(b)
    with keeper.expunging(a, [1, 2, 3, 4, 5]):
        folder.expunge([1, 2, 3, 4, 5])
    assert len(keeper) == 3
    assert keeper.read(b, 1) is not None and keeper.read(b, 5) is None


def test_readable_while_the_expunge_is_still_under_way(maildir: Maildir) -> None:
    """The unlinks are done, the directory's fsync is not: another session that finds the
    file gone already gets its bytes (the entry exists before the block runs)."""
    keeper = ExpungedFiles()
    maildir.deliver(b"Subject: x\n\nbody\n")
    folder = maildir.folder()
    state = folder.sync()
    a = MailboxView(folder, state, readonly=False)
    b = MailboxView(maildir.folder(), state, readonly=False)
    keeper.register(a)
    keeper.register(b)
    with keeper.expunging(a, [1]):
        folder.expunge([1])
        assert keeper.read(b, 1) == b"Subject: x\n\nbody\n"
        keeper.release()  # another session's release meanwhile keeps it
        assert len(keeper) == 1
    assert keeper.read(b, 1) == b"Subject: x\n\nbody\n"


def test_a_failed_expunge_keeps_nothing(maildir: Maildir) -> None:
    keeper = ExpungedFiles()
    maildir.deliver(b"Subject: x\n\nbody\n")
    folder = maildir.folder()
    a = MailboxView(folder, folder.sync(), readonly=False)
    keeper.register(a)
    with pytest.raises(OSError), keeper.expunging(a, [1]):
        raise OSError("disk gone")
    assert len(keeper) == 0
