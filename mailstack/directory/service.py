"""The `Directory`: domains, users, aliases and authentication over one SQLAlchemy database.

Synchronous by design (a lookup is ~0.2 ms; asyncio callers use `asyncio.to_thread`).
Rules it keeps:

- Every mutating method is ONE transaction, and all input is checked (addresses parsed,
  passwords hashed, quotas validated) before the transaction starts: a refused request
  writes nothing. Password hashing never runs while the SQLite write lock is held.
- Addresses are normalised by `mailstack.mail.address.parse_address` (domain lower-case
  A-label; local part stored as given, matched by its casefold). A user's local part
  must be a dot-atom without `/`, because it names a Maildir (`<root>/<domain>/<local>/`);
  an alias source must be a dot-atom, or `@domain` for the domain's catch-all.
- Users and aliases live only in local domains (`NotFound` otherwise). Alias targets are
  any valid addresses, local or remote, kept in the order given, without duplicates
  (compared case-insensitively in the local part).
- An alias may have the same address as a user. As with Postfix's virtual_alias_maps,
  the alias wins: mail is sent to the alias targets (list the address itself among the
  targets to keep a copy in the mailbox). Resolving is delivery's job, not this module's.
- `add_alias` on an existing source adds the new targets (`AlreadyExists` when all of
  them are there already); `remove_alias` removes the given targets, or the whole alias,
  and an alias with no target left is removed.
- `remove_domain` refuses (`Conflict`) while the domain has users or aliases other than
  its catch-all, unless `force=True`, which deletes those rows too. It never touches files
  (Maildirs stay on disk for the admin to archive or delete).
- Lookups (`get_user`, `get_alias`, `is_local_domain`, `authenticate`) answer "not there"
  (None / False) for input that cannot be a valid address; mutators raise `Invalid`.
- `authenticate` is the one password check for SMTP AUTH, IMAP, POP3: None for an
  unknown, disabled or password-less user and for a wrong password, with the same cost
  in all cases; on success an outdated hash is replaced by an argon2id one (compare-and-
  set, so a concurrent password change wins).
- Database trouble (unreachable, locked too long, schema missing) raises
  `DirectoryUnavailable`; constraint races raise `AlreadyExists` or `Conflict`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from alembic.util.exc import CommandError
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from mailstack.directory import migrate as _migrate
from mailstack.directory.engine import create_directory_engine, make_sessions
from mailstack.directory.errors import (
    AlreadyExists,
    Conflict,
    DirectoryError,
    DirectoryUnavailable,
    Invalid,
    NotFound,
)
from mailstack.directory.models import (
    AliasRow,
    AliasTargetRow,
    AuthFailureRow,
    DomainRow,
    SendingUsageRow,
    UserRow,
    utcnow,
)
from mailstack.directory.credcache import CredentialCache
from mailstack.directory.passwords import PasswordError, Passwords
from mailstack.mail.address import Address, AddressError, domain_to_unicode, normalize_domain, parse_address

__all__ = ["Alias", "Directory", "Domain", "User"]

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_QUOTA_BYTES = 2**63 - 1  # BIGINT


@dataclass(frozen=True, slots=True)
class Domain:
    """A local domain; `name` is the normalised (A-label) form."""

    name: str
    created_at: datetime

    @property
    def unicode_name(self) -> str:
        """The name with U-labels, for display (`xn--bcher-kva.example` -> `bücher.example`)."""
        return domain_to_unicode(self.name)


@dataclass(frozen=True, slots=True)
class User:
    """A mailbox user. `address` is `local@domain` with `local` as given at creation."""

    address: str
    local: str
    domain: str
    quota_bytes: int | None
    enabled: bool
    created_at: datetime
    updated_at: datetime
    has_password: bool = True

    @property
    def key(self) -> str:
        """The case-insensitive lookup key (`local.casefold()@domain`)."""
        return f"{self.local.casefold()}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Alias:
    """`source` is `local@domain` or `@domain` (catch-all); targets are normalised addresses."""

    source: str
    targets: tuple[str, ...]

    @property
    def is_catch_all(self) -> bool:
        return self.source.startswith("@")

    @property
    def domain(self) -> str:
        return self.source.rpartition("@")[2]


class _DatabaseSection(Protocol):
    @property
    def url(self) -> str: ...


class _ConfigWithDatabase(Protocol):
    @property
    def database(self) -> _DatabaseSection: ...


class _Retry(Exception):
    """Internal: a constraint race that is worth one more try."""


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _user_value(row: UserRow) -> User:
    address = Address(row.local, row.domain.name)
    return User(
        address=str(address),
        local=row.local,
        domain=row.domain.name,
        quota_bytes=row.quota_bytes,
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        has_password=row.password_hash is not None,
    )


def _alias_value(row: AliasRow) -> Alias:
    source = f"@{row.domain.name}" if row.local == "" else str(Address(row.local, row.domain.name))
    return Alias(source, tuple(t.target for t in row.targets))


def _domain_value(row: DomainRow) -> Domain:
    return Domain(row.name, row.created_at)


class Directory:
    """The directory database. `Directory(url)`; call `migrate()` once at start; `close()` at the end."""

    def __init__(self, url: str, *, passwords: Passwords | None = None,
                 credential_cache: CredentialCache | None = None) -> None:
        try:
            self._engine = create_directory_engine(url)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ValueError) as exc:
            raise Invalid(f"bad database URL: {_first_line(exc)}") from None
        except OSError as exc:
            raise DirectoryUnavailable(f"cannot create the database folder: {exc}") from None
        self._read, self._write = make_sessions(self._engine)
        self._passwords = passwords if passwords is not None else Passwords()
        self.credential_cache = credential_cache

    @classmethod
    def from_config(cls, cfg: _ConfigWithDatabase, *, passwords: Passwords | None = None) -> Directory:
        """A directory on `cfg.database.url`; with an ``[auth]`` section (the full config),
        its argon2id parameters and credential cache too."""
        auth = getattr(cfg, "auth", None)
        cache = None
        if auth is not None:
            if passwords is None:
                argon2 = {k: v for k, v in (("rounds", auth.argon2_time_cost), ("memory_cost", auth.argon2_memory_cost),
                                            ("parallelism", auth.argon2_parallelism)) if v}
                passwords = Passwords(**argon2)
            if auth.cache_ttl > 0 and auth.cache_size > 0:
                cache = CredentialCache(auth.cache_ttl, auth.cache_size)
        return cls(cfg.database.url, passwords=passwords, credential_cache=cache)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tools and tests; other packages should not need it)."""
        return self._engine

    @property
    def passwords(self) -> Passwords:
        return self._passwords

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision; idempotent, safe from several processes at once."""
        try:
            _migrate.upgrade(self._engine)
        except _migrate.MigrationError as exc:
            raise Conflict(str(exc)) from None
        except CommandError as exc:
            # e.g. a database upgraded by a newer mailstack than this one.
            raise DirectoryError(f"cannot migrate the directory database: {_first_line(exc)}") from None
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise DirectoryUnavailable(f"directory database unavailable: {_first_line(exc)}") from None

    def schema_revision(self) -> str | None:
        """The database's schema revision (None if empty)."""
        try:
            with self._engine.connect() as conn:
                return _migrate.current_revision(conn)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise DirectoryUnavailable(f"directory database unavailable: {_first_line(exc)}") from None

    def needs_migration(self) -> bool:
        """True when `migrate()` has something to do."""
        return self.schema_revision() != _migrate.head_revision()

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool, on_integrity: Callable[[], Exception] | None = None) -> Iterator[Session]:
        maker = self._write if write else self._read
        try:
            with maker() as session, session.begin():
                yield session
        except DirectoryError:
            raise
        except sa_exc.IntegrityError as exc:
            if on_integrity is not None:
                raise on_integrity() from None
            raise Conflict(f"database constraint violated: {_first_line(exc)}") from None
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise DirectoryUnavailable(f"directory database unavailable: {_first_line(exc)}") from None

    @staticmethod
    def _normalize_domain(name: str) -> str:
        try:
            return normalize_domain(name)
        except AddressError as exc:
            raise Invalid(str(exc)) from None

    @staticmethod
    def _mailbox_address(address: str | Address) -> Address:
        addr = address if isinstance(address, Address) else _parse(address)
        if not addr.is_dot_atom or "/" in addr.local:
            raise Invalid(f"{addr}: a mailbox name must be a dot-atom without '/' (it names a Maildir folder)")
        return addr

    @staticmethod
    def _alias_source(source: str | Address) -> Address:
        """The alias source as an Address; local "" for the catch-all `@domain`."""
        if isinstance(source, str) and source.strip().startswith("@"):
            domain = source.strip()[1:]
            return Address("", Directory._normalize_domain(domain))
        addr = source if isinstance(source, Address) else _parse(source)
        if not addr.is_dot_atom:
            raise Invalid(f"{addr}: an alias source must be a dot-atom local part or @domain")
        return addr

    @staticmethod
    def _targets(targets: Sequence[str | Address] | str) -> list[Address]:
        items: Sequence[str | Address] = [targets] if isinstance(targets, str) else targets
        result: dict[str, Address] = {}
        for item in items:
            addr = item if isinstance(item, Address) else _parse(item)
            result.setdefault(addr.key, addr)
        if not result:
            raise Invalid("an alias needs at least one target")
        return list(result.values())

    @staticmethod
    def _domain_row(session: Session, name: str) -> DomainRow:
        row = session.scalar(select(DomainRow).where(DomainRow.name == name))
        if row is None:
            raise NotFound(f"domain {name} is not a local domain")
        return row

    @staticmethod
    def _user_row(session: Session, addr: Address, *, lock: bool = False) -> UserRow | None:
        stmt = (
            select(UserRow)
            .join(UserRow.domain)
            .where(DomainRow.name == addr.domain, UserRow.local_key == addr.local_key)
        )
        if lock:
            stmt = stmt.with_for_update(of=UserRow)
        return session.scalar(stmt)

    def _existing_user(self, session: Session, addr: Address) -> UserRow:
        row = self._user_row(session, addr, lock=True)
        if row is None:
            raise NotFound(f"no user {addr}")
        return row

    @staticmethod
    def _alias_row(session: Session, src: Address, *, lock: bool = False) -> AliasRow | None:
        stmt = (
            select(AliasRow)
            .join(AliasRow.domain)
            .where(DomainRow.name == src.domain, AliasRow.local_key == src.local_key)
        )
        if lock:
            stmt = stmt.with_for_update(of=AliasRow)
        return session.scalar(stmt)

    @staticmethod
    def _check_quota(quota_bytes: int | None) -> None:
        if quota_bytes is None:
            return
        if isinstance(quota_bytes, bool) or not isinstance(quota_bytes, int):
            raise Invalid("quota must be a whole number of bytes or None (unlimited)")
        if not 0 < quota_bytes <= MAX_QUOTA_BYTES:
            raise Invalid(f"quota must be between 1 and {MAX_QUOTA_BYTES} bytes, or None (unlimited)")

    def _hash_for(self, password: str | None, password_hash: str | None) -> str | None:
        if password is not None and password_hash is not None:
            raise Invalid("give a password or a password hash, not both")
        try:
            if password is not None:
                return self._passwords.hash(password)
            if password_hash is not None:
                return self._passwords.import_hash(password_hash)
        except PasswordError as exc:
            raise Invalid(str(exc)) from None
        return None

    # -- domains --------------------------------------------------------------------------

    def add_domain(self, name: str) -> Domain:
        """Add a local domain; `AlreadyExists` if it is one."""
        name = self._normalize_domain(name)
        with self._tx(write=True, on_integrity=lambda: AlreadyExists(f"domain {name} already exists")) as s:
            if s.scalar(select(DomainRow.id).where(DomainRow.name == name)) is not None:
                raise AlreadyExists(f"domain {name} already exists")
            row = DomainRow(name=name, created_at=utcnow())
            s.add(row)
            s.flush()
            return _domain_value(row)

    def remove_domain(self, name: str, force: bool = False) -> None:
        """Remove a domain and its catch-all; with users or other aliases only when `force`."""
        name = self._normalize_domain(name)
        with self._tx(write=True) as s:
            row = s.scalar(select(DomainRow).where(DomainRow.name == name).with_for_update())
            if row is None:
                raise NotFound(f"domain {name} is not a local domain")
            users = s.scalar(select(func.count()).select_from(UserRow).where(UserRow.domain_id == row.id)) or 0
            aliases = (
                s.scalar(
                    select(func.count())
                    .select_from(AliasRow)
                    .where(AliasRow.domain_id == row.id, AliasRow.local_key != "")
                )
                or 0
            )
            if (users or aliases) and not force:
                raise Conflict(
                    f"domain {name} still has {users} user(s) and {aliases} alias(es); "
                    "remove them first or force the removal"
                )
            alias_ids = select(AliasRow.id).where(AliasRow.domain_id == row.id)
            s.execute(delete(AliasTargetRow).where(AliasTargetRow.alias_id.in_(alias_ids)))
            s.execute(delete(AliasRow).where(AliasRow.domain_id == row.id))
            s.execute(delete(UserRow).where(UserRow.domain_id == row.id))
            s.execute(delete(DomainRow).where(DomainRow.id == row.id))

    def list_domains(self) -> list[Domain]:
        """Every local domain, by name."""
        with self._tx(write=False) as s:
            return [_domain_value(r) for r in s.scalars(select(DomainRow).order_by(DomainRow.name))]

    def get_domain(self, name: str) -> Domain | None:
        """The local domain of that name, or None (also for a malformed name)."""
        try:
            name = normalize_domain(name)
        except AddressError:
            return None
        with self._tx(write=False) as s:
            row = s.scalar(select(DomainRow).where(DomainRow.name == name))
            return _domain_value(row) if row is not None else None

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for this domain is ours (False for a malformed name)."""
        return self.get_domain(domain) is not None

    # -- users ----------------------------------------------------------------------------

    def add_user(
        self,
        address: str | Address,
        password: str | None,
        quota_bytes: int | None = None,
        *,
        password_hash: str | None = None,
        enabled: bool = True,
    ) -> User:
        """Add a mailbox user. `password=None` and no `password_hash`: the user cannot log in.

        `password_hash` imports a pre-hashed password (Dovecot's `{SCHEME}` forms, see
        `passwords.py`) instead of a password.
        """
        addr = self._mailbox_address(address)
        self._check_quota(quota_bytes)
        stored = self._hash_for(password, password_hash)
        exists = lambda: AlreadyExists(f"user {addr} already exists")  # noqa: E731
        with self._tx(write=True, on_integrity=exists) as s:
            domain = self._domain_row(s, addr.domain)
            existing = self._user_row(s, addr)
            if existing is not None:
                raise AlreadyExists(f"user {_user_value(existing).address} already exists")
            now = utcnow()
            row = UserRow(
                domain_id=domain.id,
                domain=domain,
                local=addr.local,
                local_key=addr.local_key,
                password_hash=stored,
                quota_bytes=quota_bytes,
                enabled=bool(enabled),
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            return _user_value(row)

    def _update_user(self, address: str | Address, change: Callable[[UserRow], None]) -> User:
        addr = _parse_mutating(address)
        with self._tx(write=True) as s:
            row = self._existing_user(s, addr)
            change(row)
            row.updated_at = utcnow()
            s.flush()
            return _user_value(row)

    def set_password(self, address: str | Address, password: str | None, *, password_hash: str | None = None) -> User:
        """Set a new password (or import a hash); `None` for both removes the password (no login)."""
        _parse_mutating(address)
        stored = self._hash_for(password, password_hash)

        def change(row: UserRow) -> None:
            row.password_hash = stored

        return self._update_user(address, change)

    def set_enabled(self, address: str | Address, enabled: bool) -> User:
        """Enable or disable a user: a disabled user cannot log in (mail is still delivered)."""

        def change(row: UserRow) -> None:
            row.enabled = bool(enabled)

        return self._update_user(address, change)

    def set_quota(self, address: str | Address, quota_bytes: int | None) -> User:
        """Set the quota in bytes; None is unlimited."""
        self._check_quota(quota_bytes)

        def change(row: UserRow) -> None:
            row.quota_bytes = quota_bytes

        return self._update_user(address, change)

    def remove_user(self, address: str | Address) -> User:
        """Remove a user (not its Maildir, nor aliases that point to it); returns what was removed."""
        addr = _parse_mutating(address)
        with self._tx(write=True) as s:
            row = self._existing_user(s, addr)
            value = _user_value(row)
            s.delete(row)
            return value

    def get_user(self, address: str | Address) -> User | None:
        """The user with this address (local part compared case-insensitively), or None."""
        addr = _parse_lookup(address)
        if addr is None:
            return None
        with self._tx(write=False) as s:
            row = self._user_row(s, addr)
            return _user_value(row) if row is not None else None

    def list_users(self, domain: str | None = None) -> list[User]:
        """Users of one domain (`NotFound` if not local) or of all, by domain then local part."""
        with self._tx(write=False) as s:
            stmt = select(UserRow).join(UserRow.domain).order_by(DomainRow.name, UserRow.local_key)
            if domain is not None:
                name = self._normalize_domain(domain)
                self._domain_row(s, name)
                stmt = stmt.where(DomainRow.name == name)
            return [_user_value(r) for r in s.scalars(stmt)]

    # -- aliases --------------------------------------------------------------------------

    def add_alias(self, source: str | Address, targets: Sequence[str | Address] | str) -> Alias:
        """Create an alias or add targets to it; `AlreadyExists` when every target is there."""
        src = self._alias_source(source)
        wanted = self._targets(targets)
        for attempt in range(3):
            try:
                return self._add_alias_once(src, wanted)
            except _Retry:
                if attempt == 2:
                    raise Conflict(f"alias {_source_text(src)} changed concurrently; try again") from None
        raise AssertionError("unreachable")

    def _add_alias_once(self, src: Address, wanted: list[Address]) -> Alias:
        with self._tx(write=True, on_integrity=_Retry) as s:
            domain = self._domain_row(s, src.domain)
            row = self._alias_row(s, src, lock=True)
            if row is None:
                row = AliasRow(domain_id=domain.id, domain=domain, local=src.local, local_key=src.local_key)
                row.created_at = utcnow()
                s.add(row)
                s.flush()
            have = {t.target_key for t in row.targets}
            new = [a for a in wanted if a.key not in have]
            if not new:
                raise AlreadyExists(
                    f"alias {_source_text(src)} -> {', '.join(str(a) for a in wanted)} already exists"
                )
            position = max((t.position for t in row.targets), default=-1)
            for addr in new:
                position += 1
                row.targets.append(AliasTargetRow(position=position, target=str(addr), target_key=addr.key))
            s.flush()
            return _alias_value(row)

    def remove_alias(self, source: str | Address, targets: Sequence[str | Address] | str | None = None) -> None:
        """Remove the given targets of an alias, or (targets=None) the whole alias."""
        src = self._alias_source(source)
        drop = None if targets is None else self._targets(targets)
        with self._tx(write=True) as s:
            row = self._alias_row(s, src, lock=True)
            if row is None:
                raise NotFound(f"no alias {_source_text(src)}")
            if drop is not None:
                by_key = {t.target_key: t for t in row.targets}
                missing = [str(a) for a in drop if a.key not in by_key]
                if missing:
                    raise NotFound(f"alias {_source_text(src)} has no target {', '.join(missing)}")
                for addr in drop:
                    row.targets.remove(by_key[addr.key])
                s.flush()
                if row.targets:
                    return
            s.delete(row)

    def get_alias(self, source: str | Address) -> Alias | None:
        """The alias for `local@domain` (case-insensitive local part) or `@domain`, or None."""
        try:
            src = self._alias_source(source)
        except DirectoryError:
            return None
        with self._tx(write=False) as s:
            row = self._alias_row(s, src)
            return _alias_value(row) if row is not None else None

    def list_aliases(self, domain: str | None = None) -> list[Alias]:
        """Aliases of one domain (`NotFound` if not local) or of all; catch-all first per domain."""
        with self._tx(write=False) as s:
            stmt = select(AliasRow).join(AliasRow.domain).order_by(DomainRow.name, AliasRow.local_key)
            if domain is not None:
                name = self._normalize_domain(domain)
                self._domain_row(s, name)
                stmt = stmt.where(DomainRow.name == name)
            return [_alias_value(r) for r in s.scalars(stmt)]

    # -- authentication -------------------------------------------------------------------

    # -- counters shared by every process and host (models: auth_failures, sending_usage) --

    def throttle_records(self, keys: Sequence[str]) -> dict[str, ThrottleRow]:
        """The stored (failures, last_failure, blocked_until) of each of ``keys`` that has one."""
        if not keys:
            return {}
        with self._tx(write=False) as s:
            rows = s.execute(select(AuthFailureRow).where(AuthFailureRow.key.in_(list(keys)))).scalars()
            return {r.key: (r.failures, r.last_failure, r.blocked_until) for r in rows}

    def throttle_update(self, keys: Sequence[str], update_fn: Callable[[str, ThrottleRow | None], ThrottleRow],
                        *, prune_before: float | None = None) -> dict[str, tuple[ThrottleRow | None, ThrottleRow]]:
        """Read-modify-write the records of ``keys`` in one write transaction:
        ``update_fn(key, old or None)`` gives the new record; returns ``{key: (old, new)}``.

        Exact under concurrency on both backends: SQLite's write transaction takes the lock
        first (``BEGIN IMMEDIATE``); on PostgreSQL a missing row is inserted empty
        (``ON CONFLICT DO NOTHING``) and every row is then locked (``FOR UPDATE``) before
        it is read, so two hosts counting a failure at once never lose one.
        ``prune_before``: also delete the records whose last failure and block both ended
        before that time.
        """
        out: dict[str, tuple[ThrottleRow | None, ThrottleRow]] = {}
        if not keys:
            return out
        ordered = sorted(set(keys))  # one lock order for every writer: no deadlock
        with self._tx(write=True) as s:
            s.execute(_insert_ignore(s, AuthFailureRow, [
                {"key": k, "failures": 0, "last_failure": 0.0, "blocked_until": 0.0} for k in ordered]))
            rows = {r.key: r for r in s.execute(
                select(AuthFailureRow).where(AuthFailureRow.key.in_(ordered)).order_by(AuthFailureRow.key)
                .with_for_update()).scalars()}
            for key in keys:
                row = rows[key]
                old = None if row.failures == 0 else (row.failures, row.last_failure, row.blocked_until)
                new = update_fn(key, old)
                row.failures, row.last_failure, row.blocked_until = new
                out[key] = (old, new)
            s.flush()  # the new values first: the sweep must see them, not the empty placeholders
            if prune_before is not None:
                s.execute(delete(AuthFailureRow).where(AuthFailureRow.last_failure < prune_before,
                                                       AuthFailureRow.blocked_until < prune_before))
        return out

    def throttle_clear(self, key: str) -> None:
        """Forget one throttle key (the account of a successful login)."""
        with self._tx(write=True) as s:
            s.execute(delete(AuthFailureRow).where(AuthFailureRow.key == key))

    def sending_usage(self, address: str, periods: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(messages, recipients) ``address`` sent in each of ``periods`` (missing: none sent)."""
        with self._tx(write=False) as s:
            rows = s.execute(select(SendingUsageRow).where(SendingUsageRow.address == address,
                                                           SendingUsageRow.period.in_(list(periods)))).scalars()
            return {r.period: (r.messages, r.recipients) for r in rows}

    def add_sending_usage(self, address: str, periods: Sequence[str], messages: int, recipients: int, now: float,
                          *, prune_before: float | None = None) -> None:
        """Add to the counts of ``address`` in each of ``periods``, atomically (an upsert
        that adds, on SQLite and PostgreSQL alike); ``prune_before`` sweeps older rows."""
        with self._tx(write=True) as s:
            for period in periods:
                s.execute(_upsert_add(s, address, period, messages, recipients, now))
            if prune_before is not None:
                s.execute(delete(SendingUsageRow).where(SendingUsageRow.updated < prune_before))

    def authenticate(self, address: str | Address, password: str) -> User | None:
        """The user if the password is right and the user enabled; else None. CPU-bound: use a thread."""
        addr = _parse_lookup(address)
        row: UserRow | None = None
        if addr is not None:
            with self._tx(write=False) as s:
                row = self._user_row(s, addr)
        if row is None or not row.enabled or row.password_hash is None:
            self._passwords.dummy_verify()
            return None
        old_hash = row.password_hash
        cache = self.credential_cache
        if cache is not None and cache.verified(row.id, password, old_hash):
            return _user_value(row)  # verified minutes ago against this very hash (credcache)
        result = self._passwords.verify(password, old_hash)
        if not result.ok:
            return None
        if result.new_hash is not None:
            self._rehash(row.id, old_hash, result.new_hash)
        if cache is not None:
            cache.remember(row.id, password, result.new_hash or old_hash)
        return _user_value(row)

    def _rehash(self, user_id: int, old_hash: str, new_hash: str) -> None:
        try:
            with self._tx(write=True) as s:
                s.execute(
                    update(UserRow)
                    .where(UserRow.id == user_id, UserRow.password_hash == old_hash)
                    .values(password_hash=new_hash)
                )
        except DirectoryError as exc:  # the login succeeded; the upgrade can wait for the next one
            log.warning("could not store the upgraded password hash of user %d: %s", user_id, exc)
        else:
            log.info("upgraded the password hash of user %d to the default scheme", user_id)


ThrottleRow = tuple[int, float, float]  # failures, last_failure, blocked_until (unix seconds)


def _dialect_insert(s: Session) -> Any:
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def _insert_ignore(s: Session, model: Any, rows: list[dict[str, Any]]) -> Any:
    return _dialect_insert(s)(model).values(rows).on_conflict_do_nothing()


def _upsert_add(s: Session, address: str, period: str, messages: int, recipients: int, now: float) -> Any:
    stmt = _dialect_insert(s)(SendingUsageRow).values(address=address, period=period, messages=messages,
                                                      recipients=recipients, updated=now)
    return stmt.on_conflict_do_update(
        index_elements=[SendingUsageRow.address, SendingUsageRow.period],
        set_={"messages": SendingUsageRow.messages + stmt.excluded.messages,
              "recipients": SendingUsageRow.recipients + stmt.excluded.recipients,
              "updated": stmt.excluded.updated})


def _parse(text: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise Invalid(str(exc)) from None


def _parse_mutating(address: str | Address) -> Address:
    return address if isinstance(address, Address) else _parse(address)


def _parse_lookup(address: str | Address) -> Address | None:
    if isinstance(address, Address):
        return address
    try:
        return parse_address(address)
    except AddressError:
        return None


def _source_text(src: Address) -> str:
    return f"@{src.domain}" if src.local == "" else str(src)
