"""An enqueue (a forward or DSN from the MX, a submission) wakes the queue runners at once:
in-process through the enqueue hook, across processes through the wake file's mtime."""

from __future__ import annotations

import os
from pathlib import Path

from mailstack.smtp import queue_runner
from mailstack.smtp.queue_store import WAKE_FILE, QueueStore, on_enqueue


def test_enqueue_calls_hooks_and_touches_wake_file(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q")
    seen: list[Path] = []
    from mailstack.smtp import queue_store

    on_enqueue(seen.append)
    try:
        store.enqueue("a@example.test", ["b@remote.test"], b"Subject: x\r\n\r\nhi\r\n")
        assert seen == [tmp_path / "q"]
        os.utime(tmp_path / "q" / WAKE_FILE, ns=(0, 0))
        store.enqueue("a@example.test", ["b@remote.test"], b"Subject: y\r\n\r\nhi\r\n")
        assert os.stat(tmp_path / "q" / WAKE_FILE).st_mtime_ns > 0
        assert len(seen) == 2
    finally:
        queue_store._ENQUEUE_HOOKS.remove(seen.append)


def test_runner_module_registers_notify() -> None:
    from mailstack.smtp import queue_store

    assert queue_runner.notify in queue_store._ENQUEUE_HOOKS


def test_failing_hook_never_fails_an_enqueue(tmp_path: Path) -> None:
    def boom(_: Path) -> None:
        raise RuntimeError("hook broke")

    on_enqueue(boom)
    try:
        qid = QueueStore(tmp_path).enqueue("", ["b@remote.test"], b"x\r\n")
        assert QueueStore(tmp_path).load(qid)[1] == b"x\r\n"
    finally:
        from mailstack.smtp import queue_store

        queue_store._ENQUEUE_HOOKS.remove(boom)
