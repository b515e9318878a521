"""IDLE change notification (inotify, polling fallback) and IDLE hibernation.

The notifier is driven directly on real Maildir directories (the kernel's inotify, real
renames); hibernation through a real server over real sockets: a hibernated session has
no task and no message list, and what it tells the client after waking is exactly what
an awake session would have said.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.imap import notify
from mailstack.imap.notify import Notifier
from tests.imap_server.conftest import PASSWORD, IMAPServer, make_server, message

ALICE = "alice@example.test"


# -------------------------------------------------------------------------- the notifier


def _folder(tmp_path: Path, name: str = "box") -> Path:
    path = tmp_path / name
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    return path


def _drop_into_new(path: Path, name: str = "1.M1P1.host") -> None:
    """What any MDA does: write in tmp/, rename into new/."""
    (path / "tmp" / name).write_bytes(b"Subject: x\n\nhi\n")
    os.rename(path / "tmp" / name, path / "new" / name)


async def _fired(ev: asyncio.Event, timeout: float = 3.0) -> bool:
    try:
        await asyncio.wait_for(ev.wait(), timeout)
        return True
    except TimeoutError:
        return False


@pytest.fixture
def stat_count(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every folder fingerprint the notifier takes (the stat calls of polling)."""
    calls: list[Path] = []
    real = notify._stamp

    def counting(path: Path) -> tuple[int, ...]:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(notify, "_stamp", counting)
    return calls


def test_inotify_wakes_on_a_rename_into_new_and_polls_nothing(tmp_path: Path, stat_count: list[Path]) -> None:
    path = _folder(tmp_path)

    async def main() -> None:
        n = Notifier(interval=0.05, check_interval=0)
        ev = asyncio.Event()
        w = n.watch(path, ev.set)
        assert n.inotify_active and n.polled == []
        taken = len(stat_count)
        await asyncio.sleep(0.6)  # twelve poll intervals: nothing is polled
        assert len(stat_count) == taken
        assert n._task is None and n._check is None  # no poller, no timer
        _drop_into_new(path)
        assert await _fired(ev)
        ev.clear()
        os.rename(path / "new" / "1.M1P1.host", path / "cur" / "1.M1P1.host:2,S")  # flags / new -> cur
        assert await _fired(ev)
        ev.clear()
        os.unlink(path / "cur" / "1.M1P1.host:2,S")  # expunged by another process
        assert await _fired(ev)
        w.close()
        await n.close()

    asyncio.run(main())


def test_uidlist_and_keywords_replaced_wake_other_files_do_not(tmp_path: Path) -> None:
    path = _folder(tmp_path)

    async def main() -> None:
        n = Notifier(interval=0.05, check_interval=0)
        ev = asyncio.Event()
        n.watch(path, ev.set)
        (path / "mailstack-index.sqlite").write_bytes(b"x")  # our caches beside the uidlist
        (path / "dovecot-uidlist.lock").write_bytes(b"3 V1 N1\n")
        assert not await _fired(ev, 0.5)
        os.rename(path / "dovecot-uidlist.lock", path / "dovecot-uidlist")  # how Dovecot and we write it
        assert await _fired(ev)
        ev.clear()
        (path / "dovecot-keywords").write_bytes(b"0 $Junk\n")  # written in place: IN_CLOSE_WRITE
        assert await _fired(ev)
        await n.close()

    asyncio.run(main())


def test_one_set_of_kernel_watches_per_folder_gone_with_the_last_watcher(tmp_path: Path) -> None:
    a, b = _folder(tmp_path, "a"), _folder(tmp_path, "b")

    async def main() -> None:
        n = Notifier(interval=0.05, check_interval=0)
        events = [asyncio.Event() for _ in range(50)]
        watches = [n.watch(a, e.set) for e in events]
        other = n.watch(b)
        assert len(n._wd_path) == 6  # new/, cur/ and the folder itself, for each of two folders
        _drop_into_new(a)
        for e in events:
            assert await _fired(e)
        assert not other.event.is_set()
        for w in watches:
            w.close()
        assert len(n._wd_path) == 3 and list(n._folders) == [b]
        n.poke(b)  # the in-process (and cross-host bridge) path still works
        assert other.event.is_set()
        await n.close()

    asyncio.run(main())


class _NoWatchesLeft(Notifier):
    """The kernel's answer once fs.inotify.max_user_watches is used up (ENOSPC): the
    sysctl is machine-wide, so the test cannot exhaust it without hurting other processes."""

    def _add_kernel_watch(self, path: Path, mask: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_watch_limit_exhausted_falls_back_to_polling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, other = _folder(tmp_path, "a"), _folder(tmp_path, "b")

    async def main() -> None:
        n = _NoWatchesLeft(interval=0.05, check_interval=0)
        ev = asyncio.Event()
        n.watch(path, ev.set)
        n.watch(other)
        assert sorted(n.polled) == [path, other] and n._wd_path == {}
        _drop_into_new(path)
        assert await _fired(ev)
        await n.close()

    with caplog.at_level(logging.WARNING, logger="mailstack.imap.notify"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if "max_user_watches" in r.getMessage()]
    assert len(warnings) == 1  # said once, not once per folder


def test_a_folder_that_vanishes_is_polled_and_nothing_raises(tmp_path: Path) -> None:
    path = _folder(tmp_path)

    async def main() -> None:
        n = Notifier(interval=0.05, check_interval=0)
        ev = asyncio.Event()
        n.watch(path, ev.set)
        shutil.rmtree(path)
        assert await _fired(ev)
        for _ in range(40):
            if n.polled == [path]:
                break
            await asyncio.sleep(0.05)
        assert n.polled == [path] and n._wd_path == {}
        ev.clear()
        _folder(tmp_path)  # made again: the poller sees it
        assert await _fired(ev)
        await n.close()

    asyncio.run(main())


def test_slow_check_sees_what_inotify_cannot(tmp_path: Path) -> None:
    """A change no watch reports (here a metadata-only change; on NFS: another host's
    delivery) is found by the ``check_interval`` check."""
    path = _folder(tmp_path)

    async def main() -> None:
        n = Notifier(interval=0.05, check_interval=0.3)
        ev = asyncio.Event()
        n.watch(path, ev.set)
        st = os.stat(path / "new")
        os.utime(path / "new", ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # IN_ATTRIB is not watched
        assert await _fired(ev, 3.0)
        await n.close()

    asyncio.run(main())


# -------------------------------------------------------------------------- a real server


@pytest.fixture
def slow_poll(tmp_path: Path) -> Iterator[IMAPServer]:
    """Polling every minute: only inotify can make an IDLE hear of a change in time."""
    yield from _server(tmp_path, poll_interval=60.0, hibernate_timeout=0)


_OPEN: list[socket.socket] = []


def _close_clients() -> None:
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture(autouse=True)
def _clients_closed() -> Iterator[None]:
    yield
    _close_clients()


def _server(tmp_path: Path, **imap: Any) -> Iterator[IMAPServer]:
    """``make_server``, with this test's clients gone before the server stops."""
    gen = make_server(tmp_path, imap=imap)
    try:
        yield next(gen)
    finally:
        _close_clients()
        for _ in gen:
            pass


class Raw:
    """A raw IMAP client over a socket: byte-exact transcripts."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock)
        _OPEN.append(self.sock)
        self.buf = b""
        assert self.line().startswith(b"* OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def until(self, tag: bytes) -> bytes:
        out = b""
        while True:
            line = self.line()
            out += line
            if line.startswith(tag + b" "):
                return out

    def cmd(self, tag: bytes, text: bytes) -> bytes:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def ok(self, tag: bytes, text: bytes) -> bytes:
        """The untagged responses of a command that must end in a tagged OK."""
        out = self.cmd(tag, text)
        body, _, last = out[:-2].rpartition(b"\r\n")
        assert (last if body else out).startswith(tag + b" OK "), out
        return body + b"\r\n" if body else b""

    def login_select(self, user: str = ALICE) -> bytes:
        assert b"a OK" in self.cmd(b"a", f'LOGIN "{user}" "{PASSWORD}"'.encode())
        return self.cmd(b"s", b"SELECT INBOX")

    def idle(self) -> None:
        self.send(b"i IDLE\r\n")
        assert self.line() == b"+ idling\r\n"


def test_idle_hears_a_plain_rename_into_new_at_once(slow_poll: IMAPServer) -> None:
    imap = slow_poll
    c = Raw(imap.port)
    c.login_select()
    c.idle()
    md = imap.maildir()
    (md.root / "tmp" / "9.M1P1.host").write_bytes(b"Subject: by hand\n\nhi\n")
    t0 = time.monotonic()
    os.rename(md.root / "tmp" / "9.M1P1.host", md.root / "new" / "9.M1P1.host")
    assert c.line() == b"* 1 EXISTS\r\n"
    assert time.monotonic() - t0 < 5  # the poller would take a minute
    c.send(b"DONE\r\n")
    assert c.until(b"i").endswith(b"i OK IDLE terminated\r\n")


# -------------------------------------------------------------------------- hibernation


@pytest.fixture
def sleepy(tmp_path: Path) -> Iterator[IMAPServer]:
    yield from _server(tmp_path, hibernate_timeout=0.2, poll_interval=60.0)


def _on_loop(imap: IMAPServer, fn: Any) -> Any:
    async def call() -> Any:
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), imap.loop).result(10)


def _wait_hibernated(imap: IMAPServer, n: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asleep = _on_loop(imap, lambda: [c for c in imap.service.connections
                                          if c.sleeper is not None and c.task is not None and c.task.done()])
        if len(asleep) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("sessions did not hibernate")


def test_hibernated_idle_has_no_task_nor_message_list(sleepy: IMAPServer) -> None:
    imap = sleepy
    for i in range(5):
        imap.deliver(ALICE, message(f"m{i}"))
    clients = [Raw(imap.port) for _ in range(4)]
    for c in clients:
        c.login_select()
    baseline = _on_loop(imap, lambda: len(asyncio.all_tasks()))
    for c in clients:
        c.idle()
    _wait_hibernated(imap, 4)
    tasks = _on_loop(imap, lambda: len(asyncio.all_tasks()))
    assert tasks <= baseline - 4  # one session task fewer per hibernated client
    for conn in _on_loop(imap, lambda: list(imap.service.connections)):
        sess = conn.sleeper.sess
        assert sess.view is None and sess.frozen is not None
        assert sess.frozen.uids.tolist() == [1, 2, 3, 4, 5] and sess.frozen.uids.itemsize == 4
        assert len(sess.frozen.told) == 5  # one byte per message
    for c in clients:
        c.send(b"DONE\r\n")
        assert c.until(b"i") == b"i OK IDLE terminated\r\n"
        assert c.ok(b"f", b"FETCH 5 (UID)") == b"* 5 FETCH (UID 5)\r\n"


def test_woken_session_reports_what_changed_while_it_slept(sleepy: IMAPServer) -> None:
    """Flag changes, an expunge and an arrival by others, while hibernated: pushed as an
    awake session would (RFC 2177; EXPUNGE highest first, RFC 3501 §7.4.1)."""
    imap = sleepy
    for i in range(4):
        imap.deliver(ALICE, message(f"m{i}"))
    b = Raw(imap.port)
    b.login_select()  # b claims \Recent (RFC 3501 §2.3.2): a's view of them has none
    a = Raw(imap.port)
    a.login_select()
    assert b.ok(b"k", b"STORE 4 +FLAGS.SILENT (\\Seen)") == b""  # known to a too
    assert a.ok(b"n", b"NOOP") == b"* 4 FETCH (FLAGS (\\Seen))\r\n"
    a.idle()
    _wait_hibernated(imap)
    # another process changes the folder: no poke, only the kernel tells
    md = imap.maildir()
    folder = md.folder("INBOX")
    st = folder.sync()
    by_uid = {m.uid: m for m in st.messages}
    os.rename(folder.cur / by_uid[1].filename, folder.cur / (by_uid[1].base + ":2,F"))
    os.unlink(folder.cur / by_uid[3].filename)
    got = b""
    deadline = time.monotonic() + 10
    want = (b"* 3 EXPUNGE\r\n", b"* 1 FETCH (FLAGS (\\Flagged))\r\n")
    while not all(w in got for w in want) and time.monotonic() < deadline:
        got += a.line()
    # one wake or two (the kernel may report the rename and the unlink apart): the same news
    assert sorted(got.splitlines(keepends=True)) == sorted(want), got  # 2 and 4 did not change
    _wait_hibernated(imap)  # asleep again
    imap.deliver(ALICE, message("new"))
    assert a.line() == b"* 4 EXISTS\r\n"
    assert a.line() == b"* 1 RECENT\r\n"
    a.send(b"DONE\r\n")
    assert a.until(b"i") == b"i OK IDLE terminated\r\n"
    assert a.ok(b"f", b"FETCH 1:* (UID FLAGS)") == (
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n* 2 FETCH (UID 2 FLAGS ())\r\n"
        b"* 3 FETCH (UID 4 FLAGS (\\Seen))\r\n* 4 FETCH (UID 5 FLAGS (\\Recent))\r\n")


def test_hibernated_qresync_session_gets_vanished(sleepy: IMAPServer) -> None:
    imap = sleepy
    for i in range(3):
        imap.deliver(ALICE, message(f"m{i}"))
    a = Raw(imap.port)
    assert b"a OK" in a.cmd(b"a", f'LOGIN "{ALICE}" "{PASSWORD}"'.encode())
    assert a.cmd(b"e", b"ENABLE QRESYNC").startswith(b"* ENABLED QRESYNC\r\n")
    a.cmd(b"s", b"SELECT INBOX")
    a.idle()
    _wait_hibernated(imap)
    b = Raw(imap.port)
    b.login_select()
    b.cmd(b"x", b"STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.cmd(b"y", b"EXPUNGE")
    line = a.line()
    if b"FETCH" in line:  # woken by the STORE before the EXPUNGE: the flag change first (RFC 7162 §3.2.4)
        assert line == b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Recent) MODSEQ (3))\r\n"
        line = a.line()
    assert line == b"* VANISHED 2\r\n"
    a.send(b"DONE\r\n")
    assert a.until(b"i") == b"i OK IDLE terminated\r\n"


def test_hibernated_session_autologout_and_counts_given_back(tmp_path: Path) -> None:
    for imap in make_server(tmp_path, imap={"hibernate_timeout": 0.2, "idle_timeout": 1.5}):
        c = Raw(imap.port)
        c.login_select()
        c.idle()
        _wait_hibernated(imap)
        c.sock.settimeout(10)
        assert c.line() == b"* BYE Autologout; idle for too long\r\n"
        assert c.sock.recv(100) == b""
        deadline = time.monotonic() + 5
        while _on_loop(imap, lambda: (imap.service.limits.active, len(imap.service.connections))) != (0, 0):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_hibernated_session_client_gone_and_server_stop(tmp_path: Path) -> None:
    gen = make_server(tmp_path, imap={"hibernate_timeout": 0.2})
    imap = next(gen)
    gone, stays = Raw(imap.port), Raw(imap.port)
    for c in (gone, stays):
        c.login_select()
        c.idle()
    _wait_hibernated(imap, 2)
    gone.sock.close()  # EOF wakes it; it ends and gives its counts back
    deadline = time.monotonic() + 5
    while _on_loop(imap, lambda: imap.service.limits.active) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(StopIteration):
        next(gen)  # the server stops: the hibernated session is told
    assert stays.line() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"


def test_folder_deleted_while_hibernated_says_bye(sleepy: IMAPServer) -> None:
    imap = sleepy
    a = Raw(imap.port)
    assert b"a OK" in a.cmd(b"a", f'LOGIN "{ALICE}" "{PASSWORD}"'.encode())  # makes Trash
    imap.deliver(ALICE, message("in trash"), "Trash")
    a.ok(b"s", b"SELECT Trash")
    a.idle()
    _wait_hibernated(imap)
    b = Raw(imap.port)
    b.login_select()
    b.ok(b"d", b"DELETE Trash")
    assert a.line() == b"* BYE [UNAVAILABLE] Mailbox is gone, please reconnect\r\n"
    assert a.sock.recv(100) == b""


def test_hibernation_over_implicit_tls(sleepy: IMAPServer) -> None:
    imap = sleepy
    a = Raw(imap.tls_port, imap.client_context())
    a.login_select()
    a.idle()
    _wait_hibernated(imap)
    imap.deliver(ALICE, message("over tls"))
    assert a.line() + a.line() == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
    _wait_hibernated(imap)
    a.send(b"DONE\r\n")
    assert a.until(b"i") == b"i OK IDLE terminated\r\n"
    assert a.ok(b"f", b"UID FETCH 1 (UID)") == b"* 1 FETCH (UID 1)\r\n"



def test_idle_still_works_when_no_watch_can_be_had(tmp_path: Path) -> None:
    """fs.inotify.max_user_watches used up: the server's IDLE falls back to polling."""
    for imap in _server(tmp_path, poll_interval=0.2, hibernate_timeout=0.2):
        def swap() -> None:
            imap.service.notifier = _NoWatchesLeft(0.2, 0)
        _on_loop(imap, swap)
        a = Raw(imap.port)
        a.login_select()
        a.idle()
        _wait_hibernated(imap)
        assert _on_loop(imap, lambda: len(imap.service.notifier.polled)) == 1
        imap.deliver(ALICE, message("polled"))
        assert a.line() + a.line() == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
        a.send(b"DONE\r\n")
        assert a.until(b"i") == b"i OK IDLE terminated\r\n"
