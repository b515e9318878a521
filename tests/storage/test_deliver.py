"""Delivery: exact file name shape, LF content, S=/W=, durable order, folders."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from mailstack.storage import FolderNotFound, Maildir
from mailstack.storage import filename as fn

NAME_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.(.+),S=(\d+),W=(\d+)$")


def test_name_shape_and_content(maildir: Maildir) -> None:
    wire = b"Subject: hi\r\nTo: a@example.test\r\n\r\nline one\r\nline two\r\n"
    name = maildir.deliver(wire)
    m = NAME_RE.match(name)
    assert m, name
    assert int(m.group(3)) == os.getpid()
    assert m.group(5) == fn.escaped_hostname()
    path = maildir.root / "new" / name
    content = path.read_bytes()
    assert content == wire.replace(b"\r\n", b"\n")
    assert b"\r" not in content
    assert int(m.group(6)) == len(content) == os.path.getsize(path)
    assert int(m.group(7)) == len(wire)  # W= is the size with CRLF
    assert os.listdir(maildir.root / "tmp") == []
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_lf_input_and_unterminated_last_line(maildir: Maildir) -> None:
    name = maildir.deliver(b"Subject: x\n\nbody without newline")
    m = NAME_RE.match(name)
    assert m
    assert int(m.group(6)) == 32
    assert int(m.group(7)) == 34


def test_names_unique(maildir: Maildir) -> None:
    names = {maildir.deliver(b"x\r\n") for _ in range(200)}
    assert len(names) == 200


def test_hostname_escaping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fn, "_hostname", None)
    monkeypatch.setattr(socket, "gethostname", lambda: "a/b:c")
    assert fn.escaped_hostname() == "a\\057b\\072c"
    monkeypatch.setattr(fn, "_hostname", None)


def test_fsync_before_rename_and_dir_after(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        calls.append(("rename", f"{src} -> {dst}"))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    name = maildir.deliver(b"a\r\n")
    tmp_file = str(maildir.root / "tmp" / name)
    new_file = str(maildir.root / "new" / name)
    assert calls[:3] == [
        ("fsync", tmp_file),
        ("rename", f"{tmp_file} -> {new_file}"),
        ("fsync", str(maildir.root / "new")),
    ]


def test_deliver_to_folder(maildir: Maildir) -> None:
    maildir.create_folder("Lists.python")
    assert maildir.has_folder("Lists.python")
    assert not maildir.has_folder("Lists.rust")
    name = maildir.deliver(b"x\r\n", folder="Lists.python")
    assert (maildir.root / ".Lists.python" / "new" / name).exists()
    with pytest.raises(FolderNotFound):
        maildir.deliver(b"x\r\n", folder="Lists.rust")
    assert maildir.deliver(b"x\r\n", folder="inbox")
    assert len(os.listdir(maildir.root / "new")) == 1


def test_deliver_creates_maildir(tmp_path: Path) -> None:
    md = Maildir.for_user(tmp_path, "example.test", "bob")
    md.deliver(b"x\r\n")
    for sub in ("cur", "new", "tmp"):
        assert (md.root / sub).is_dir()
        assert os.stat(md.root / sub).st_mode & 0o777 == 0o700
    assert md.folder("INBOX").sync().messages[0].vsize == 3
