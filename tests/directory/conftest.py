"""Directory fixtures: every test that takes `directory_url` / `directory` runs on SQLite AND PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.directory import Directory, Passwords


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def directory_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        # A folder that does not exist yet: the engine must create it.
        return f"sqlite:///{tmp_path / 'var' / 'mailstack.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def directory(directory_url: str) -> Iterator[Directory]:
    """A migrated, empty directory with cheap argon2 parameters."""
    d = Directory(directory_url, passwords=Passwords.fast())
    d.migrate()
    try:
        yield d
    finally:
        d.close()
