"""Several processes delivering, appending and syncing one folder: unique UIDs, nothing lost."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mailstack.storage import Maildir

PER_PROCESS = 40


def _worker(root: str, tag: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    md = Maildir(Path(root))
    folder = md.folder("INBOX")
    seen: dict[str, int] = {}
    mine: list[str] = []
    for i in range(PER_PROCESS):
        if i % 2:
            uid = folder.append(f"Subject: p{tag} m{i}\r\n\r\n".encode(), {"\\Seen"})
            seen[f"append-{tag}-{i}"] = uid
        else:
            mine.append(md.deliver(f"Subject: p{tag} m{i}\r\n\r\n".encode()))
        if i % 3 == 0:
            state = folder.sync()
            for m in state.messages:
                if m.base in seen and seen[m.base] != m.uid:
                    raise AssertionError(f"{m.base} changed UID {seen[m.base]} -> {m.uid}")
                seen[m.base] = m.uid
            if state.messages and i % 6 == 0:
                folder.set_flags(state.messages[-1].uid, {"\\Flagged"})
    state = folder.sync()
    out.put(({m.base: m.uid for m in state.messages}, mine, [v for k, v in seen.items() if k.startswith("append-")]))


def test_processes_deliver_and_sync_concurrently(tmp_path: Path) -> None:
    md = Maildir.for_user(tmp_path, "example.test", "shared")
    md.ensure()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(md.root), n, out)) for n in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    final = md.folder("INBOX").sync()
    uids = [m.uid for m in final.messages]
    assert len(uids) == len(set(uids)) == 3 * PER_PROCESS  # nothing lost, nothing doubled
    assert uids == sorted(uids)
    by_base = {m.base: m.uid for m in final.messages}
    for snapshot, delivered, appended_uids in results:
        for base, uid in snapshot.items():  # every process saw the same UID for a file
            assert by_base[base] == uid
        assert all(name in by_base for name in delivered)
        assert set(appended_uids) <= set(uids)
    assert md.quota_usage()[1] == 3 * PER_PROCESS
