"""The PostgreSQL directory backed up with pg_dump while in use and restored with
pg_restore into another, empty database on a real PostgreSQL (tests/conftest.py's cluster)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.cli import main
from mailstack.storage import Maildir
from tests.backup.conftest import USERS, make_root, populate
from tests.conftest import PostgresCluster
from tests.helpers import require_tool


@pytest.fixture
def second_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_cluster.admin(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgresql_backup_and_restore(postgres_url: str, second_url: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("pg_dump")
    require_tool("pg_restore")
    old = make_root(tmp_path / "old", db_url=postgres_url)
    populate(old)
    md = Maildir.for_user(old.maildirs, "example.test", "bob")
    md.deliver(b"Subject: hi\n\nhello bob\n")
    reader = old.directory()  # a connection in use while pg_dump runs
    try:
        assert reader.get_user("bob@example.test") is not None
        assert main(["--config", str(old.conf), "backup", str(tmp_path / "bk")]) == 0, capsys.readouterr().err
    finally:
        reader.close()
    snap = (tmp_path / "bk" / "latest").resolve()
    manifest = json.loads((snap / "MANIFEST.json").read_bytes())
    assert manifest["database"] == "postgresql"
    assert (snap / "database" / "directory.pgdump").read_bytes().startswith(b"PGDMP")  # pg_dump's custom format

    new = make_root(tmp_path / "new", db_url=second_url)
    d = new.directory()
    d.migrate()  # an installed-but-empty database (the schema, no rows) counts as empty
    d.close()
    capsys.readouterr()
    assert main(["--config", str(new.conf), "restore", str(tmp_path / "bk")]) == 0, capsys.readouterr().err
    d = new.directory()
    try:
        for address, password in USERS.items():
            assert d.authenticate(address, password) is not None, address
        assert {a.source: a.targets for a in d.list_aliases()}["postmaster@example.test"] == ("alice@example.test",)
        assert not d.needs_migration()
        d.add_user("erin@example.test", "erin-pw")  # ids go on after the restored rows
    finally:
        d.close()
    assert len(list((new.maildirs / "example.test" / "bob" / "new").iterdir())) == 1

    capsys.readouterr()
    assert main(["--config", str(new.conf), "restore", str(tmp_path / "bk")]) == 1
    assert "the database has domains, users or aliases" in capsys.readouterr().err
    assert main(["--config", str(new.conf), "restore", "--force", str(tmp_path / "bk")]) == 0
    d = new.directory()
    try:
        assert d.get_user("erin@example.test") is None
        assert d.authenticate("bob@example.test", USERS["bob@example.test"]) is not None
    finally:
        d.close()


def test_a_sqlite_backup_is_not_restored_into_postgresql(postgres_url: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    old = make_root(tmp_path / "old")
    populate(old)
    assert main(["--config", str(old.conf), "backup", str(tmp_path / "bk")]) == 0
    new = make_root(tmp_path / "new", db_url=postgres_url)
    capsys.readouterr()
    assert main(["--config", str(new.conf), "restore", str(tmp_path / "bk")]) == 1
    err = capsys.readouterr().err
    assert "holds a sqlite database but [database] url is postgresql" in err and err.count("\n") == 1
    assert not (new.base / "mailboxes").exists()
