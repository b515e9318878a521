"""Shared fixtures: a throwaway PostgreSQL cluster for tests that run against a real server.

`postgres_cluster` (session) runs `initdb` + `pg_ctl start` from Debian's
`/usr/lib/postgresql/*/bin` in a fresh temp folder: trust auth, no TCP (a unix socket in
that folder, named after a free port), fsync off. As root it runs the server as the
`postgres` user (root may not run postgres). It is stopped by its PID at the end.
`postgres_url` (function) gives a `postgresql+psycopg://` URL of a brand-new database,
dropped after the test. Missing binaries: `require_tool` (skip, or fail under CI=true).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, require_tool


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else require_tool(name)


@dataclass(frozen=True)
class PostgresCluster:
    socket_dir: Path
    port: int
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql.encode())


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    initdb = _pg_bin("initdb")
    pg_ctl = _pg_bin("pg_ctl")
    base = Path(tempfile.mkdtemp(prefix="mailstack-pg-"))
    prefix: list[str] = []
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = free_port()
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
             "--locale=C"],
            check=True, capture_output=True, env=env,
        )
        options = (f"-k {base} -p {port} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=100")
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            check=True, capture_output=True, env=env,
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        server_log = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {detail}\n{server_log}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield PostgresCluster(socket_dir=base, port=port)
    finally:
        os.kill(pid, signal.SIGINT)  # "fast" shutdown
        if not _wait_gone(pid, 30):
            os.kill(pid, signal.SIGQUIT)
            _wait_gone(pid, 10)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database on the session's cluster; dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_cluster.admin(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _keep_the_umask() -> Iterator[None]:
    """mailstack's CLI and server set umask 077 for their process (docs/on-disk.md); tests
    that run them in-process must not leave it to later tests, whose peers (Postfix's
    spool, Dovecot's mail dirs) need the usual modes."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
