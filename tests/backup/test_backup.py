"""`mailstack backup` / `restore` through the CLI on real files and a real SQLite directory:
what a snapshot holds and leaves out, damaged backups refused with nothing written,
non-empty roots refused unless --force, incremental snapshots by hard links."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mailstack import net
from mailstack.cli import main
from mailstack.queue import QueueStore
from mailstack.storage import Maildir
from tests.backup.conftest import USERS, Root, make_root, populate


def run(root: Root, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["--config", str(root.conf), *args])
    out, err = capsys.readouterr()
    return status, out, err


def _mail(root: Root) -> Maildir:
    """alice's Maildir with 4 messages (one flagged with a keyword, one in a folder),
    Pigeonhole's sieve layout, the files IMAP leaves next to the mail, and a queued message."""
    md = Maildir.for_user(root.maildirs, "example.test", "alice")
    md.ensure()
    for n in range(3):
        md.deliver(f"Subject: {n}\n\nbody {n}\n".encode())
    inbox = md.folder("INBOX")
    state = inbox.sync()
    inbox.update_flags(state.messages[0].uid, add={"\\Flagged"}, add_keywords=["$Label1"])
    md.create_folder("Projects")
    md.subscribe("Projects")
    md.folder("Projects").append(b"Subject: p\n\nproject\n", {"\\Seen"}, 1262347200.0)
    (md.root / "mailstack-index.sqlite").write_bytes(b"a cache")
    (md.root / "mailstack-index.sqlite-wal").write_bytes(b"a cache")
    (md.root / "mailstack-modseq").write_bytes(b"8192\n")
    (md.root / "dovecot-uidlist.lock").write_bytes(b"1:host")
    (md.root / "tmp" / "1.M1P1.x").write_bytes(b"half a message")
    (md.root / "sieve").mkdir()
    (md.root / "sieve" / "main.sieve").write_bytes(b'require "fileinto";\nfileinto "Projects";\n')
    os.symlink("sieve/main.sieve", md.root / ".dovecot.sieve")
    QueueStore(root.config.queue.dir).enqueue("alice@example.test", ["carol@elsewhere.test"], b"Subject: q\r\n\r\nq\r\n")
    return md


@pytest.fixture
def old(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Root:
    root = make_root(tmp_path / "old")
    populate(root)
    _mail(root)
    assert run(root, capsys, "dkim", "keygen", "example.test")[0] == 0
    from mailstack.mail.forward import load_secret

    load_secret(root.config.queue.dkim_dir)  # the SRS secret, made by the first forward
    (root.base / "var" / "tls").mkdir(mode=0o700)
    (root.base / "var" / "tls" / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nx\n")
    (root.base / "var" / "tls" / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nx\n")
    return root


def tree(path: Path) -> dict[str, bytes | str | None]:
    """Every file (its bytes), link (its target) and folder (None) under path."""
    out: dict[str, bytes | str | None] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = os.readlink(p) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
    return out


def test_snapshot_holds_everything_but_caches_and_locks(old: Root, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(old, capsys, "backup", str(tmp_path / "bk"))
    assert status == 0, err
    snap = tmp_path / "bk" / "latest"
    paths = {f["path"] for f in json.loads((snap / "MANIFEST.json").read_bytes())["files"]}
    user = "maildirs/example.test/alice"
    for kept in ("dovecot-uidlist", "dovecot-keywords", "dovecot-uidvalidity", "subscriptions", "maildirsize",
                 "mailstack-modseq", "sieve/main.sieve", ".Projects/dovecot-uidlist", ".Projects/maildirfolder"):
        assert f"{user}/{kept}" in paths, kept
    for left_out in ("mailstack-index.sqlite", "mailstack-index.sqlite-wal", "dovecot-uidlist.lock", "tmp/1.M1P1.x"):
        assert f"{user}/{left_out}" not in paths, left_out
    assert os.readlink(snap / user / ".dovecot.sieve") == "sieve/main.sieve"
    assert sum(1 for p in paths if p.startswith("queue/")) == 2  # one .msg + its .env
    assert "dkim/example.test/mail.key" in paths and "dkim/srs.secret" in paths and "tls/key.pem" in paths and "tls/cert.pem" in paths
    assert "database/directory.sqlite" in paths and "config/mailstack.toml" in paths
    assert oct((snap / "database" / "directory.sqlite").stat().st_mode & 0o777) == "0o600"


def test_the_per_hostname_certificates_are_backed_up_and_restored(old: Root, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    tls = old.config.tls
    key, cert = net._self_signed("mta-sts.example.test")
    net.install_certificate(tls, "mta-sts.example.test", cert, key)
    status, _, err = run(old, capsys, "backup", str(tmp_path / "bk"))
    assert status == 0, err
    new = make_root(tmp_path / "new")
    status, _, err = run(new, capsys, "restore", str(tmp_path / "bk"))
    assert status == 0, err
    got = net.certificate_dir(new.config.tls) / "mta-sts.example.test"
    assert (got / "key.pem").read_bytes() == key and (got / "cert.pem").read_bytes() == cert
    assert oct((got / "key.pem").stat().st_mode & 0o777) == "0o600"


def test_restore_onto_an_empty_root_gives_the_same_installation(old: Root, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run(old, capsys, "backup", str(tmp_path / "bk"))[0] == 0
    new = make_root(tmp_path / "new")
    status, out, err = run(new, capsys, "restore", str(tmp_path / "bk"))
    assert status == 0, err
    # the mail, byte for byte and link for link (caches, locks and tmp/ files left behind)
    skip = {"mailstack-index.sqlite", "mailstack-index.sqlite-wal", "dovecot-uidlist.lock", "tmp/1.M1P1.x"}
    expected = {k: v for k, v in tree(old.maildirs).items() if not any(k.endswith(s) for s in skip)}
    assert tree(new.maildirs) == expected
    for p in old.maildirs.rglob("*"):  # INTERNALDATE is the mtime
        if p.parent.name in ("cur", "new"):
            assert (new.maildirs / p.relative_to(old.maildirs)).stat().st_mtime_ns == p.stat().st_mtime_ns
    assert tree(new.base / "var" / "queue") == {k: v for k, v in tree(old.base / "var" / "queue").items()
                                                if not k.startswith(".")}
    assert tree(new.base / "var" / "dkim") == tree(old.base / "var" / "dkim")
    assert (new.base / "var" / "tls" / "key.pem").read_bytes() == (old.base / "var" / "tls" / "key.pem").read_bytes()
    # the config given to restore is untouched; the backed-up one lies beside it
    assert (new.base / "etc" / "mailstack.toml.from-backup").read_bytes() == old.conf.read_bytes()
    assert new.conf.read_text() != old.conf.read_text()
    d = new.directory()
    try:
        for address, password in USERS.items():
            assert d.authenticate(address, password) is not None, address
        assert d.authenticate("alice@example.test", "wrong") is None
        assert [(a.source, a.targets) for a in d.list_aliases()] == [
            ("postmaster@example.test", ("alice@example.test",)),
            ("team@example.test", ("alice@example.test", "bob@example.test", "carol@elsewhere.test"))]
    finally:
        d.close()
    # UIDVALIDITY, UIDs and flags as before
    a = Maildir.for_user(old.maildirs, "example.test", "alice").folder("INBOX").sync()
    b = Maildir.for_user(new.maildirs, "example.test", "alice").folder("INBOX").sync()
    assert (b.uidvalidity, b.uidnext) == (a.uidvalidity, a.uidnext)
    assert [(m.uid, m.flags, m.keywords, m.internaldate) for m in b.messages] == \
        [(m.uid, m.flags, m.keywords, m.internaldate) for m in a.messages]


def _damage_flip(snap: Path) -> None:
    victim = next((snap / "maildirs" / "example.test" / "alice" / "cur").iterdir())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))


def _damage_missing(snap: Path) -> None:
    (snap / "dkim" / "example.test" / "mail.key").unlink()


def _damage_manifest(snap: Path) -> None:
    manifest = json.loads((snap / "MANIFEST.json").read_bytes())
    manifest["files"][0]["mtime_ns"] += 1
    (snap / "MANIFEST.json").write_text(json.dumps(manifest))


def _damage_manifest_gone(snap: Path) -> None:
    (snap / "MANIFEST.json").unlink()


def _damage_database(snap: Path) -> None:
    with open(snap / "database" / "directory.sqlite", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")


@pytest.mark.parametrize("damage", [_damage_flip, _damage_missing, _damage_manifest, _damage_manifest_gone,
                                    _damage_database])
def test_a_damaged_backup_is_refused_with_nothing_written(damage, old: Root, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(old, capsys, "backup", str(tmp_path / "bk"))[0] == 0
    snap = (tmp_path / "bk" / "latest").resolve()
    damage(snap)
    new = make_root(tmp_path / "new")
    before = tree(new.base)
    status, out, err = run(new, capsys, "restore", str(snap))
    assert status == 1
    assert err.count("\n") == 1 and "damaged backup" in err, err
    assert "Traceback" not in err
    assert tree(new.base) == before  # not a file, not a folder, not a database


def test_restore_onto_a_root_that_is_not_empty_needs_force(old: Root, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run(old, capsys, "backup", str(tmp_path / "bk"))[0] == 0
    new = make_root(tmp_path / "new")
    assert run(new, capsys, "restore", str(tmp_path / "bk"))[0] == 0
    # the new machine lives on: a user added, a message's flags changed, a new message
    d = new.directory()
    try:
        d.add_user("dave@example.test", "dave-pw")
    finally:
        d.close()
    md = Maildir.for_user(new.maildirs, "example.test", "alice")
    inbox = md.folder("INBOX")
    first = inbox.sync().messages[0]
    inbox.update_flags(first.uid, add={"\\Seen"})
    md.deliver(b"Subject: later\n\nafter the restore\n")
    before = tree(new.base)

    status, out, err = run(new, capsys, "restore", str(tmp_path / "bk"))
    assert status == 1
    assert "not an empty root" in err and "--force" in err and err.count("\n") == 1, err
    assert tree(new.base) == before

    status, out, err = run(new, capsys, "restore", "--force", str(tmp_path / "bk"))
    assert status == 0, err
    d = new.directory()
    try:
        assert d.get_user("dave@example.test") is None  # the database is the backup's again
        assert d.authenticate("alice@example.test", USERS["alice@example.test"]) is not None
    finally:
        d.close()
    # each message once, with the backup's flags; the later message kept
    cur = sorted(os.listdir(md.root / "cur")) + sorted(os.listdir(md.root / "new"))
    bases = [n.partition(":")[0] for n in cur]
    assert len(bases) == len(set(bases)) == 4
    state = md.folder("INBOX").sync()
    restored_first = state.get(first.uid)
    assert restored_first is not None and "\\Seen" not in restored_first.flags
    assert "\\Flagged" in restored_first.flags


def test_incremental_backup_hard_links_what_did_not_change(old: Root, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "bk"
    assert run(old, capsys, "backup", str(dest))[0] == 0
    first = (dest / "latest").resolve()
    md = Maildir.for_user(old.maildirs, "example.test", "alice")
    inbox = md.folder("INBOX")
    state = inbox.sync()
    renamed = state.messages[1]
    inbox.update_flags(renamed.uid, add={"\\Seen"})  # a flag change renames the file
    md.deliver(b"Subject: new\n\nnew mail\n")
    inbox.sync()
    status, out, err = run(old, capsys, "backup", str(dest))
    assert status == 0, err
    second = (dest / "latest").resolve()
    assert second != first and "linked from" in out

    def files(snap: Path, sub: str) -> dict[str, os.stat_result]:
        return {n.partition(":")[0]: (snap / sub / n).stat() for n in os.listdir(snap / sub)}

    sub = "maildirs/example.test/alice/cur"
    a, b = files(first, sub), files(second, sub)
    unchanged = set(a) & set(b)
    assert len(unchanged) == 3 and len(b) == 4
    for base in unchanged:  # the flag-changed message too, under its new name
        assert b[base].st_ino == a[base].st_ino and b[base].st_nlink == 2, base
    (new_base,) = set(b) - set(a)
    assert b[new_base].st_nlink == 1
    assert os.path.exists(second / sub / (renamed.filename.partition(":")[0] + ":2,S"))
    key = "dkim/example.test/mail.key"
    assert (second / key).stat().st_ino == (first / key).stat().st_ino
    uidlist = "maildirs/example.test/alice/dovecot-uidlist"  # it changed: a copy
    assert (second / uidlist).stat().st_ino != (first / uidlist).stat().st_ino
    # --full copies everything; --keep removes the oldest, and what is left still restores
    status, out, err = run(old, capsys, "backup", "--full", "--keep", "2", str(dest))
    assert status == 0, err
    third = (dest / "latest").resolve()
    assert all(st.st_nlink == 1 for st in files(third, sub).values())
    assert not first.exists() and second.exists()
    assert "removed old snapshot" in err
    new = make_root(tmp_path / "new")
    status, out, err = run(new, capsys, "restore", str(second))
    assert status == 0, err
    assert len(os.listdir(new.maildirs / "example.test" / "alice" / "cur")) == 4


def test_usage_and_refusals_are_one_line(old: Root, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--config", str(old.conf), "backup"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--config", str(old.conf), "backup", "--keep", "-1", str(tmp_path / "bk")])
    assert e.value.code == 2
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    for args in (["backup", str(tmp_path / "file")], ["restore", str(tmp_path / "nowhere")],
                 ["restore", str(tmp_path)]):
        status, out, err = run(old, capsys, *args)
        assert status == 1 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert run(old, capsys, "backup", str(tmp_path / "bk"))[0] == 0
    status, out, err = run(old, capsys, "backup", str(tmp_path / "bk" / "latest"))
    assert status == 1 and "is a snapshot" in err
    status, out, err = run(old, capsys, "backup", str(old.maildirs / "backups"))  # would copy itself
    assert status == 1 and "is inside" in err and not (old.maildirs / "backups").exists()


def test_a_failed_backup_leaves_no_snapshot(old: Root, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "bk"
    assert run(old, capsys, "backup", str(dest))[0] == 0
    good = os.readlink(dest / "latest")
    db = old.base / "var" / "mailstack.db"
    shutil.move(db, tmp_path / "db-aside")  # the database is gone: the backup must fail
    status, out, err = run(old, capsys, "backup", str(dest))
    assert status == 1 and "no such database" in err, err
    assert os.readlink(dest / "latest") == good
    assert sorted(n for n in os.listdir(dest) if not n.startswith(".lock")) == sorted([good, "latest"])
