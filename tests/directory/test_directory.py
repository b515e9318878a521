"""Directory CRUD and every refusal, on SQLite and on a real PostgreSQL (see conftest)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timezone

import pytest
from sqlalchemy import func, select

from mailstack.directory import (
    Alias,
    AlreadyExists,
    Conflict,
    Directory,
    DirectoryError,
    DirectoryUnavailable,
    Invalid,
    NotFound,
    Passwords,
)
from mailstack.directory.models import AliasTargetRow, UserRow
from mailstack.mail.address import parse_address
from tests.helpers import free_port


def count(d: Directory, model: type) -> int:
    with d.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)) or 0)


# -- domains ----------------------------------------------------------------------------


def test_domains_crud(directory: Directory) -> None:
    dom = directory.add_domain("Example.ORG")
    assert dom.name == "example.org"
    assert dom.created_at.tzinfo is not None and dom.created_at.utcoffset() == timezone.utc.utcoffset(None)
    directory.add_domain("bücher.example")
    assert [d.name for d in directory.list_domains()] == ["example.org", "xn--bcher-kva.example"]
    assert directory.list_domains()[1].unicode_name == "bücher.example"
    assert directory.is_local_domain("EXAMPLE.org")
    assert directory.is_local_domain("xn--bcher-kva.example")
    assert directory.is_local_domain("BÜCHER.example")
    assert not directory.is_local_domain("other.org")
    assert not directory.is_local_domain("not a domain")
    directory.remove_domain("example.org")
    assert [d.name for d in directory.list_domains()] == ["xn--bcher-kva.example"]


def test_domain_errors(directory: Directory) -> None:
    directory.add_domain("example.org")
    with pytest.raises(AlreadyExists, match="example.org"):
        directory.add_domain("EXAMPLE.org")
    with pytest.raises(NotFound):
        directory.remove_domain("other.org")
    for bad in ("", "exa mple.org", "-x.org", "[192.0.2.1]", "example.org."):
        with pytest.raises(Invalid):
            directory.add_domain(bad)
    assert len(directory.list_domains()) == 1


def test_remove_domain_with_users_or_aliases_needs_force(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_domain("keep.org")
    directory.add_user("bob@example.org", "pw")
    directory.add_user("bob@keep.org", "pw")
    directory.add_alias("info@example.org", ["bob@example.org"])
    directory.add_alias("@example.org", ["bob@example.org"])
    with pytest.raises(Conflict, match="1 user.*1 alias"):
        directory.remove_domain("example.org")
    assert directory.get_user("bob@example.org") is not None  # nothing was written
    directory.remove_domain("example.org", force=True)
    assert not directory.is_local_domain("example.org")
    assert [u.address for u in directory.list_users()] == ["bob@keep.org"]
    assert directory.list_aliases() == []
    assert count(directory, AliasTargetRow) == 0


def test_catch_all_alone_does_not_block_domain_removal(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_alias("@example.org", ["someone@remote.net"])
    directory.remove_domain("example.org")
    assert directory.get_alias("@example.org") is None
    directory.add_domain("example.org")  # comes back empty
    assert directory.list_aliases("example.org") == []


# -- users ------------------------------------------------------------------------------


def test_user_crud(directory: Directory) -> None:
    directory.add_domain("example.org")
    user = directory.add_user("Bob.Smith@Example.org", "secret", 500 * 2**20)
    assert user.address == "Bob.Smith@example.org"
    assert (user.local, user.domain, user.quota_bytes, user.enabled) == ("Bob.Smith", "example.org", 524288000, True)
    assert user.created_at.tzinfo is not None and user.has_password
    # case-insensitive lookup, the local part as given is kept
    for spelling in ("bob.smith@example.org", "BOB.SMITH@EXAMPLE.ORG", parse_address("bOb.smith@example.org")):
        found = directory.get_user(spelling)
        assert found is not None and found.local == "Bob.Smith"
    assert directory.get_user("nobody@example.org") is None
    assert directory.get_user("not an address") is None
    assert directory.get_user("bob.smith@other.org") is None

    assert directory.set_quota("bob.smith@example.org", None).quota_bytes is None
    assert directory.set_quota("bob.smith@example.org", 1).quota_bytes == 1
    updated = directory.set_enabled("BOB.smith@example.org", False)
    assert not updated.enabled and updated.updated_at >= user.updated_at
    assert directory.authenticate("bob.smith@example.org", "secret") is None  # disabled
    directory.set_enabled("bob.smith@example.org", True)
    assert directory.authenticate("bob.smith@example.org", "secret") is not None

    directory.add_user("alice@example.org", None)
    assert [u.local for u in directory.list_users("example.org")] == ["alice", "Bob.Smith"]
    assert [u.local for u in directory.list_users()] == ["alice", "Bob.Smith"]
    removed = directory.remove_user("bob.SMITH@example.org")
    assert removed.address == "Bob.Smith@example.org"
    assert directory.get_user("bob.smith@example.org") is None
    assert [u.local for u in directory.list_users()] == ["alice"]


def test_user_errors_write_nothing(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_user("bob@example.org", "pw")
    with pytest.raises(AlreadyExists, match="bob@example.org"):
        directory.add_user("BOB@example.org", "pw")
    with pytest.raises(NotFound, match="other.org"):
        directory.add_user("bob@other.org", "pw")
    for bad in ("bob", "bob@", "a b@example.org", '"a b"@example.org', "a/b@example.org", "x" * 65 + "@example.org"):
        with pytest.raises(Invalid):
            directory.add_user(bad, "pw")
    for quota in (0, -1, True, 1.5, 2**63):
        with pytest.raises(Invalid):
            directory.add_user("carol@example.org", "pw", quota)  # type: ignore[arg-type]
        with pytest.raises(Invalid):
            directory.set_quota("bob@example.org", quota)  # type: ignore[arg-type]
    with pytest.raises(Invalid):
        directory.add_user("carol@example.org", "")  # empty password
    with pytest.raises(Invalid):
        directory.add_user("carol@example.org", "pw", password_hash="$6$x$y")  # both
    with pytest.raises(Invalid):
        directory.add_user("carol@example.org", None, password_hash="{MD5}abc")
    assert [u.local for u in directory.list_users()] == ["bob"]
    assert count(directory, UserRow) == 1
    ops: list[Callable[[], object]] = [
        lambda: directory.set_password("nobody@example.org", "pw"),
        lambda: directory.set_enabled("nobody@example.org", False),
        lambda: directory.set_quota("nobody@example.org", 5),
        lambda: directory.remove_user("nobody@example.org"),
    ]
    for op in ops:
        with pytest.raises(NotFound, match="nobody@example.org"):
            op()
    with pytest.raises(NotFound):
        directory.list_users("other.org")
    with pytest.raises(Invalid):
        directory.list_users("bad domain")
    with pytest.raises(Invalid):
        directory.remove_user("not an address")


def test_idna_and_smtputf8_users(directory: Directory) -> None:
    directory.add_domain("bücher.example")
    user = directory.add_user("Jörg@BÜCHER.example", "pässwörd")
    assert user.address == "Jörg@xn--bcher-kva.example"
    assert user.domain == "xn--bcher-kva.example"
    assert directory.get_user("jörg@xn--bcher-kva.example") == user
    assert directory.get_user("JÖRG@bücher.example") == user
    assert directory.authenticate("jörg@bücher.example", "pässwörd") == user
    directory.add_user("用户@bücher.example", "pw")
    assert directory.get_user("用户@xn--bcher-kva.example") is not None


def test_user_without_password_cannot_log_in(directory: Directory) -> None:
    directory.add_domain("example.org")
    user = directory.add_user("nologin@example.org", None)
    assert not user.has_password
    assert directory.authenticate("nologin@example.org", "") is None
    assert directory.authenticate("nologin@example.org", "anything") is None
    assert directory.set_password("nologin@example.org", "pw").has_password
    assert directory.authenticate("nologin@example.org", "pw") is not None
    assert not directory.set_password("nologin@example.org", None).has_password
    assert directory.authenticate("nologin@example.org", "pw") is None


def test_authenticate(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_user("bob@example.org", "correct horse")
    assert directory.authenticate("bob@example.org", "correct horse") is not None
    assert directory.authenticate("BOB@Example.Org", "correct horse") is not None
    assert directory.authenticate("bob@example.org", "Correct horse") is None
    assert directory.authenticate("bob@example.org", "") is None
    assert directory.authenticate("nobody@example.org", "correct horse") is None
    assert directory.authenticate("bob@other.org", "correct horse") is None
    assert directory.authenticate("garbage", "correct horse") is None
    assert directory.authenticate("bob@example.org", "x" * 10000) is None
    directory.set_password("bob@example.org", "new one")
    assert directory.authenticate("bob@example.org", "correct horse") is None
    assert directory.authenticate("bob@example.org", "new one") is not None


# -- aliases ----------------------------------------------------------------------------


def test_alias_crud(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_domain("bücher.example")
    alias = directory.add_alias("Info@Example.org", ["bob@example.org", "Someone@Remote.NET", "x@bücher.example"])
    assert alias == Alias("Info@example.org", ("bob@example.org", "Someone@remote.net", "x@xn--bcher-kva.example"))
    assert directory.get_alias("info@EXAMPLE.org") == alias  # case-insensitive
    # adding more targets extends, duplicates (case-insensitive local part) are skipped
    more = directory.add_alias("info@example.org", ["someone@remote.net", "carol@example.org"])
    assert more.targets == ("bob@example.org", "Someone@remote.net", "x@xn--bcher-kva.example", "carol@example.org")
    with pytest.raises(AlreadyExists):
        directory.add_alias("info@example.org", ["BOB@example.org"])
    # a single string is one target, not a list of characters
    assert directory.add_alias("one@example.org", "dest@remote.net").targets == ("dest@remote.net",)
    catch_all = directory.add_alias("@EXAMPLE.org", ["bob@example.org"])
    assert catch_all.source == "@example.org" and catch_all.is_catch_all and catch_all.domain == "example.org"
    assert directory.get_alias("@example.org") == catch_all
    assert [a.source for a in directory.list_aliases("example.org")] == [
        "@example.org",
        "Info@example.org",
        "one@example.org",
    ]
    assert len(directory.list_aliases()) == 3
    assert directory.list_aliases("bücher.example") == []

    directory.remove_alias("info@example.org", ["SOMEONE@remote.net"])
    assert directory.get_alias("info@example.org") == Alias(
        "Info@example.org", ("bob@example.org", "x@xn--bcher-kva.example", "carol@example.org")
    )
    directory.remove_alias("info@example.org", ["bob@example.org", "x@bücher.example", "carol@example.org"])
    assert directory.get_alias("info@example.org") is None  # no target left: gone
    directory.remove_alias("@example.org")
    assert directory.get_alias("@example.org") is None
    assert count(directory, AliasTargetRow) == 1


def test_alias_errors_write_nothing(directory: Directory) -> None:
    directory.add_domain("example.org")
    directory.add_alias("info@example.org", ["bob@example.org"])
    with pytest.raises(NotFound, match="other.org"):
        directory.add_alias("info@other.org", ["bob@example.org"])
    with pytest.raises(NotFound):
        directory.add_alias("@other.org", ["bob@example.org"])
    with pytest.raises(Invalid):
        directory.add_alias("info@example.org", [])
    with pytest.raises(Invalid):
        directory.add_alias("info@example.org", ["good@example.org", "bad address"])
    with pytest.raises(Invalid):
        directory.add_alias("not an address", ["bob@example.org"])
    with pytest.raises(Invalid):
        directory.add_alias("@bad domain", ["bob@example.org"])
    assert directory.get_alias("info@example.org") == Alias("info@example.org", ("bob@example.org",))
    with pytest.raises(NotFound):
        directory.remove_alias("nothing@example.org")
    with pytest.raises(NotFound, match="carol@example.org"):
        directory.remove_alias("info@example.org", ["bob@example.org", "carol@example.org"])
    assert directory.get_alias("info@example.org") == Alias("info@example.org", ("bob@example.org",))
    assert directory.get_alias("bad address") is None
    assert directory.get_alias("@bad domain") is None
    with pytest.raises(NotFound):
        directory.list_aliases("other.org")


def test_alias_may_shadow_a_user(directory: Directory) -> None:
    """Postfix virtual alias semantics: both exist; delivery lets the alias win."""
    directory.add_domain("example.org")
    directory.add_user("bob@example.org", "pw")
    alias = directory.add_alias("bob@example.org", ["bob@example.org", "archive@remote.net"])
    assert directory.get_user("bob@example.org") is not None
    assert directory.get_alias("bob@example.org") == alias


# -- errors and availability ------------------------------------------------------------


def test_errors_are_one_line(directory: Directory) -> None:
    directory.add_domain("example.org")
    with pytest.raises(DirectoryError) as info:
        directory.add_domain("example.org")
    assert "\n" not in str(info.value) and str(info.value)
    assert str(Invalid("a\nb")) == "a b"


def test_bad_url_is_invalid() -> None:
    with pytest.raises(Invalid):
        Directory("this is not a url")
    with pytest.raises(Invalid):
        Directory("nosuchdialect://x/y")


def test_unreachable_database_is_unavailable(tmp_path: object) -> None:
    port = free_port()
    d = Directory(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none?connect_timeout=2", passwords=Passwords.fast())
    try:
        with pytest.raises(DirectoryUnavailable):
            d.migrate()
        with pytest.raises(DirectoryUnavailable):
            d.get_user("bob@example.org")
        with pytest.raises(DirectoryUnavailable):
            d.authenticate("bob@example.org", "pw")
        with pytest.raises(DirectoryUnavailable):
            d.add_domain("example.org")
    finally:
        d.close()


def test_unmigrated_database_is_unavailable(directory_url: str) -> None:
    d = Directory(directory_url, passwords=Passwords.fast())
    try:
        assert d.needs_migration() and d.schema_revision() is None
        with pytest.raises(DirectoryUnavailable):
            d.list_domains()
        d.migrate()
        assert not d.needs_migration()
        assert d.list_domains() == []
    finally:
        d.close()


def test_sqlite_pragmas(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with Directory(f"sqlite:///{tmp_path / 'a' / 'b' / 'd.db'}") as d:
        d.migrate()
        with d.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert (tmp_path / "a" / "b" / "d.db").exists()


def test_sqlite_in_memory_works(tmp_path: object) -> None:
    with Directory("sqlite://", passwords=Passwords.fast()) as d:
        d.migrate()
        d.add_domain("example.org")
        assert d.is_local_domain("example.org")
