"""Maildir++ quota: maildirsize format, appended updates, recalculation rules."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailstack.storage import Maildir
from mailstack.storage import quota as q


def lines(md: Maildir) -> list[str]:
    return (md.root / "maildirsize").read_text().splitlines()


@pytest.mark.parametrize(
    ("limit_bytes", "limit_count", "line"),
    [(None, None, "0S"), (0, 0, "0S"), (1000, None, "1000S"), (1000, 50, "1000S,50C"), (None, 50, "50C")],
)
def test_limit_line(limit_bytes: int | None, limit_count: int | None, line: str) -> None:
    assert q.format_limit(limit_bytes, limit_count) == line
    assert q.parse_limit(line) == (limit_bytes or 0, limit_count or 0)


def test_bad_limit_line() -> None:
    for bad in ("", "12", "12X", "S", "1S,,2C"):
        with pytest.raises(ValueError):
            q.parse_limit(bad)


def test_first_delivery_recalculates_then_appends(maildir: Maildir) -> None:
    maildir.deliver(b"12345\r\n")  # S=6
    assert lines(maildir) == ["0S", "6 1"]
    maildir.deliver(b"abc\r\n")  # S=4
    assert lines(maildir) == ["0S", "6 1", "4 1"]
    assert maildir.quota_usage() == (10, 2)


def test_expunge_appends_negative_line(maildir: Maildir) -> None:
    maildir.deliver(b"12345\r\n")
    folder = maildir.folder("INBOX")
    uid = folder.sync().messages[0].uid
    folder.expunge([uid])
    assert lines(maildir)[-1] == "-6 -1"
    assert maildir.quota_usage() == (0, 0)


def test_counts_all_folders_from_names_only(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    maildir.create_folder("Sent")
    maildir.deliver(b"aaaa\n")
    maildir.deliver(b"bb\n", folder="Sent")
    (maildir.root / "maildirsize").unlink()
    opened: list[str] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], *a: object, **k: object) -> int:
        opened.append(str(path))
        return real_open(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    assert maildir.quota_usage() == (8, 2)
    assert not any("/new/" in p or "/cur/" in p for p in opened)
    assert lines(maildir) == ["0S", "8 2"]


def test_recalculated_when_over_5120_bytes(maildir: Maildir) -> None:
    maildir.quota_check(0, 10**9)
    for _ in range(2000):
        q.update(maildir.root, 1, 1)
    size = (maildir.root / "maildirsize").stat().st_size
    assert size <= q.MAX_FILE_SIZE
    # the recalculation counted the files (none), not the fake updates
    assert maildir.quota_usage()[1] < 1300
    assert lines(maildir)[0] == "1000000000S"  # limit line kept


def test_recalculated_when_limit_changes(maildir: Maildir) -> None:
    maildir.deliver(b"x" * 99 + b"\n")
    assert maildir.quota_check(0, 1000) is True
    assert lines(maildir) == ["1000S", "100 1"]
    assert maildir.quota_check(0, 2000, 10) is True
    assert lines(maildir) == ["2000S,10C", "100 1"]


def test_quota_check(maildir: Maildir) -> None:
    maildir.deliver(b"x" * 499 + b"\n")  # 500 bytes
    assert maildir.quota_check(500, 1000)
    assert not maildir.quota_check(501, 1000)
    assert maildir.quota_check(10**12, None)  # unlimited
    assert maildir.quota_check(10**12, 0)
    assert not maildir.quota_check(1, None, 1)  # count limit: one message already


def test_stale_over_quota_is_recalculated(maildir: Maildir) -> None:
    maildir.quota_check(0, 1000)
    # someone wrote a bogus big update; the file now says "over quota" with an update line
    with open(maildir.root / "maildirsize", "a") as f:
        f.write("5000 3\n")
    assert maildir.quota_check(10, 1000) is True
    assert lines(maildir) == ["1000S", "0 0"]


def test_broken_file_rebuilt(maildir: Maildir) -> None:
    maildir.deliver(b"abc\n")
    (maildir.root / "maildirsize").write_text("garbage\nnot numbers\n")
    assert maildir.quota_usage() == (4, 1)
    (maildir.root / "maildirsize").write_text("0S\n-50 -1\n")  # negative: corrupt
    assert maildir.quota_usage() == (4, 1)


def test_old_over_quota_file_recalculated(maildir: Maildir) -> None:
    (maildir.root / "maildirsize").write_text("100S\n5000 1\n")
    old = time.time() - 3600
    os.utime(maildir.root / "maildirsize", (old, old))
    assert maildir.quota_check(10, 100) is True


def test_missing_maildirsize_on_update_is_rebuilt(tmp_path: Path) -> None:
    md = Maildir.for_user(tmp_path, "example.test", "carol")
    md.deliver(b"abc\r\n")
    (md.root / "maildirsize").unlink()
    md.deliver(b"de\r\n")
    assert (md.root / "maildirsize").read_text() == "0S\n7 2\n"
