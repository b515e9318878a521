"""An enqueue (a forward or DSN from the MX, a submission) wakes the queue runners at once:
in-process through ``queue.wake`` (the runners registered for that directory, and the
hooks), across processes through the wake file's mtime."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from mailstack.config import Config
from mailstack.dns import DNSPythonResolver
from mailstack.queue import WAKE_FILE, QueueStore, wake
from mailstack.smtp.queue_runner import QueueRunner


def test_enqueue_calls_hooks_and_touches_wake_file(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q")
    seen: list[Path] = []
    wake.on_enqueue(seen.append)
    try:
        store.enqueue("a@example.test", ["b@remote.test"], b"Subject: x\r\n\r\nhi\r\n")
        assert seen == [tmp_path / "q"]
        os.utime(tmp_path / "q" / WAKE_FILE, ns=(0, 0))
        store.enqueue("a@example.test", ["b@remote.test"], b"Subject: y\r\n\r\nhi\r\n")
        assert os.stat(tmp_path / "q" / WAKE_FILE).st_mtime_ns > 0
        assert len(seen) == 2
    finally:
        wake.remove_hook(seen.append)


def test_enqueue_wakes_the_runners_of_that_directory(cfg: Config, tmp_path: Path) -> None:
    """Without anyone calling notify: the store announces, the runner of this queue
    directory wakes (from the loop's thread, and from a worker thread as the MX
    enqueues), a runner of another directory does not."""
    resolver = DNSPythonResolver(cfg.dns.nameservers, 3)

    async def main() -> None:
        mine = QueueRunner(cfg, QueueStore(cfg.queue.dir), resolver)
        other = QueueRunner(cfg, QueueStore(tmp_path / "other"), resolver)
        try:
            QueueStore(cfg.queue.dir).enqueue("a@example.test", ["b@remote.test"], b"x\r\n")
            assert mine._wake.is_set() and not other._wake.is_set()
            mine._wake.clear()
            mine._home = asyncio.get_running_loop()  # as start_background sets it
            worker = threading.Thread(
                target=QueueStore(cfg.queue.dir).enqueue, args=("a@example.test", ["c@remote.test"], b"y\r\n"))
            worker.start()
            worker.join()
            await asyncio.wait_for(mine._wake.wait(), 5)
            assert not other._wake.is_set()
        finally:
            await mine.stop(0)
            await other.stop(0)

    asyncio.run(main())


def test_failing_hook_never_fails_an_enqueue(tmp_path: Path) -> None:
    def boom(_: Path) -> None:
        raise RuntimeError("hook broke")

    wake.on_enqueue(boom)
    try:
        qid = QueueStore(tmp_path).enqueue("", ["b@remote.test"], b"x\r\n")
        assert QueueStore(tmp_path).load(qid)[1] == b"x\r\n"
    finally:
        wake.remove_hook(boom)
