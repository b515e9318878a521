"""Learning from Junk moves over IMAP (imaplib against our IMAP server), into a real rspamd.

Moved or copied into Junk -> learned as spam; moved out of Junk (not to Trash) -> ham;
observed in the controller's ``/stat`` (``learned``) and in Bayes' verdict on the same
messages afterwards. The IMAP command never waits for rspamd: with the controller away the
message waits in the durable queue and is learned once rspamd is back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from mailstack.spam.learn import LearnQueue, Learner
from mailstack.spam.rspamd import RspamdClient, ScanRequest
from mailstack.storage import Maildir
from mailstack.storage.errors import StorageError
from tests.helpers import free_port
from tests.imap_server.conftest import IMAPServer, make_server
from tests.spam.rspamd_peer import PASSWORD, Rspamd


def text(kind: str) -> bytes:
    """A message of its own words (Bayes' learn cache skips content it has seen)."""
    words = " ".join(f"{kind}{secrets.token_hex(3)}" for _ in range(40))
    return (f"From: someone@sender.test\nTo: alice@example.test\nSubject: {kind} {secrets.token_hex(4)}\n"
            f"Message-ID: <{secrets.token_hex(8)}@sender.test>\n\n{words}\n").encode()


@pytest.fixture
def learning_imap(tmp_path: Path, rspamd: Rspamd) -> Iterator[Any]:
    made: list[Generator[IMAPServer, None, None]] = []

    def factory(**spam: Any) -> IMAPServer:
        gen = cast(Generator[IMAPServer, None, None], make_server(tmp_path / str(len(made)), spam={
            "rspamd_controller_url": rspamd.controller_url, "rspamd_password": PASSWORD,
            "learn_dir": str(tmp_path / "learn"), **spam}))
        made.append(gen)
        return next(gen)

    try:
        yield factory
    finally:
        for gen in made:
            gen.close()


def waiting(learn_dir: Path) -> list[Path]:
    """The queued entries: <learn_dir>/<spam|ham>/<domain>/<local>/<id>."""
    return sorted(learn_dir.glob("*/*/*/*")) if learn_dir.is_dir() else []


def wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def scan(rspamd: Rspamd, data: bytes) -> dict[str, float]:
    async def go() -> dict[str, float]:
        client = RspamdClient(url=rspamd.url, timeout=10)
        try:
            return dict((await client.check(data, ScanRequest(client_ip="192.0.2.1"))).symbols)
        finally:
            await client.close()
    return asyncio.run(go())


def test_moves_into_and_out_of_junk_teach_bayes(learning_imap: Any, rspamd: Rspamd, tmp_path: Path) -> None:
    imap = learning_imap()
    spam, ham = text("spammy"), text("hammy")
    imap.maildir().create_folder("Junk")
    imap.deliver("alice@example.test", spam)
    imap.deliver("alice@example.test", ham, "Junk")
    before = rspamd.learned()
    c = imap.client()
    try:
        c.select("INBOX")
        assert c.uid("MOVE", "1", "Junk")[0] == "OK"  # into Junk: spam
        c.select("Junk")
        typ, data = c.uid("SEARCH", "SUBJECT", "hammy")
        assert c.uid("MOVE", data[0].decode().split()[0], "INBOX")[0] == "OK"  # out of Junk: ham
    finally:
        c.logout()
    wait_for(lambda: rspamd.learned() >= before + 2 and not waiting(tmp_path / "learn"))
    # Bayes now knows both (min_learns = 1): the same messages are classified as learned
    assert "BAYES_SPAM" in scan(rspamd, spam)
    assert "BAYES_HAM" in scan(rspamd, ham)


def test_copy_into_junk_learns_and_junk_to_trash_does_not(learning_imap: Any, rspamd: Rspamd,
                                                           tmp_path: Path) -> None:
    imap = learning_imap()
    md = imap.maildir()
    for name in ("Junk", "Trash", "Archive"):
        md.create_folder(name)
    imap.deliver("alice@example.test", text("copied"))
    imap.deliver("alice@example.test", text("trashed"), "Junk")
    before = rspamd.learned()
    c = imap.client()
    try:
        c.select("INBOX")
        assert c.copy("1", "Junk")[0] == "OK"  # COPY counts as MOVE does (Dovecot's imapsieve: COPY)
        wait_for(lambda: rspamd.learned() >= before + 1 and not waiting(tmp_path / "learn"))
        c.select("Junk")
        assert c.uid("MOVE", "1", "Trash")[0] == "OK"  # out of Junk into Trash: nothing
        assert c.uid("MOVE", "1:*", "Junk")[0] == "OK"  # Junk into Junk: nothing
        c.select("INBOX")
        assert c.copy("1", "Archive")[0] == "OK"  # neither side Junk: nothing
    finally:
        c.logout()
    assert waiting(tmp_path / "learn") == []
    time.sleep(0.5)
    assert rspamd.learned() == before + 1


def test_learning_waits_on_disk_while_rspamd_is_away(learning_imap: Any, rspamd: Rspamd, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Controller down: MOVE answers at once, the message waits in the queue (even after the
    user expunged it); a learner with rspamd back learns it. A wrong password is retried,
    never dropped."""
    learn_dir = tmp_path / "learn"
    imap = learning_imap(rspamd_controller_url=f"http://127.0.0.1:{free_port()}")
    spam = text("queued")
    imap.maildir().create_folder("Junk")
    imap.deliver("alice@example.test", spam)
    caplog.set_level(logging.WARNING, logger="mailstack.spam")
    c = imap.client()
    try:
        c.select("INBOX")
        start = time.monotonic()
        assert c.uid("MOVE", "1", "Junk")[0] == "OK"
        assert time.monotonic() - start < 3  # not waiting for the dead controller
        [entry] = waiting(learn_dir)
        assert entry.relative_to(learn_dir).parts[:3] == ("spam", "example.test", "alice")
        assert entry.read_bytes() == spam.replace(b"\r\n", b"\n")
        c.select("Junk")  # the user deletes it for good before rspamd is back
        c.uid("STORE", "1", "+FLAGS", r"(\Deleted)")
        c.expunge()
    finally:
        c.logout()
    wait_for(lambda: any("cannot learn" in r.getMessage() for r in caplog.records))
    assert waiting(learn_dir) == [entry]  # kept for a retry

    async def drain(password: str) -> tuple[float, int]:
        learner = Learner(LearnQueue(learn_dir), RspamdClient(controller_url=rspamd.controller_url,
                                                              password=password, timeout=10))
        try:
            delay = await learner.drain()
            return delay, learner.learned
        finally:
            await learner.stop()

    # the service's own learner stays out of the way from here on
    asyncio.run_coroutine_threadsafe(imap.service.learning.stop(), imap.loop).result(10)
    before = rspamd.learned()
    delay, learned = asyncio.run(drain("wrong-password"))
    assert learned == 0 and delay > 0 and waiting(learn_dir) == [entry]
    delay, learned = asyncio.run(drain(PASSWORD))
    assert learned == 1 and waiting(learn_dir) == []
    assert rspamd.learned() == before + 1


def test_a_full_queue_refuses_new_entries_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    md = Maildir.for_user(tmp_path / "mail", "example.test", "alice")
    md.ensure()
    for _ in range(3):
        md.deliver(b"Subject: x\n\nhello\n")
    inbox = md.folder("INBOX")
    uids = inbox.sync().uids()
    queue = LearnQueue(tmp_path / "learn", max_entries=2)
    caplog.set_level(logging.WARNING, logger="mailstack.spam")
    assert queue.add(True, "alice@example.test", inbox, uids) == 2
    assert queue.add(False, "alice@example.test", inbox, uids) == 0
    assert [e.spam for e in queue.entries()] == [True, True]
    assert sum("is full" in r.getMessage() for r in caplog.records) == 2
    # a user name that would leave the queue's directory is refused, nothing written
    with pytest.raises(StorageError):
        LearnQueue(tmp_path / "learn2").add(True, "../x@example.test", inbox, uids)
    assert waiting(tmp_path / "learn2") == []


def test_without_a_controller_nothing_is_queued(tmp_path: Path) -> None:
    gen = cast(Generator[IMAPServer, None, None], make_server(tmp_path, spam={"learn_dir": str(tmp_path / "learn")}))
    imap = next(gen)
    try:
        assert imap.service.learning is None
        imap.maildir().create_folder("Junk")
        imap.deliver("alice@example.test", text("plain"))
        c = imap.client()
        c.select("INBOX")
        assert c.uid("MOVE", "1", "Junk")[0] == "OK"
        c.logout()
        assert not (tmp_path / "learn").exists()
    finally:
        gen.close()
