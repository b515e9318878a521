"""The directory: local domains, mailbox users, aliases and password checks, in one database.

The only package that imports SQLAlchemy. Synchronous API (see `service.Directory`);
asyncio code calls it through `asyncio.to_thread`. SQLite by default (safe for several
processes on one file, see `engine.py`), PostgreSQL via a `postgresql+psycopg://` URL.
The schema is managed by Alembic (`Directory.migrate()`, see `migrate.py`).
"""

from mailstack.directory.errors import (
    AlreadyExists,
    Conflict,
    DirectoryError,
    DirectoryUnavailable,
    Invalid,
    NotFound,
)
from mailstack.directory.passwords import Passwords, VerifyResult
from mailstack.directory.service import Alias, Directory, Domain, User

__all__ = [
    "Alias",
    "AlreadyExists",
    "Conflict",
    "Directory",
    "DirectoryError",
    "DirectoryUnavailable",
    "Domain",
    "Invalid",
    "NotFound",
    "Passwords",
    "User",
    "VerifyResult",
]
