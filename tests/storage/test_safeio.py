"""safeio: durable writes happen in the order write -> fsync file -> rename -> fsync dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailstack.storage import safeio


def _recorder(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append(("rename", str(dst)))
        real_replace(src, dst)

    def rename(src: str, dst: str) -> None:
        calls.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_write_durable_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recorder(monkeypatch)
    target = tmp_path / "file"
    safeio.write_durable(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert [c[0] for c in calls] == ["fsync", "rename", "fsync"]
    assert calls[0][1].startswith(str(tmp_path) + "/.file.")  # the temp file, same dir
    assert calls[1][1] == str(target)
    assert calls[2][1] == str(tmp_path)  # the directory
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["file"]


def test_write_durable_replaces_and_keeps_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    safeio.write_durable(target, b"one", mode=0o640)
    safeio.write_durable(target, b"two", mode=0o640)
    assert target.read_bytes() == b"two"
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_write_durable_failure_leaves_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    safeio.write_durable(target, b"old")

    def boom(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        safeio.write_durable(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]  # no temp file left behind


def test_create_exclusive_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recorder(monkeypatch)
    p = tmp_path / "x"
    safeio.create_exclusive(p, b"data")
    assert calls == [("fsync", str(p))]
    with pytest.raises(FileExistsError):
        safeio.create_exclusive(p, b"other")
    assert p.read_bytes() == b"data"


def test_fsync_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recorder(monkeypatch)
    safeio.fsync_dir(tmp_path)
    assert calls == [("fsync", str(tmp_path))]
