"""Alembic migrations: empty -> head, models and migrations agree, and an upgrade keeps every user."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from mailstack.directory import Directory, DirectoryError, Passwords
from mailstack.directory import migrate as migrations
from mailstack.directory.models import Base

# A later revision as a future developer would write it: it adds columns and, on SQLite,
# rebuilds the parent table `domains` and `users` (batch mode copies them), which with
# foreign keys on would delete or refuse the children.
REVISION_NEXT = '''
"""test: add columns, rebuilding tables on SQLite"""
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    recreate = "always" if op.get_context().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("domains", recreate=recreate) as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    with op.batch_alter_table("users", recreate=recreate) as batch:
        batch.add_column(sa.Column("display_name", sa.String(200), nullable=True))


def downgrade() -> None:
    pass
'''


def tables(d: Directory) -> set[str]:
    return set(inspect(d.engine).get_table_names())


def test_empty_database_to_head(directory_url: str) -> None:
    with Directory(directory_url, passwords=Passwords.fast()) as d:
        assert tables(d) == set()
        d.migrate()
        assert tables(d) == {"alembic_version", "domains", "users", "aliases", "alias_targets", "auth_failures",
                             "sending_usage"}
        assert d.schema_revision() == migrations.head_revision() == "0002"
        d.migrate()  # idempotent
        assert d.schema_revision() == "0002"


def test_models_match_the_migrations(directory_url: str) -> None:
    with Directory(directory_url) as d:
        d.migrate()
        with d.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], diff


def test_upgrade_keeps_users_aliases_and_passwords(directory_url: str, tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(migrations.SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_test.py").write_text(REVISION_NEXT.replace("{head}", migrations.head_revision() or ""))
    assert migrations.head_revision(scripts) == "9999"

    with Directory(directory_url, passwords=Passwords.fast()) as d:
        migrations.upgrade(d.engine, "0001", script_location=scripts)
        assert d.schema_revision() == "0001"
        d.add_domain("example.org")
        d.add_domain("bücher.example")
        before = [
            d.add_user("Bob@example.org", "pw-bob", 10**9),
            d.add_user("jörg@bücher.example", "pw-jörg"),
            d.add_user("off@example.org", "pw-off", enabled=False),
        ]
        aliases = [d.add_alias("@example.org", ["bob@example.org"]), d.add_alias("x@example.org", ["a@b.net", "c@d.net"])]

        migrations.upgrade(d.engine, "head", script_location=scripts)

        assert d.schema_revision() == "9999"
        columns = {c["name"] for c in inspect(d.engine).get_columns("users")}
        assert "display_name" in columns
        assert d.list_users() == sorted(before, key=lambda u: (u.domain, u.local.casefold()))
        assert d.list_aliases() == aliases
        assert [dom.name for dom in d.list_domains()] == ["example.org", "xn--bcher-kva.example"]
        assert d.authenticate("bob@example.org", "pw-bob") is not None
        assert d.authenticate("jörg@bücher.example", "pw-jörg") is not None
        assert d.authenticate("off@example.org", "pw-off") is None
        # foreign keys are back on and still enforced after the rebuild
        d.remove_domain("bücher.example", force=True)
        assert [u.local for u in d.list_users()] == ["Bob", "off"]


def test_unknown_revision_in_database_is_refused(directory_url: str) -> None:
    with Directory(directory_url) as d:
        d.migrate()
        with d.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
        with pytest.raises(DirectoryError, match="ffff"):
            d.migrate()
