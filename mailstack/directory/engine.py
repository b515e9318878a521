"""Engines and sessions for the directory database: SQLite tuned for several processes, or PostgreSQL.

SQLite (the default) is shared by separate SMTP, LMTP, IMAP and POP3 processes, so every
connection gets, on connect: `journal_mode=WAL` (readers never block the writer),
`busy_timeout=5000` (wait for a lock instead of failing), `synchronous=NORMAL` (safe with
WAL), `foreign_keys=ON`. The sqlite3 module's own transaction handling is switched off
(`isolation_level = None`) and SQLAlchemy's `begin` event emits `BEGIN IMMEDIATE` for write
sessions, so a read-modify-write takes the write lock first and can neither lose an
update nor fail half-way with "database is locked"; read sessions use a deferred `BEGIN`
and never wait for a writer. The parent folder of a SQLite file is created when missing.

The SQLite file holds password hashes: before SQLite opens it, it is created 0600 (or
an existing one loses any group/other bits), and so do its `-wal`, `-shm` and
`-journal` if they exist; SQLite gives those it creates later the database file's
mode, whatever the umask. Its folder, when made here, is 0750 (the group may need to
reach the LMTP socket that sits beside it by default), like `mailstack serve` makes it.

PostgreSQL (`postgresql+psycopg://...`) is used as is, with `pool_pre_ping` so that a
restarted server costs one failed ping, not one failed request.

Sessions never expire objects on commit (`expire_on_commit=False`): the directory hands
out frozen values built inside the transaction.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

__all__ = ["WRITE_OPTION", "create_directory_engine", "is_sqlite", "make_sessions"]

log = logging.getLogger(__name__)

WRITE_OPTION = "mailstack_write"  # execution option: this connection's transactions write
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_FILE_MODE = 0o600
SQLITE_DIR_MODE = 0o750
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def is_sqlite(engine: Engine | Connection) -> bool:
    """True for a SQLite database."""
    return engine.dialect.name == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 (its folder 0750) or take group/other bits off it."""
    from mailstack.storage.safeio import make_dirs

    make_dirs(path.parent, SQLITE_DIR_MODE)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, SQLITE_FILE_MODE))
    except OSError:
        return  # read-only place or no right: let SQLite say so in its own words
    for p in (path, *(Path(f"{path}{suffix}") for suffix in _SQLITE_SIDE_FILES)):
        try:
            st = os.stat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)
                log.warning("%s was readable by group or others; it is now %o", p, stat.S_IMODE(st.st_mode) & 0o700)
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot make %s private: %s", p, e.strerror or e)


def create_directory_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for the directory; SQLite gets the pragmas and the BEGIN handling above.

    Raises what `sqlalchemy.create_engine` raises for a bad URL or a missing driver.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)

    path = _sqlite_file(parsed)
    if path is None:
        # One in-memory database per engine: every session must see the same one.
        kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    else:
        _private_sqlite_file(path)
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL may itself wait for another process.
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(WRITE_OPTION, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def make_sessions(engine: Engine) -> tuple[sessionmaker[Session], sessionmaker[Session]]:
    """(read sessions, write sessions) bound to the engine; see the module docstring."""
    read = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    write = sessionmaker(
        bind=engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False, autoflush=False
    )
    return read, write
