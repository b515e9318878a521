"""Alembic environment for the directory; run through `mailstack.directory.migrate`.

The caller opens the connection and its transaction and passes the connection in
`config.attributes["connection"]`, so the whole upgrade is one transaction (it is taken
as an external transaction by Alembic) and no alembic.ini is needed. Without a
connection (the `alembic` command line with `-x url=...` or `sqlalchemy.url`), an engine
is made from the URL. SQLite migrations use batch mode (table copy) for ALTERs.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from mailstack.directory.engine import create_directory_engine
from mailstack.directory.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no database URL (-x url=...)")
    engine = create_directory_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
_main()
