"""Schema migrations, run programmatically with Alembic (no alembic.ini at run time).

`upgrade(engine)` brings the schema to head in ONE transaction, so an upgrade either
happens whole or not at all, and it is idempotent. Two processes starting at once are
serialised: on SQLite by `BEGIN IMMEDIATE` (the write lock is taken before Alembic reads
the version table), on PostgreSQL by a transaction-scoped advisory lock. On SQLite the
foreign keys are switched off for the upgrade (batch mode copies tables, and dropping a
parent table with `foreign_keys=ON` would delete or refuse its children) and checked
with `PRAGMA foreign_key_check` before the commit.

The revision scripts live in `migrations/versions/` inside this package; `head_revision()`
and `current_revision()` let a server refuse to run against an old schema.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from mailstack.directory.engine import WRITE_OPTION, is_sqlite

__all__ = ["SCRIPT_LOCATION", "MigrationError", "current_revision", "head_revision", "upgrade"]

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_KEY = 0x6D61696C  # "mail": pg_advisory_xact_lock key for migrations


class MigrationError(RuntimeError):
    """An upgrade that would leave the database inconsistent; nothing was committed."""


def _config(script_location: Path | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or SCRIPT_LOCATION))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision(script_location: Path | None = None) -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory.from_config(_config(script_location)).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None for an empty database."""
    return MigrationContext.configure(conn).get_current_revision()


def _set_sqlite_foreign_keys(conn: Connection, on: bool) -> None:
    # A PRAGMA foreign_keys inside a transaction is a no-op: go to the driver connection,
    # which is in autocommit mode (isolation_level None) outside our BEGIN.
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def upgrade(engine: Engine, revision: str = "head", *, script_location: Path | None = None) -> None:
    """Upgrade the schema to `revision` in one transaction; a no-op when already there."""
    cfg = _config(script_location)
    sqlite = is_sqlite(engine)
    with engine.execution_options(**{WRITE_OPTION: True}).connect() as conn:
        if sqlite:
            _set_sqlite_foreign_keys(conn, False)
        try:
            with conn.begin():
                if not sqlite and engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if problems:
                        raise MigrationError(f"upgrade to {revision} would break {len(problems)} foreign key(s)")
        finally:
            if sqlite:
                _set_sqlite_foreign_keys(conn, True)
