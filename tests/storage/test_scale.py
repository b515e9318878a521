"""A 100,000-message folder syncs quickly and without opening a single message file."""

from __future__ import annotations

import builtins
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mailstack.storage import Maildir

N = 100_000


def test_sync_100k_without_opening_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md = Maildir.for_user(tmp_path, "example.test", "big")
    md.ensure()
    cur = md.root / "cur"
    flags = ["", "S", "RS", "FS"]
    for i in range(N - 1000):
        fd = os.open(cur / f"{1600000000 + i // 1000}.M{i % 1000}P1Q{i}.host,S=10,W=11:2,{flags[i % 4]}", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    for i in range(1000):  # the newest ones still in new/
        fd = os.open(md.root / "new" / f"1700000000.M{i}P2Q{i}.host,S=10,W=11", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)

    opened: list[str] = []
    real_os_open, real_open, real_io_open = os.open, builtins.open, io.open

    def note(path: Any) -> None:
        p = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        if "/cur/" in p or "/new/" in p:
            opened.append(p)

    def spy_os_open(path: Any, *a: Any, **k: Any) -> int:
        note(path)
        return real_os_open(path, *a, **k)

    def spy_open(path: Any, *a: Any, **k: Any) -> Any:
        note(path)
        return real_open(path, *a, **k)

    def spy_io_open(path: Any, *a: Any, **k: Any) -> Any:
        note(path)
        return real_io_open(path, *a, **k)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_io_open)

    cpu0 = time.process_time()  # CPU time: other jobs on a busy CI host do not count
    t0 = time.monotonic()
    state = md.folder("INBOX").sync()  # first sync: assigns 100,000 UIDs
    t1 = time.monotonic()
    again = Maildir(md.root).folder("INBOX").sync()  # another process: parses the uidlist
    t2 = time.monotonic()
    folder = md.folder("INBOX")
    folder.sync()
    folder.set_flags(N // 2, {"\\Seen", "\\Deleted"})
    third = folder.sync()  # an IMAP session's re-sync
    t3 = time.monotonic()
    cpu = time.process_time() - cpu0
    monkeypatch.undo()

    assert opened == []
    assert len(state.messages) == N
    assert state.messages[-1].uid == N and state.uidnext == N + 1
    assert again == state
    assert third.get(N // 2).flags == {"\\Seen", "\\Deleted"}  # type: ignore[union-attr]
    assert all(m.size == 10 and m.vsize == 11 for m in state.messages[:100])
    assert os.listdir(md.root / "new") == []
    print(f"first sync {t1 - t0:.2f}s, fresh instance {t2 - t1:.2f}s, flag+resync {t3 - t2:.2f}s, cpu {cpu:.2f}s")
    assert cpu < 20
