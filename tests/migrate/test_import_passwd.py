"""Passwords carried over: `mailstack import passwd-file` and `user add --password-hash`
take the hashes Dovecot's own `doveadm pw` makes, every imported user then logs in over
mailstack's IMAP with the old password, and the stored hash is argon2id after that login.
A line it cannot use is named and skipped; a second run changes nothing."""

from __future__ import annotations

import imaplib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailstack.directory.models import UserRow
from mailstack.migrate.passwdfile import PasswdLineError, parse_line, parse_quota_rule
from tests.helpers import require_tool
from tests.imap_server.conftest import IMAPServer, make_server

SCRIPT = Path(sys.executable).parent / "mailstack"
SCHEMES = ["ARGON2ID", "ARGON2I", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "SSHA512", "SSHA256", "CRYPT",
           "PLAIN", "MD5-CRYPT", "SSHA"]
DES_SECRET = "{CRYPT}abNANd1rDfiNc"  # glibc crypt("secret", "ab"): what a very old passwd-file holds


@pytest.mark.parametrize(("rule", "expected"), [
    ("*:storage=1G", 1024**3),
    ("*:storage=500M", 500 * 1024**2),
    ("*:storage=2048", 2048 * 1024),  # Dovecot: storage without a unit is in kilobytes
    ("*:bytes=1000000", 1000000),
    ("*:bytes=10k", 10240),
    ("*:storage=1T", 1024**4),
    ("*:storage=0", None),  # 0 = unlimited
    ("*:storage=10%", None),
    ("*:storage=+100M", None),
    ("Trash:storage=+100M", None),
    ("*:ignore", None),
    ("?:storage=3M", 3 * 1024**2),
])
def test_quota_rules(rule: str, expected: int | None) -> None:
    assert parse_quota_rule(rule)[0] == expected


def test_passwd_lines() -> None:
    e = parse_line("alice@example.test:{SHA512-CRYPT}$6$x$y:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G "
                   "userdb_mail=maildir:~/Maildir", 3)
    assert e is not None and (e.address, e.password_hash, e.quota_bytes, e.line_no) == (
        "alice@example.test", "{SHA512-CRYPT}$6$x$y", 1024**3, 3)
    e = parse_line("bob:{PLAIN}pw::::::quota_rule=*:storage=20M\r\n", 1, "example.test")
    assert e is not None and (e.address, e.quota_bytes) == ("bob@example.test", 20 * 1024**2)
    e = parse_line("carol@example.test:{PLAIN}pw::::::userdb_quota_rule=*:messages=100", 1)
    assert e is not None and e.quota_bytes is None and "100 messages" in e.notes[0]
    assert parse_line("", 1) is None and parse_line("  # comment", 2) is None
    for bad, why in [("bob:{PLAIN}pw", "no @domain"), ("justaname", "no password field"),
                     ("dave@example.test::1000:1000", "no password"), (":{PLAIN}x", "empty user"),
                     ("erin@example.test:{PLAIN}x::::::nopassword", "no password"),
                     ("f@example.test:" + "x" * 9000, "longer")]:
        with pytest.raises(PasswdLineError, match=why):
            parse_line(bad, 1)


def doveadm_hash(scheme: str, password: str) -> str:
    out = subprocess.run([require_tool("doveadm"), "pw", "-s", scheme, "-p", password],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[IMAPServer]:
    # every scheme gets a wrong password too: more than the throttle's 5 failures per /24
    for server in make_server(tmp_path, auth={"max_failures": 1000}):
        cfg = tmp_path / "mailstack.toml"
        cfg.write_text(f'hostname = "mx.example.test"\n[database]\nurl = "{server.config.database.url}"\n'
                       f'[storage]\nmaildir_root = "{server.config.storage.maildir_root}"\n')
        server.extra["config"] = cfg
        yield server


def cli(server: IMAPServer, *args: str, ok: int | None = 0, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_CONFIG"}
    r = subprocess.run([str(SCRIPT), "--config", str(server.extra["config"]), *args], input=stdin,
                       capture_output=True, text=True, timeout=300, env=env)
    assert "Traceback" not in r.stderr, r.stderr
    if ok is not None:
        assert r.returncode == ok, (r.returncode, r.stdout, r.stderr)
    return r


def stored(server: IMAPServer) -> dict[str, tuple[str | None, int | None]]:
    with server.directory.engine.connect() as conn:
        rows = conn.execute(select(UserRow.local, UserRow.password_hash, UserRow.quota_bytes)).all()
    return {local: (h, q) for local, h, q in rows}


def imap_login(server: IMAPServer, user: str, password: str) -> bool:
    c = imaplib.IMAP4("127.0.0.1", server.port, timeout=30)
    try:
        c.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        c.shutdown()


def test_passwd_file_users_log_in_with_their_old_passwords(local: IMAPServer, tmp_path: Path) -> None:
    users = {f"u{i}-{s.lower()}": (s, f"pw {s} ü{i}") for i, s in enumerate(SCHEMES)}
    lines = ["# exported from the old Dovecot", ""]
    for name, (scheme, password) in users.items():
        lines.append(f"{name}@imported.test:{doveadm_hash(scheme, password)}:5000:5000::/var/vmail/{name}::"
                     f"userdb_quota_rule=*:storage=1G userdb_mail=maildir:/var/vmail/{name}")
    lines += [
        "des@imported.test:" + DES_SECRET + ":::::",
        "short:{PLAIN}no-domain",  # line n: no @domain and no --domain
        "weak@imported.test:{MD5}5ebe2294ecd0e0f08eab7690d2a6ee69",  # unsalted MD5: refused
        "broken@imported.test:{SHA512-CRYPT}$6$nothing",
        "bad name@imported.test:{PLAIN}x",
        "empty@imported.test:",
        "quota@other.test:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=20M",
    ]
    path = tmp_path / "users"
    path.write_text("\n".join(lines) + "\n")
    r = cli(local, "import", "passwd-file", str(path))
    assert f"{len(users) + 2} users imported, 0 already there, 5 lines skipped" in r.stdout, r.stdout
    for n, fragment in [(len(users) + 4, "no @domain"), (len(users) + 5, "weak@imported.test"),
                        (len(users) + 6, "broken@imported.test"), (len(users) + 7, "bad name"),
                        (len(users) + 8, "empty@imported.test")]:
        assert any(line.startswith(f"mailstack: {path}:{n}: ") and fragment in line and line.endswith("skipped")
                   for line in r.stderr.splitlines()), (n, r.stderr)
    assert "weak" not in stored(local) and local.directory.get_user("weak@imported.test") is None
    assert local.directory.get_domain("other.test") is not None  # domains created as needed
    assert local.directory.get_user("quota@other.test").quota_bytes == 20 * 1024**2  # type: ignore[union-attr]

    before = stored(local)
    assert before["u0-argon2id"][1] == 1024**3  # the quota of the line kept
    assert before["u8-plain"][0] is not None and before["u8-plain"][0].startswith("$argon2id$")  # never clear text

    for name, (scheme, password) in users.items():
        address = f"{name}@imported.test"
        assert not imap_login(local, address, password + "x"), scheme
        assert imap_login(local, address, password), scheme
    assert imap_login(local, "des@imported.test", "secret")
    after = stored(local)
    for name in [*users, "des"]:
        assert after[name][0] is not None and after[name][0].startswith("$argon2id$"), (name, after[name])
        if not users.get(name, ("",))[0].startswith("ARGON2"):
            assert after[name][0] != before[name][0], name  # rehashed at the login
    for name, (scheme, password) in users.items():  # the new hash still takes the password
        assert imap_login(local, f"{name}@imported.test", password), scheme

    again = cli(local, "import", "passwd-file", str(path))
    assert f"0 users imported, {len(users) + 2} already there, 5 lines skipped" in again.stdout, again.stdout
    assert stored(local) == after  # a second run changes nothing (and never puts an old hash back)


def test_domain_option_and_stdin(local: IMAPServer) -> None:
    r = cli(local, "import", "passwd-file", "-", "--domain", "Example.TEST",
            stdin="dave:{SSHA256}" + doveadm_hash("SSHA256", "dave-pw").split("}", 1)[1] + "\n")
    assert "1 users imported" in r.stdout
    assert imap_login(local, "dave@example.test", "dave-pw")
    missing = cli(local, "import", "passwd-file", "/nonexistent/users", ok=1)
    assert missing.stderr.count("\n") == 1 and "cannot read" in missing.stderr
    bad = cli(local, "import", "passwd-file", "-", "--domain", "no domain!", ok=2)
    assert "--domain" in bad.stderr


def test_user_add_with_a_dovecot_hash(local: IMAPServer) -> None:
    h = doveadm_hash("SHA512-CRYPT", "erin's pw")
    cli(local, "user", "add", "erin@example.test", "--password-hash", h, "--quota", "1G")
    assert imap_login(local, "erin@example.test", "erin's pw")
    assert stored(local)["erin"][0].startswith("$argon2id$")  # type: ignore[union-attr]
    refused = cli(local, "user", "add", "frank@example.test", "--password-hash", "{MD5}abc", ok=1)
    assert refused.stderr.count("\n") == 1 and "frank" not in stored(local)
    both = cli(local, "user", "add", "gina@example.test", "--password-hash", h, "--password-stdin", ok=2)
    assert "not allowed with" in both.stderr
    cli(local, "user", "passwd", "erin@example.test", "--password-hash", doveadm_hash("BLF-CRYPT", "new pw"))
    assert imap_login(local, "erin@example.test", "new pw")
