"""File modes: what mailstack creates is private whatever the umask it is started with.

The real CLI and the real server run as subprocesses under umask 022 (the usual) and
000 (the worst), with the shipped layout (``var/`` beside the config folder, the
database, TLS pair, queue, DKIM keys and LMTP socket in it, Maildirs in
``mailboxes/``). Mail goes in over LMTP and submission, out of IMAP (SELECT, CREATE,
APPEND, COPY, keywords, SUBSCRIBE) and POP3, so that every kind of file is made:
messages, ``dovecot-uidlist``, ``dovecot-keywords``, ``subscriptions``,
``maildirsize``, lock files, the SQLite ``-wal``/``-shm``, queue files.

Allowed beyond owner-only: ``var/`` itself 0750 and the LMTP socket 0660 (the MTA
that delivers over LMTP runs as another user in our group). Nothing else may have a
group or other bit.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import signal
import smtplib
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: modes\r\n\r\nhello\r\n"
ALLOWED = {"var": 0o750, "var/lmtp.sock": 0o660}


def write_config(base: Path) -> tuple[Path, dict[str, int]]:
    """The shipped layout: etc/mailstack.toml with ../var and ../mailboxes."""
    ports = {name: free_port() for name in ("submission", "imap", "pop3", "http", "dns")}
    etc = base / "etc"
    etc.mkdir()
    config = etc / "mailstack.toml"
    config.write_text(
        'hostname = "mx.example.test"\n'
        '[database]\nurl = "sqlite:///../var/mailstack.db"\n'
        '[storage]\nmaildir_root = "../mailboxes"\n'
        '[tls]\ncert_file = "../var/tls/cert.pem"\nkey_file = "../var/tls/key.pem"\n'
        '[smtp]\nlisten = []\n'
        f'[submission]\nlisten = ["127.0.0.1:{ports["submission"]}"]\n'
        '[lmtp]\nlisten = ["unix:../var/lmtp.sock"]\n'
        f'[imap]\nlisten = ["127.0.0.1:{ports["imap"]}"]\n'
        f'[pop3]\nlisten = ["127.0.0.1:{ports["pop3"]}"]\n'
        f'[http]\nlisten = ["127.0.0.1:{ports["http"]}"]\n'
        '[queue]\ndir = "../var/queue"\ndkim_dir = "../var/dkim"\n'
        f'[dns]\nnameservers = ["127.0.0.1:{ports["dns"]}"]\ntimeout = 1\n')
    return config, ports


def run(umask: int, config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh",
                           sys.executable, "-m", "mailstack", "--config", str(config), *args],
                          input=stdin, capture_output=True, timeout=120, env=env(), check=False)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    e.pop("NOTIFY_SOCKET", None)
    return e | {"PYTHONPATH": str(ROOT)}


def too_open(base: Path) -> list[str]:
    """Every path under var/ and mailboxes/ with group/other bits beyond ALLOWED."""
    bad = []
    for top in ("var", "mailboxes"):
        root = base / top
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            rel = path.relative_to(base).as_posix()
            mode = stat.S_IMODE(st.st_mode)
            if mode & ~ALLOWED.get(rel, 0o700 if stat.S_ISDIR(st.st_mode) else 0o600):
                bad.append(f"{rel} {mode:04o}")
    return bad


@pytest.fixture
def server_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def wait_port(proc: subprocess.Popen[bytes], port: int) -> None:
    wait_listening(port, proc, timeout=60)


def exercise(base: Path, ports: dict[str, int]) -> None:
    """Make every kind of file: LMTP delivery, submission to a remote (queued), IMAP, POP3."""
    with smtplib.LMTP(str(base / "var" / "lmtp.sock")) as lmtp:
        lmtp.sendmail("bob@elsewhere.test", ["alice@example.test"], MESSAGE)
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as sub:
        sub.login("alice@example.test", "secret")
        sub.sendmail("alice@example.test", ["carol@remote.test"],
                     b"From: alice@example.test\r\nTo: carol@remote.test\r\nSubject: out\r\n\r\nhi\r\n")
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30)
    try:
        imap.login("alice@example.test", "secret")
        assert imap.select("INBOX")[0] == "OK"
        assert imap.store("1", "+FLAGS", "(\\Seen $Important)")[0] == "OK"
        assert imap.create("Projects")[0] == "OK"
        assert imap.subscribe("Projects")[0] == "OK"
        assert imap.copy("1", "Projects")[0] == "OK"
        assert imap.append("Projects", "(\\Flagged)", None, MESSAGE)[0] == "OK"
        assert imap.select("Projects")[0] == "OK"
        assert imap.search(None, "BODY", "modes")[0] == "OK"  # the full-text index
    finally:
        imap.logout()
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
    try:
        pop.user("alice@example.test")
        pop.pass_("secret")
        assert pop.stat()[0] >= 1
        pop.retr(1)
    finally:
        pop.quit()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_everything_created_is_private(tmp_path: Path, umask: int,
                                       server_proc: list[subprocess.Popen[bytes]]) -> None:
    config, ports = write_config(tmp_path)
    for args, stdin in ((["domain", "add", "example.test"], b""),
                        (["user", "add", "alice@example.test", "--password-stdin"], b"secret\n"),
                        (["alias", "add", "postmaster@example.test", "alice@example.test"], b""),
                        (["dkim", "keygen", "example.test"], b"")):
        r = run(umask, config, *args, stdin=stdin)
        assert r.returncode == 0, r.stderr.decode()
    assert too_open(tmp_path) == []  # what the CLI made

    proc = subprocess.Popen(["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", sys.executable, "-m",
                             "mailstack", "--config", str(config), "serve"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server_proc.append(proc)
    for port in (ports["submission"], ports["imap"], ports["pop3"], ports["http"]):
        wait_port(proc, port)
    exercise(tmp_path, ports)

    r = run(umask, config, "queue", "list")
    assert r.returncode == 0 and b"carol@remote.test" in r.stdout, r.stderr.decode() + r.stdout.decode()
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    # the walk below covers what this test means to cover
    for expected in ("var/mailstack.db-wal", "var/mailstack.db-shm", "var/tls/key.pem", "var/tls/cert.pem",
                     "var/lmtp.sock", "var/dkim/example.test/mail.key",
                     "mailboxes/example.test/alice/dovecot-uidlist",
                     "mailboxes/example.test/alice/dovecot-keywords",
                     "mailboxes/example.test/alice/maildirsize",
                     "mailboxes/example.test/alice/subscriptions",
                     "mailboxes/example.test/alice/.Projects/mailstack-fts.sqlite",
                     "mailboxes/example.test/alice/.Projects/maildirfolder"):
        assert expected in made, sorted(made)
    assert any(p.startswith("var/queue/") and p.endswith(".msg") for p in made), sorted(made)
    assert any(p.startswith("mailboxes/example.test/alice/.Projects/cur/") for p in made), sorted(made)
    assert too_open(tmp_path) == []  # while it runs (the -wal and -shm exist now)

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert too_open(tmp_path) == []
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "mailboxes" / "example.test").stat().st_mode) == 0o700


def test_an_existing_database_readable_by_others_is_made_private(tmp_path: Path) -> None:
    """A database (and -wal/-shm) left 0644 by an earlier version loses its group/other bits."""
    config, _ = write_config(tmp_path)
    assert run(0o022, config, "domain", "add", "example.test").returncode == 0
    var = tmp_path / "var"
    for name in ("mailstack.db", "mailstack.db-wal", "mailstack.db-shm"):
        p = var / name
        p.touch()
        os.chmod(p, 0o644)
    r = run(0o022, config, "domain", "list")
    assert r.returncode == 0 and b"example.test" in r.stdout, r.stderr.decode()
    for name in ("mailstack.db", "mailstack.db-wal", "mailstack.db-shm"):
        p = var / name
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, name


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 000 in this process: only the modes given in each creating call protect."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_each_creating_call_gives_its_mode_without_the_umask(tmp_path: Path, no_umask: None) -> None:
    """The umask is a backstop only: storage, queue, database, TLS, DKIM and socket code
    give private modes themselves (parents made on the way included)."""
    import asyncio

    from mailstack import net
    from mailstack.config import ListenAddress, TLSConfig
    from mailstack.directory import Directory, Passwords
    from mailstack.mail.dkim import generate_key
    from mailstack.queue import QueueStore
    from mailstack.storage import Maildir

    base = tmp_path
    directory = Directory(f"sqlite:///{base / 'var' / 'mailstack.db'}", passwords=Passwords.fast())
    try:
        directory.migrate()
        directory.add_domain("example.test")
    finally:
        directory.close()

    md = Maildir.for_user(base / "mailboxes", "example.test", "alice")
    md.deliver(MESSAGE)
    inbox = md.folder("INBOX")
    inbox.sync()
    md.subscribe("Projects")
    projects = md.create_folder("Projects")
    projects.append(MESSAGE, {"\\Seen"}, keywords=["$Important"])
    inbox.copy_to(inbox.sync().uids(), projects)
    md.quota_usage()

    store = QueueStore(base / "var" / "queue")
    store.enqueue("alice@example.test", ["carol@remote.test"], MESSAGE)
    net.ensure_certificate(TLSConfig(base / "var" / "tls" / "cert.pem", base / "var" / "tls" / "key.pem"),
                           "mx.example.test")
    generate_key(base / "var" / "dkim", "example.test", "mail", "ed25519")

    async def listen() -> None:
        server = await net.start_listener(ListenAddress("unix", path=base / "run" / "lmtp.sock"),
                                          asyncio.Protocol)
        server.close()
        await server.wait_closed()

    asyncio.run(listen())

    assert too_open(base) == []
    assert stat.S_IMODE((base / "var").stat().st_mode) == 0o750  # made by the database code
    assert stat.S_IMODE((base / "run").stat().st_mode) == 0o750  # made for the socket
    assert stat.S_IMODE((base / "run" / "lmtp.sock").stat().st_mode) == 0o660
