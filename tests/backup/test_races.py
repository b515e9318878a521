"""Copying a Maildir that other processes change: a message renamed (a flag change, or
moved from new/ to cur/) while the backup lists and copies its folder is in the backup
once, never dropped as if it had been expunged; an expunged one is simply left out."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mailstack.backup.maildirs import copy_maildirs
from mailstack.backup.writer import Writer
from mailstack.storage import Maildir


def _maildir(tmp_path: Path, count: int) -> Maildir:
    md = Maildir.for_user(tmp_path / "mailboxes", "example.test", "alice")
    md.ensure()
    for n in range(count):
        md.deliver(f"Subject: {n}\n\nbody {n}\n".encode())
    return md


def _bases(snapshot: Path) -> list[str]:
    folder = snapshot / "maildirs" / "example.test" / "alice"
    names = os.listdir(folder / "cur") + os.listdir(folder / "new")
    return sorted(n.partition(":")[0] for n in names)


class RenameFirst(Writer):
    """Another process changes each message's flags between our listing and our copy
    (a real rename of the real file, at the worst moment)."""

    def __init__(self, root: Path, live: Path) -> None:
        super().__init__(root)
        self.live = live
        self.renamed: set[str] = set()

    def copy_file(self, src: Path, rel: str, *, message_folder: str | None = None) -> bool:
        base = src.name.partition(":")[0]
        if message_folder is not None and base not in self.renamed:
            self.renamed.add(base)
            os.rename(src, self.live / "cur" / f"{base}:2,FS")
        return super().copy_file(src, rel, message_folder=message_folder)


def test_a_message_renamed_between_listing_and_copy_is_found_again(tmp_path: Path) -> None:
    md = _maildir(tmp_path, 5)
    md.folder("INBOX").sync()  # new/ -> cur/
    md.deliver(b"Subject: unsynced\n\nstill in new/\n")  # renamed from new/ into cur/ below
    expected = sorted(n.partition(":")[0] for n in os.listdir(md.root / "cur") + os.listdir(md.root / "new"))
    snap = tmp_path / "snap"
    snap.mkdir()
    writer = RenameFirst(snap, md.root)
    copy_maildirs(tmp_path / "mailboxes", writer)
    assert len(writer.renamed) == 6
    assert _bases(snap) == expected
    assert all(n.endswith(":2,FS") for n in os.listdir(snap / "maildirs/example.test/alice/cur"))


def test_an_expunged_message_is_left_out(tmp_path: Path) -> None:
    md = _maildir(tmp_path, 3)
    inbox = md.folder("INBOX")
    state = inbox.sync()

    class ExpungeFirst(Writer):
        done = False

        def copy_file(self, src: Path, rel: str, *, message_folder: str | None = None) -> bool:
            if message_folder is not None and not self.done:
                self.done = True
                inbox.expunge([state.messages[0].uid])
            return super().copy_file(src, rel, message_folder=message_folder)

    snap = tmp_path / "snap"
    snap.mkdir()
    copy_maildirs(tmp_path / "mailboxes", ExpungeFirst(snap))
    assert _bases(snap) == sorted(m.filename.partition(":")[0] for m in state.messages[1:])


def test_flags_changing_all_the_time_lose_no_message(tmp_path: Path) -> None:
    md = _maildir(tmp_path, 40)
    inbox = md.folder("INBOX")
    state = inbox.sync()
    expected = sorted(m.filename.partition(":")[0] for m in state.messages)
    stop = threading.Event()
    errors: list[BaseException] = []

    def toggle() -> None:
        other = Maildir.for_user(tmp_path / "mailboxes", "example.test", "alice").folder("INBOX")  # another "process"
        try:
            while not stop.is_set():
                for m in state.messages:
                    other.update_flags(m.uid, add={"\\Seen"} if m.uid % 2 else (), remove=() if m.uid % 2 else {"\\Seen"})
                    other.update_flags(m.uid, remove={"\\Seen"} if m.uid % 2 else (), add=() if m.uid % 2 else {"\\Seen"})
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=toggle, daemon=True)
    thread.start()
    try:
        for run in range(15):
            snap = tmp_path / f"snap{run}"
            snap.mkdir()
            copy_maildirs(tmp_path / "mailboxes", Writer(snap))
            assert _bases(snap) == expected, run
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
