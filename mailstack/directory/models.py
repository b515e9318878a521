"""SQLAlchemy 2 models of the directory: domains, users, aliases and alias targets.

Invariants kept by the schema (and created by migration 0001, which must stay in step:
`tests/directory/test_migrations.py` compares the two):

- `domains.name` is a normalised domain (lower-case A-label), unique.
- A user is (`domain_id`, `local`): `local` exactly as given, `local_key` its casefold;
  (`domain_id`, `local_key`) is unique, so `Bob@x` and `bob@x` are one mailbox.
- An alias is keyed the same way; `local == ""` is the catch-all `@domain`. Its targets
  are normalised addresses (possibly remote), unique per alias by `target_key`, kept in
  the order given (`position`).
- Foreign keys to `domains` are RESTRICT: rows are deleted explicitly, never by cascade
  from a domain; an alias's targets go with the alias (CASCADE).
- Timestamps are timezone-aware UTC on the Python side on every backend.

Two tables of counters (migration 0002) live here too, so that every process and host
that shares the directory shares them: ``auth_failures`` (the failed-login throttle,
``mailstack.auth.throttle``) and ``sending_usage`` (messages and recipients a user sent
per hour and per day, the submission sending limits). They hold no foreign keys: a key
is a throttle key (``acct:...``, ``net:...``) or a user's address, and stale rows are
swept by age.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = ["AliasRow", "AliasTargetRow", "AuthFailureRow", "Base", "DomainRow", "SendingUsageRow", "UTCDateTime",
           "UserRow", "utcnow"]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC timestamp")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DomainRow(Base):
    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("domain_id", "local_key", name="uq_users_domain_id_local_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="RESTRICT"), index=True)
    local: Mapped[str] = mapped_column(String(64))
    local_key: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    domain: Mapped[DomainRow] = relationship(lazy="joined", innerjoin=True)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("domain_id", "local_key", name="uq_aliases_domain_id_local_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="RESTRICT"), index=True)
    local: Mapped[str] = mapped_column(String(64))  # "" = catch-all @domain
    local_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    domain: Mapped[DomainRow] = relationship(lazy="joined", innerjoin=True)
    targets: Mapped[list[AliasTargetRow]] = relationship(
        back_populates="alias",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="AliasTargetRow.position",
        lazy="selectin",
    )


class AliasTargetRow(Base):
    __tablename__ = "alias_targets"
    __table_args__ = (UniqueConstraint("alias_id", "target_key", name="uq_alias_targets_alias_id_target_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias_id: Mapped[int] = mapped_column(ForeignKey("aliases.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(320))
    target_key: Mapped[str] = mapped_column(String(512))

    alias: Mapped[AliasRow] = relationship(back_populates="targets")


class AuthFailureRow(Base):
    """One throttle key's failed logins (``mailstack.auth.throttle.Record``); times are unix seconds."""

    __tablename__ = "auth_failures"

    key: Mapped[str] = mapped_column(String(600), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure: Mapped[float] = mapped_column(Float)
    blocked_until: Mapped[float] = mapped_column(Float)


class SendingUsageRow(Base):
    """What one user sent in one period: ``period`` is ``h2026120117`` (an hour, UTC) or
    ``d20261201`` (a day); ``messages`` and ``recipients`` accepted on submission."""

    __tablename__ = "sending_usage"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    messages: Mapped[int] = mapped_column(Integer, default=0)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[float] = mapped_column(Float, index=True)  # unix seconds: rows are swept by age
