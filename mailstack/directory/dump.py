"""Online copies of the directory database, for `mailstack backup` and `restore`.

Each engine's own tool, so that a copy taken while servers write is consistent:

- SQLite: the online backup API (`sqlite3.Connection.backup`, all pages in one step
  under one read transaction), so the copy is one committed state even in WAL mode
  with writers in other processes. Restore writes the file back with the same API.
- PostgreSQL: `pg_dump --format=custom` (one snapshot in a repeatable-read
  transaction) and `pg_restore --clean --if-exists --single-transaction` (all or
  nothing). The password, when the URL has one, goes in `PGPASSWORD`, never on a
  command line that `ps` shows.

A dump restores only into the same kind of database: a SQLite copy is not a
PostgreSQL database (`DumpError` says so).

Invariants:
- Nothing here changes the source database.
- `is_empty` is read-only too: a database is empty when it holds no domain, user or
  alias (a fresh `migrate()` leaves it empty), or has no tables at all.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Literal

from sqlalchemy import inspect, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .engine import create_directory_engine
from .errors import DirectoryError

__all__ = ["DumpError", "Kind", "kind_of", "dump", "load", "is_empty", "DUMP_NAMES"]

Kind = Literal["sqlite", "postgresql"]

# The file a dump is written to, by kind.
DUMP_NAMES: dict[Kind, str] = {"sqlite": "directory.sqlite", "postgresql": "directory.pgdump"}

# The tables that hold what an admin made: any row in one of them = not empty.
_DATA_TABLES = ("domains", "users", "aliases")
SQLITE_BUSY_TIMEOUT = 30.0  # seconds a dump or restore waits for another process's write lock
PG_TOOL_TIMEOUT = 3600.0  # seconds pg_dump / pg_restore may run


class DumpError(DirectoryError):
    """A dump or restore that could not be made; ``str()`` is one line."""


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise DumpError(f"{url!r} is not a database URL") from None


def kind_of(url: str) -> Kind:
    backend = _parse(url).get_backend_name()
    if backend == "sqlite":
        return "sqlite"
    if backend == "postgresql":
        return "postgresql"
    raise DumpError(f"cannot back up a {backend} database (SQLite and PostgreSQL only)")


def _sqlite_path(url: URL) -> Path:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise DumpError(f"{url.render_as_string(hide_password=True)}: not a SQLite database file")
    return Path(database)


def _pg_args(url: URL) -> tuple[str, dict[str, str]]:
    """(libpq conninfo, environment) for pg_dump / pg_restore; the password in the env."""
    from psycopg.conninfo import make_conninfo

    params: dict[str, str] = {}
    query = {k: (v[0] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    host = url.host or query.pop("host", None)
    port = url.port or query.pop("port", None)
    if host:
        params["host"] = str(host)
    if port:
        params["port"] = str(port)
    if url.username:
        params["user"] = url.username
    if url.database:
        params["dbname"] = url.database
    for key, value in query.items():
        if key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "options", "application_name"):
            params[key] = str(value)
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return make_conninfo(**params), env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DumpError(f"{name} is not installed (PostgreSQL's client tools are needed to back up PostgreSQL)")
    return path


def _run(argv: list[str], env: dict[str, str]) -> None:
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=PG_TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DumpError(f"{Path(argv[0]).name} took more than {PG_TOOL_TIMEOUT:.0f} s") from None
    except OSError as e:
        raise DumpError(f"cannot run {argv[0]}: {e.strerror or e}") from None
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        raise DumpError(f"{Path(argv[0]).name} failed: {lines[-1] if lines else f'exit {result.returncode}'}")


def dump(url: str, dest: Path) -> Path:
    """Copy the database at ``url`` into the folder ``dest`` (`DUMP_NAMES`); the file's path."""
    parsed = _parse(url)
    kind = kind_of(url)
    out = dest / DUMP_NAMES[kind]
    if kind == "sqlite":
        source = _sqlite_path(parsed)
        if not source.is_file():
            raise DumpError(f"{source}: no such database")
        try:
            # read-only: a backup never creates or changes the source
            src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT)
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.close(fd)
                dst = sqlite3.connect(out)
                try:
                    src.backup(dst)  # all pages in one step: one consistent snapshot
                    dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as e:
            raise DumpError(f"{source}: cannot back up: {e}") from None
        return out
    conninfo, env = _pg_args(parsed)
    _run([_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={out}",
          f"--dbname={conninfo}"], env)
    return out


def load(url: str, dump_file: Path, kind: Kind) -> None:
    """Replace the database at ``url`` by ``dump_file`` (a `dump` of the same kind)."""
    parsed = _parse(url)
    target = kind_of(url)
    if target != kind:
        raise DumpError(f"the backup holds a {kind} database but [database] url is {target}: "
                        "restore into the same kind of database")
    if kind == "sqlite":
        path = _sqlite_path(parsed)
        engine = create_directory_engine(parsed)  # makes the file 0600 and its folder, as serve would
        engine.dispose()
        try:
            src = sqlite3.connect(f"{dump_file.resolve().as_uri()}?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT)
                try:
                    src.backup(dst)
                    dst.execute("PRAGMA journal_mode=WAL")  # what the servers use
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as e:
            raise DumpError(f"{path}: cannot restore: {e}") from None
        return
    conninfo, env = _pg_args(parsed)
    _run([_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
          "--exit-on-error", f"--dbname={conninfo}", str(dump_file)], env)


def is_empty(url: str) -> bool:
    """True when the database holds no domain, user or alias (or does not exist yet)."""
    parsed = _parse(url)
    if kind_of(url) == "sqlite" and not _sqlite_path(parsed).exists():
        return True
    try:
        engine = create_directory_engine(parsed)
    except (ArgumentError, ImportError) as e:
        raise DumpError(f"cannot open the database: {e}") from None
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            for table in _DATA_TABLES:
                if table in tables and conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first() is not None:
                    return False
        return True
    except SQLAlchemyError as e:
        raise DumpError(f"cannot read the database: {str(e).splitlines()[0]}") from None
    finally:
        engine.dispose()
