"""Counters shared by every process and host: the failed-login throttle, sending usage.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Frozen: later changes go in new revisions, never here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_failures",
        sa.Column("key", sa.String(length=600), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure", sa.Float(), nullable=False),
        sa.Column("blocked_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_auth_failures"),
    )
    op.create_table(
        "sending_usage",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("address", "period", name="pk_sending_usage"),
    )
    op.create_index("ix_sending_usage_updated", "sending_usage", ["updated"])


def downgrade() -> None:
    op.drop_table("sending_usage")
    op.drop_table("auth_failures")
