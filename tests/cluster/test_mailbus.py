"""mailstack.directory.mailbus against a real PostgreSQL: payloads, reconnects, a dead database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from mailstack.directory import mailbus
from mailstack.storage import hooks
from tests.conftest import PostgresCluster

ROOT = Path("/srv/mail")


@pytest.mark.parametrize(("payload", "expected"), [
    ("example.test/alice", ROOT / "example.test/alice"),
    ("example.test/alice/.Sent", ROOT / "example.test/alice/.Sent"),
    ("example.test/alice/.&AOQ-rger", ROOT / "example.test/alice/.&AOQ-rger"),  # modified UTF-7 stays as is
    ("", None),
    ("/etc", None),  # absolute
    ("../etc", None),
    ("example.test/../../etc", None),
    ("example.test//alice", None),  # empty component
    ("example.test/./alice", None),
    ("example.test/al\x00ice", None),
    ("example.test/al\nice", None),
    ("example.test\\alice", None),
    ("x" * 8000, None),  # longer than PostgreSQL ever sends
])
def test_payload_names_a_folder_below_the_root_or_nothing(payload: str, expected: Path | None) -> None:
    assert mailbus.folder_from_payload(ROOT, payload) == expected


def test_folder_payload_round_trip() -> None:
    folder = ROOT / "example.test" / "alice" / ".Sent"
    payload = mailbus.folder_payload(ROOT, folder)
    assert payload == "example.test/alice/.Sent"
    assert mailbus.folder_from_payload(ROOT, payload) == folder
    assert mailbus.folder_payload(ROOT, Path("/elsewhere/x")) is None
    assert mailbus.folder_payload(ROOT, ROOT) is None


async def _until(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(pred) and pred():
            return True
        await asyncio.sleep(0.05)
    return False


def test_stored_message_pokes_every_listener_and_survives_a_lost_connection(
        postgres_url: str, postgres_cluster: PostgresCluster, tmp_path: Path) -> None:
    engine = create_engine(postgres_url)
    folder = tmp_path / "example.test" / "alice"

    async def scenario() -> None:
        heard: list[Path] = []
        bridge = mailbus.Bridge.for_directory(engine, tmp_path)
        assert bridge is not None
        try:
            bridge.listen([heard.append])
            assert await bridge.wait_listening(10)
            hooks.stored(folder, "1.M1P1.host", b"x")
            assert await _until(lambda: heard == [folder], 5), heard

            # the server drops both connections (restart, failover, an admin's pg_terminate_backend)
            postgres_cluster.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   f"WHERE application_name = '{mailbus.APPLICATION_NAME}'")
            assert await _until(lambda: bridge._listening is not None and not bridge._listening.is_set(), 5)
            assert await bridge.wait_listening(10), "the listener did not reconnect"
            hooks.stored(folder / ".Sent", "2.M1P1.host", b"x")
            assert await _until(lambda: heard[-1:] == [folder / ".Sent"], 10), heard
        finally:
            await bridge.close()
        hooks.stored(folder, "3.M1P1.host", b"x")  # no longer registered: nothing happens
        assert heard == [folder, folder / ".Sent"]

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


def test_a_dead_database_never_holds_up_delivery(tmp_path: Path) -> None:
    engine = create_engine(f"postgresql+psycopg://nobody@/nothing?host={tmp_path}&port=1")  # no server there
    bridge = mailbus.Bridge.for_directory(engine, tmp_path)
    assert bridge is not None
    try:
        started = time.monotonic()
        for i in range(mailbus.MAX_PENDING + 500):
            hooks.stored(tmp_path / "example.test" / f"u{i}", "1.M1P1.host", b"x")
        assert time.monotonic() - started < 10, "the storage hook waited for the database"
        assert len(bridge._publisher._pending) <= mailbus.MAX_PENDING
    finally:
        asyncio.run(bridge.close())
        engine.dispose()


def test_no_bridge_without_postgresql(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/d.db")
    assert mailbus.Bridge.for_directory(engine, tmp_path) is None
    engine.dispose()


def test_folder_changes_reach_the_change_hooks_and_a_failing_hook_fails_nothing(tmp_path: Path) -> None:
    from mailstack.storage import Maildir

    md = Maildir.for_user(tmp_path, "example.test", "alice")
    md.ensure()
    inbox = md.folder("INBOX")
    sent = md.create_folder("Sent")
    seen: list[Path] = []

    def broken(path: Path) -> None:
        raise RuntimeError("a hook that fails")

    hooks.add_change(broken)
    hooks.add_change(seen.append)
    try:
        uid = inbox.append(b"Subject: x\r\n\r\nbody\r\n")
        inbox.update_flags(uid, add=["\\Flagged"])
        assert seen == [inbox.path]
        inbox.copy_to([uid], sent)
        assert seen[-1] == sent.path
        assert inbox.expunge([uid]) == [uid]
        assert seen[-1] == inbox.path and len(seen) == 3
    finally:
        hooks.remove_change(broken)
        hooks.remove_change(seen.append)
