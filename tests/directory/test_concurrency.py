"""Several processes on one database (SMTP, LMTP, IMAP, POP3 may each be one): no lock errors, no lost update.

Each worker is a real separate Python process started at the same moment; on SQLite they
share one file (WAL, busy_timeout, BEGIN IMMEDIATE), on PostgreSQL one database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mailstack.directory import Directory
from mailstack.directory import migrate as migrations

REPO = Path(__file__).resolve().parents[2]
WORKERS = 3
OLD_HASH = (
    "{SHA512-CRYPT}$6$rehash12$"
    "QU6W6KMuOnf/Ke0e/eybAf52ML3XYUPzF8TuJ0Bwc.GJawm5VDBB.U5DaSfSowQaWu.82IkGb2d0HCMGcDRuA."
)

WORKER = r'''
import os, sys, time
from sqlalchemy import select
from mailstack.directory import AlreadyExists, Directory, Passwords
from mailstack.directory.engine import make_sessions
from mailstack.directory.models import UserRow

url, go, worker, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("never started")
    time.sleep(0.002)
d = Directory(url, passwords=Passwords.fast())
if mode == "users":
    d.migrate()  # all at once on a fresh database
    try:
        d.add_domain("example.org")
    except AlreadyExists:
        pass
    for i in range(20):
        d.add_user(f"w{worker}u{i}@example.org", "pw")
        assert d.get_user(f"W{worker}U{i}@example.org") is not None
elif mode == "rmw":
    _read, write = make_sessions(d.engine)
    for _ in range(30):
        with write() as s, s.begin():
            row = s.scalar(select(UserRow).where(UserRow.local_key == "counter").with_for_update())
            current = row.quota_bytes
            time.sleep(0.001)  # widen the window a lost update would need
            row.quota_bytes = current + 1
elif mode == "alias":
    for i in range(10):
        d.add_alias("list@example.org", [f"w{worker}t{i}@remote.net"])
elif mode == "auth":
    for _ in range(10):
        assert d.authenticate("bob@example.org", "pw") is not None
d.close()
print("ok")
'''


def run_workers(url: str, mode: str, tmp_path: Path) -> None:
    go = tmp_path / f"go-{mode}"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", WORKER, url, str(go), str(n), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        for n in range(WORKERS)
    ]
    time.sleep(0.5)  # let every interpreter start and wait at the line
    go.touch()
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or out.strip() != b"ok":
            failures.append(err.decode(errors="replace")[-2000:])
    assert not failures, "\n".join(failures)


def test_processes_add_users_at_once(directory_url: str, tmp_path: Path) -> None:
    run_workers(directory_url, "users", tmp_path)
    with Directory(directory_url) as d:
        users = d.list_users("example.org")
        assert len(users) == WORKERS * 20
        assert {u.local for u in users} == {f"w{w}u{i}" for w in range(WORKERS) for i in range(20)}
        assert d.schema_revision() == migrations.head_revision()


def test_read_modify_write_loses_no_update(directory: Directory, directory_url: str, tmp_path: Path) -> None:
    directory.add_domain("example.org")
    directory.add_user("counter@example.org", None, quota_bytes=1)
    run_workers(directory_url, "rmw", tmp_path)
    user = directory.get_user("counter@example.org")
    assert user is not None and user.quota_bytes == 1 + WORKERS * 30


def test_processes_extend_one_alias_at_once(directory: Directory, directory_url: str, tmp_path: Path) -> None:
    directory.add_domain("example.org")
    run_workers(directory_url, "alias", tmp_path)
    alias = directory.get_alias("list@example.org")
    assert alias is not None
    assert sorted(alias.targets) == sorted(f"w{w}t{i}@remote.net" for w in range(WORKERS) for i in range(10))


def test_concurrent_logins_with_rehash(directory: Directory, directory_url: str, tmp_path: Path) -> None:
    directory.add_domain("example.org")
    # an old-style hash (openssl passwd -6): every worker's first login wants to upgrade it at once
    directory.add_user("bob@example.org", None, password_hash=OLD_HASH)
    assert directory.authenticate("bob@example.org", "wrong") is None
    run_workers(directory_url, "auth", tmp_path)
    assert directory.authenticate("bob@example.org", "pw") is not None
