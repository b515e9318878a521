"""Initial directory schema: domains, users, aliases, alias targets.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Frozen: later changes go in new revisions, never here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_domains"),
        sa.UniqueConstraint("name", name="uq_domains_name"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("local", sa.String(length=64), nullable=False),
        sa.Column("local_key", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name="fk_users_domain_id_domains", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("domain_id", "local_key", name="uq_users_domain_id_local_key"),
    )
    op.create_index("ix_users_domain_id", "users", ["domain_id"])
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("local", sa.String(length=64), nullable=False),
        sa.Column("local_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name="fk_aliases_domain_id_domains", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_aliases"),
        sa.UniqueConstraint("domain_id", "local_key", name="uq_aliases_domain_id_local_key"),
    )
    op.create_index("ix_aliases_domain_id", "aliases", ["domain_id"])
    op.create_table(
        "alias_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=320), nullable=False),
        sa.Column("target_key", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["alias_id"], ["aliases.id"], name="fk_alias_targets_alias_id_aliases", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alias_targets"),
        sa.UniqueConstraint("alias_id", "target_key", name="uq_alias_targets_alias_id_target_key"),
    )
    op.create_index("ix_alias_targets_alias_id", "alias_targets", ["alias_id"])


def downgrade() -> None:
    op.drop_table("alias_targets")
    op.drop_table("aliases")
    op.drop_table("users")
    op.drop_table("domains")
