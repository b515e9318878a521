"""The admin CLI end to end, through the real `mailstack` console script.

Every refusal must be: exit 1 (2 for wrong usage), one line on stderr, no traceback,
and nothing changed in the directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "mailstack"


@pytest.fixture
def cli(tmp_path: Path):
    cfg = tmp_path / "config" / "mailstack.toml"
    cfg.parent.mkdir()
    cfg.write_text('hostname = "mx.example.test"\n[database]\nurl = "sqlite:///../var/mailstack.db"\n'
                   '[storage]\nmaildir_root = "../mailboxes"\n')

    def run(*args: str, stdin: str | None = None, ok: int | None = 0) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_CONFIG"}
        r = subprocess.run([str(SCRIPT), "--config", str(cfg), *args], input=stdin, capture_output=True,
                           text=True, timeout=120, env=env, stdin=None if stdin is not None else subprocess.DEVNULL)
        assert "Traceback" not in r.stderr, r.stderr
        if ok is not None:
            assert r.returncode == ok, (args, r.returncode, r.stdout, r.stderr)
        return r

    run.tmp = tmp_path  # type: ignore[attr-defined]
    return run


def refused(r: subprocess.CompletedProcess[str], fragment: str, status: int = 1) -> None:
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 if status == 1 else len(lines) >= 1, r.stderr
    assert fragment.lower() in r.stderr.lower(), r.stderr


def listing(cli, *args: str) -> list[dict]:
    return json.loads(cli(*args, "--json").stdout)


def test_console_script_and_module_agree(cli) -> None:
    assert SCRIPT.exists()
    out = subprocess.run([sys.executable, "-m", "mailstack", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mailstack ")
    assert cli("--version").stdout == out.stdout


def test_domain_lifecycle(cli) -> None:
    cli("domain", "add", "Example.TEST")
    cli("domain", "add", "bücher.example")
    names = [d["name"] for d in listing(cli, "domain", "list")]
    assert sorted(names) == ["example.test", "xn--bcher-kva.example"]
    assert "example.test" in cli("domain", "list").stdout
    refused(cli("domain", "add", "example.test", ok=None), "example.test")
    refused(cli("domain", "add", "not a domain", ok=None), "not a domain")
    refused(cli("domain", "remove", "nope.test", ok=None), "nope.test")
    cli("domain", "remove", "xn--bcher-kva.example")
    assert [d["name"] for d in listing(cli, "domain", "list")] == ["example.test"]


def test_user_lifecycle(cli) -> None:
    cli("domain", "add", "example.test")
    cli("user", "add", "Alice@Example.test", "--password-stdin", "--quota", "2G", stdin="s3cret pw\n")
    (u,) = listing(cli, "user", "list")
    assert u["address"] == "Alice@example.test"
    assert u["quota"] == 2 * 1024**3 and u["enabled"] is True and u["created_at"]
    refused(cli("user", "add", "alice@example.test", "--password-stdin", stdin="x\n", ok=None), "alice")
    refused(cli("user", "add", "bob@unknown.test", "--password-stdin", stdin="x\n", ok=None), "unknown.test")
    refused(cli("user", "add", "not-an-address", "--password-stdin", stdin="x\n", ok=None), "not-an-address")
    refused(cli("user", "add", "bob@example.test", "--password-stdin", stdin="\n", ok=None), "empty password")
    refused(cli("user", "add", "bob@example.test", "--quota", "lots", "--password-stdin", stdin="x\n", ok=None),
            "lots", status=2)
    assert [x["address"] for x in listing(cli, "user", "list")] == ["Alice@example.test"]  # nothing half-written

    cli("user", "disable", "alice@example.test")
    assert listing(cli, "user", "list")[0]["enabled"] is False
    cli("user", "enable", "ALICE@example.test")
    assert listing(cli, "user", "list")[0]["enabled"] is True
    cli("user", "quota", "alice@example.test", "500M")
    assert listing(cli, "user", "list")[0]["quota"] == 500 * 1024**2
    refused(cli("user", "passwd", "nobody@example.test", "--password-stdin", stdin="x\n", ok=None), "nobody")
    cli("user", "passwd", "alice@example.test", "--password-stdin", stdin="new pw\n")


def test_password_is_hashed_and_authenticates(cli) -> None:
    cli("domain", "add", "example.test")
    cli("user", "add", "alice@example.test", "--password-stdin", stdin="s3cret pw\n")
    from mailstack.config import load_config
    from mailstack.directory import Directory

    d = Directory.from_config(load_config(cli.tmp / "config" / "mailstack.toml"))
    try:
        assert d.authenticate("alice@example.test", "s3cret pw") is not None
        assert d.authenticate("alice@example.test", "wrong") is None
    finally:
        d.close()
    db = (cli.tmp / "var" / "mailstack.db").read_bytes()
    assert b"s3cret pw" not in db and b"$argon2id$" in db
    cli("user", "passwd", "alice@example.test", "--password-stdin", stdin="other\n")
    d = Directory.from_config(load_config(cli.tmp / "config" / "mailstack.toml"))
    try:
        assert d.authenticate("alice@example.test", "s3cret pw") is None
        assert d.authenticate("alice@example.test", "other") is not None
    finally:
        d.close()


def test_prompt_needs_a_terminal(cli) -> None:
    cli("domain", "add", "example.test")
    r = cli("user", "add", "alice@example.test", ok=None)  # stdin is /dev/null, not a tty
    refused(r, "--password-stdin", status=2)
    assert listing(cli, "user", "list") == []


def test_remove_user_keeps_maildir_unless_purged(cli) -> None:
    cli("domain", "add", "example.test")
    for who in ("alice", "bob"):
        cli("user", "add", f"{who}@example.test", "--password-stdin", stdin="pw\n")
        md = cli.tmp / "mailboxes" / "example.test" / who
        (md / "cur").mkdir(parents=True)
        (md / "cur" / "1.M1P1.host,S=3,W=3:2,S").write_text("hi\n")
    cli("user", "remove", "alice@example.test")
    assert (cli.tmp / "mailboxes" / "example.test" / "alice" / "cur").is_dir()
    cli("user", "remove", "bob@example.test", "--purge")
    assert not (cli.tmp / "mailboxes" / "example.test" / "bob").exists()
    assert listing(cli, "user", "list") == []
    refused(cli("user", "remove", "bob@example.test", ok=None), "bob@example.test")


def test_domain_with_users_needs_force(cli) -> None:
    cli("domain", "add", "example.test")
    cli("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
    cli("alias", "add", "@example.test", "alice@example.test")
    refused(cli("domain", "remove", "example.test", ok=None), "example.test")
    assert len(listing(cli, "user", "list")) == 1 and len(listing(cli, "alias", "list")) == 1
    cli("domain", "remove", "example.test", "--force")
    assert listing(cli, "domain", "list") == [] and listing(cli, "user", "list") == []
    assert listing(cli, "alias", "list") == []


def test_aliases(cli) -> None:
    cli("domain", "add", "example.test")
    cli("domain", "add", "other.test")
    cli("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
    cli("alias", "add", "sales@example.test", "alice@example.test", "boss@remote.example")
    cli("alias", "add", "@other.test", "alice@example.test")
    got = {a["source"]: a["targets"] for a in listing(cli, "alias", "list")}
    assert got == {"sales@example.test": ["alice@example.test", "boss@remote.example"],
                   "@other.test": ["alice@example.test"]}
    assert [a["source"] for a in listing(cli, "alias", "list", "other.test")] == ["@other.test"]
    refused(cli("alias", "add", "x@notlocal.test", "alice@example.test", ok=None), "notlocal.test")
    refused(cli("alias", "add", "sales@example.test", "bad target", ok=None), "bad target")
    cli("alias", "remove", "sales@example.test", "boss@remote.example")
    got = {a["source"]: a["targets"] for a in listing(cli, "alias", "list")}
    assert got["sales@example.test"] == ["alice@example.test"]
    cli("alias", "remove", "@other.test")
    refused(cli("alias", "remove", "@other.test", ok=None), "@other.test")
    assert [a["source"] for a in listing(cli, "alias", "list")] == ["sales@example.test"]


@pytest.mark.parametrize("argv", [[], ["domain"], ["domain", "frob"], ["user", "add"], ["alias", "add", "a@b.c"],
                                  ["nonsense"], ["user", "list", "--jsn"]])
def test_wrong_usage_exits_2(cli, argv: list[str]) -> None:
    r = cli(*argv, ok=None)
    assert r.returncode == 2 and "usage" in r.stderr.lower()


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('hostname = "mx.example.test"\n[database]\nurl = "postgresql+psycopg://u:p@127.0.0.1:1/db"\n')
    r = subprocess.run([str(SCRIPT), "--config", str(cfg), "domain", "list"], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
