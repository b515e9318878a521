"""What crashed writers leave in tmp/ (and in the queue) is removed, as Dovecot does.

Against the real ``mailstack serve imap pop3 lmtp`` process and the real CLI: files whose
times are set back with os.utime stand for a writer killed 40 hours ago. Opening the
folder (IMAP SELECT, the POP3 maildrop, an LMTP delivery) removes them once tmp/'s own
"last scanned" mark (its atime, as in Dovecot) is older than 8 hours; fresh files,
anything outside tmp/, symlinks (and what they point to) and hard links of messages
stay. The queue's leftovers go when the queue is listed.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailstack.storage import Maildir
from mailstack.storage.tmpclean import TMP_MAX_AGE, TMP_SCAN_INTERVAL, clean_dir, maybe_clean_tmp
from tests.helpers import free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = b"From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: tmp\r\n\r\nhello\r\n"
LONG_AGO = time.time() - TMP_MAX_AGE - 4 * 3600  # 40 hours
SCANNED_LONG_AGO = time.time() - TMP_SCAN_INTERVAL - 3600


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    e.pop("NOTIFY_SOCKET", None)
    return e | {"PYTHONPATH": str(ROOT)}


@dataclass
class Served:
    base: Path
    config: Path
    imap: int
    pop3: int
    lmtp: int

    def cli(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "mailstack", "--config", str(self.config), *args],
                              input=stdin, capture_output=True, timeout=120, env=env(), check=False)

    @property
    def inbox(self) -> Path:
        return self.base / "mailboxes" / "example.test" / "alice"

    def deliver(self) -> None:
        with smtplib.LMTP("127.0.0.1", self.lmtp) as lmtp:
            lmtp.sendmail("bob@elsewhere.test", ["alice@example.test"], MESSAGE)

    def select(self, name: str = "INBOX") -> None:
        imap = imaplib.IMAP4("127.0.0.1", self.imap, timeout=30)
        try:
            imap.login("alice@example.test", "secret")
            assert imap.select(name)[0] == "OK"
        finally:
            imap.logout()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("tmpclean")
    imap, pop3, lmtp = free_port(), free_port(), free_port()
    (base / "etc").mkdir()
    config = base / "etc" / "mailstack.toml"
    config.write_text(
        'hostname = "mx.example.test"\n'
        '[database]\nurl = "sqlite:///../var/mailstack.db"\n'
        '[storage]\nmaildir_root = "../mailboxes"\n'
        '[tls]\ncert_file = "../var/tls/cert.pem"\nkey_file = "../var/tls/key.pem"\n'
        '[queue]\ndir = "../var/queue"\n'
        f'[lmtp]\nlisten = ["127.0.0.1:{lmtp}"]\n'
        f'[imap]\nlisten = ["127.0.0.1:{imap}"]\ntls_listen = []\n'
        f'[pop3]\nlisten = ["127.0.0.1:{pop3}"]\ntls_listen = []\n')
    s = Served(base, config, imap, pop3, lmtp)
    assert s.cli("domain", "add", "example.test").returncode == 0
    assert s.cli("user", "add", "alice@example.test", "--password-stdin", stdin=b"secret\n").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(config), "serve",
                             "imap", "pop3", "lmtp"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for port in (imap, pop3, lmtp):
            wait_listening(port, proc, timeout=60)
        s.deliver()
        imap_conn = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
        imap_conn.login("alice@example.test", "secret")
        assert imap_conn.create("Projects")[0] == "OK"
        imap_conn.logout()
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()


def old(path: Path, data: bytes = b"half a message") -> Path:
    path.write_bytes(data)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def mark_scanned_long_ago(tmp: Path) -> None:
    os.utime(tmp, (SCANNED_LONG_AGO, tmp.stat().st_mtime))


@dataclass
class Planted:
    stale: Path
    fresh: Path
    link: Path
    link_target: Path
    outside: Path
    hardlink: Path
    plain_dir: Path
    trash_dir: Path


def plant(folder: Path, name: str) -> Planted:
    tmp = folder / "tmp"
    outside_dir = folder.parent.parent.parent / "elsewhere"
    outside_dir.mkdir(exist_ok=True)
    target = old(outside_dir / f"{name}-target")
    link = tmp / f"{name}-link"
    link.symlink_to(target)
    os.utime(link, (LONG_AGO, LONG_AGO), follow_symlinks=False)
    message = [*(folder / "cur").iterdir(), *(folder / "new").iterdir()][0]
    hardlink = tmp / f"{name}-copy-in-flight"
    os.link(message, hardlink)
    os.utime(hardlink, (LONG_AGO, LONG_AGO))  # an old message being COPYed: shares its times
    plain_dir = tmp / f"{name}-dir"
    plain_dir.mkdir()
    old(plain_dir / "inside")
    trash = tmp / f".deleted.{name}"
    trash.mkdir()
    old(trash / "msg")
    os.utime(trash, (LONG_AGO, LONG_AGO))
    p = Planted(stale=old(tmp / f"{name}-stale"), fresh=tmp / f"{name}-fresh", link=link, link_target=target,
                outside=old(folder / f"{name}-outside-tmp"), hardlink=hardlink, plain_dir=plain_dir,
                trash_dir=trash)
    p.fresh.write_bytes(b"being written right now")
    mark_scanned_long_ago(tmp)
    return p


def assert_cleaned(p: Planted) -> None:
    assert not p.stale.exists(), "a 40-hour-old file in tmp/ stayed"
    assert not p.trash_dir.exists(), "a half-deleted folder in tmp/ stayed"
    assert p.fresh.exists()
    assert p.link.is_symlink() and p.link_target.exists()  # neither the link nor its target
    assert p.outside.exists()  # nothing outside tmp/
    assert p.hardlink.exists()  # a COPY in flight
    assert (p.plain_dir / "inside").exists()


def test_imap_select_cleans_tmp_at_most_every_8_hours(served: Served) -> None:
    p = plant(served.inbox, "select")
    served.select()
    assert_cleaned(p)
    # scanned just now: a new leftover waits for the next scan, hours later
    again = old(served.inbox / "tmp" / "select-again")
    served.select()
    assert again.exists()
    mark_scanned_long_ago(served.inbox / "tmp")
    served.select()
    assert not again.exists()


def test_imap_select_of_a_folder_cleans_its_tmp(served: Served) -> None:
    folder = served.inbox / ".Projects"
    imap = imaplib.IMAP4("127.0.0.1", served.imap, timeout=30)
    try:
        imap.login("alice@example.test", "secret")
        assert imap.append("Projects", None, None, MESSAGE)[0] == "OK"
    finally:
        imap.logout()
    p = plant(folder, "folder")
    served.select("Projects")
    assert_cleaned(p)


def test_pop3_maildrop_open_cleans_tmp(served: Served) -> None:
    p = plant(served.inbox, "pop3")
    pop = poplib.POP3("127.0.0.1", served.pop3, timeout=30)
    try:
        pop.user("alice@example.test")
        pop.pass_("secret")
        pop.stat()
    finally:
        pop.quit()
    assert_cleaned(p)


def test_lmtp_delivery_cleans_tmp(served: Served) -> None:
    p = plant(served.inbox, "lmtp")
    served.deliver()
    assert_cleaned(p)


def test_queue_leftovers_go_when_the_queue_is_listed(served: Served) -> None:
    queue = served.base / "var" / "queue"
    queue.mkdir(exist_ok=True)
    qid, orphan_id, fresh_id = "0" * 13 + "AAAAA", "0" * 13 + "BBBBB", "0" * 13 + "CCCCC"
    kept_env, kept_msg = old(queue / f"{qid}.env", b'{"id": "%s", "sender": "", "recipients": ["x@remote.test"], '
                                                   b'"created": 1, "attempts": 0, "next_attempt": 1e12}' % qid.encode()
                             ), old(queue / f"{qid}.msg")  # an old message still queued
    stale = [old(queue / f".tmp-{orphan_id}-0a1b2c3d.msg"), old(queue / f".tmp-{orphan_id}-0a1b2c3d.env"),
             old(queue / f".{qid}.env.4242.0123456789ab.tmp"), old(queue / f"{orphan_id}.msg")]
    fresh = queue / f".tmp-{fresh_id}-0a1b2c3d.msg"
    fresh.write_bytes(b"being written")
    target = old(served.base / "elsewhere-queue-target")
    link = queue / f".tmp-{fresh_id}-deadbeef.env"
    link.symlink_to(target)
    os.utime(link, (LONG_AGO, LONG_AGO), follow_symlinks=False)
    r = served.cli("queue", "list")
    assert r.returncode == 0, r.stderr.decode()
    assert [p.name for p in stale if p.exists()] == []
    assert kept_env.exists() and kept_msg.exists() and fresh.exists()
    assert link.is_symlink() and target.exists()


# -- the scan itself, on real files ------------------------------------------------------------


def test_clean_dir_removes_only_stale_regular_files(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = old(tmp / "stale")
    read_lately = old(tmp / "read-lately")
    os.utime(read_lately, (time.time(), LONG_AGO))  # accessed now: a writer is on it
    written_lately = old(tmp / "written-lately")
    os.utime(written_lately, (LONG_AGO, time.time()))
    assert clean_dir(tmp) == 1
    assert not stale.exists() and read_lately.exists() and written_lately.exists()
    assert clean_dir(tmp_path / "missing") == 0


def test_maybe_clean_tmp_uses_and_sets_the_atime_mark(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = old(tmp / "stale")
    assert maybe_clean_tmp(tmp) == 0 and stale.exists()  # tmp/ made just now: scanned "now"
    mark_scanned_long_ago(tmp)
    assert maybe_clean_tmp(tmp) == 1 and not stale.exists()
    assert tmp.stat().st_atime > time.time() - 60
    assert maybe_clean_tmp(tmp_path / "missing") == 0


def test_append_with_an_old_internaldate_is_not_taken_for_a_leftover(tmp_path: Path) -> None:
    """APPEND gives the tmp/ file its INTERNALDATE as mtime before the rename into cur/:
    a cleaner running at that moment must not take it."""
    md = Maildir.for_user(tmp_path, "example.test", "alice")
    inbox = md.folder()
    seen: list[float] = []
    real_rename = os.rename

    def rename(src: object, dst: object) -> None:
        if Path(str(src)).parent == inbox.tmp:
            seen.append(os.stat(str(src)).st_atime)
            assert clean_dir(inbox.tmp) == 0  # a scan right between the write and the rename
        real_rename(src, dst)  # type: ignore[arg-type]

    os.rename = rename  # type: ignore[assignment]
    try:
        uid = inbox.append(MESSAGE, internaldate=LONG_AGO - 86400)
    finally:
        os.rename = real_rename
    assert seen and seen[0] > time.time() - 60
    assert inbox.sync().get(uid) is not None
    assert inbox.sync().get(uid).internaldate.timestamp() == pytest.approx(LONG_AGO - 86400, abs=1)  # type: ignore[union-attr]
