"""The durable outbound spool: format, atomicity, fsync order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mailstack.queue import QueueIdError, QueueStore


def test_enqueue_list_load_remove(tmp_path: Path) -> None:
    q = QueueStore(tmp_path / "q")
    a = q.enqueue("s@example.org", ["x@remote.example"], b"Subject: a\r\n\r\nA\r\n", reason="forward")
    b = q.enqueue("", ["y@remote.example", "z@remote.example"], b"B\r\n")
    assert q.list() == sorted([a, b])
    env, data = q.load(a)
    assert env.sender == "s@example.org" and env.recipients == ("x@remote.example",) and env.reason == "forward"
    assert data == b"Subject: a\r\n\r\nA\r\n"
    raw = json.loads((tmp_path / "q" / f"{b}.env").read_text())
    assert raw["version"] == 1 and raw["sender"] == "" and raw["recipients"] == ["y@remote.example", "z@remote.example"]
    assert oct((tmp_path / "q" / f"{a}.msg").stat().st_mode & 0o777) == "0o600"
    q.save(q.updated(env, attempts=1))
    assert q.envelope(a).attempts == 1
    q.remove(a)
    assert q.list() == [b]
    q.remove(a)  # idempotent


def test_bad_ids_refused(tmp_path: Path) -> None:
    q = QueueStore(tmp_path)
    for bad in ("../etc/passwd", "abc", "0" * 17 + "g"):
        with pytest.raises(QueueIdError):
            q.load(bad)


def test_fsync_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both files fsynced before the .env (the commit point) is renamed; dir fsynced last."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(a: str, b: str) -> None:
        events.append("rename:" + Path(b).suffix)
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    QueueStore(tmp_path).enqueue("s@x.example", ["r@y.example"], b"x\r\n")
    assert events == ["fsync", "fsync", "rename:.msg", "rename:.env", "fsync"]


def test_orphan_message_without_envelope_is_not_queued(tmp_path: Path) -> None:
    q = QueueStore(tmp_path)
    (tmp_path / "0000000000000000AB.msg").write_bytes(b"half")
    assert q.list() == []
