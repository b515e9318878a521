"""Backup/restore fixtures: whole installations ("roots") under a temp folder.

A root is ``<dir>/etc/mailstack.toml`` with everything else relative to it (``var/``,
``mailboxes/``), as the shipped config lays it out, so two roots are two machines.
"""

from __future__ import annotations

import imaplib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mailstack.config import Config, load_config
from mailstack.directory import Directory, Passwords
from tests.helpers import free_port, wait_listening

USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}


@dataclass(frozen=True)
class Root:
    base: Path
    conf: Path
    smtp_port: int
    imap_port: int

    @property
    def config(self) -> Config:
        return load_config(self.conf)

    @property
    def maildirs(self) -> Path:
        return self.base / "mailboxes"

    def directory(self) -> Directory:
        return Directory(self.config.database.url, passwords=Passwords.fast())


def make_root(base: Path, db_url: str | None = None) -> Root:
    (base / "etc").mkdir(parents=True)
    smtp, imap = free_port(), free_port()
    conf = base / "etc" / "mailstack.toml"
    conf.write_text(f"""hostname = "mx.example.test"
[database]
url = "{db_url or 'sqlite:///../var/mailstack.db'}"
[storage]
maildir_root = "../mailboxes"
[tls]
cert_file = "../var/tls/cert.pem"
key_file = "../var/tls/key.pem"
[queue]
dir = "../var/queue"
dkim_dir = "../var/dkim"
[smtp]
listen = ["127.0.0.1:{smtp}"]
[imap]
listen = ["127.0.0.1:{imap}"]
""")
    return Root(base, conf, smtp, imap)


def populate(root: Root) -> None:
    """A domain, two users with passwords, an alias and a catch-all."""
    d = root.directory()
    try:
        d.migrate()
        d.add_domain("example.test")
        for address, password in USERS.items():
            d.add_user(address, password)
        d.add_alias("postmaster@example.test", ["alice@example.test"])
        d.add_alias("team@example.test", ["alice@example.test", "bob@example.test", "carol@elsewhere.test"])
    finally:
        d.close()


def serve(root: Root) -> subprocess.Popen[bytes]:
    """``mailstack serve smtp imap`` on the root; its log (one line per message) goes to a
    file, not a pipe nobody reads while the test runs (a full pipe would stall the server)."""
    env = {**os.environ, "MAILSTACK_STOP_GRACE": "1"}
    with open(root.base / "serve.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(root.conf), "serve", "smtp",
                                 "imap"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_listening(root.smtp_port, proc)
    wait_listening(root.imap_port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def cli(root: Root, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailstack", "--config", str(root.conf), *args],
                          capture_output=True, text=True, timeout=300)


_FETCH_RE = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE \"([^\"]+)\"")

# folder -> (uidvalidity, {uid: (flags, internaldate, bytes)})
View = dict[str, tuple[int, dict[int, tuple[frozenset[str], str, bytes]]]]


def imap_view(port: int, user: str, password: str) -> View:
    """Every folder of ``user`` as a real IMAP client sees it (\\Recent left out)."""
    view: View = {}
    with imaplib.IMAP4("127.0.0.1", port, timeout=30) as c:
        c.login(user, password)
        typ, listing = c.list()
        assert typ == "OK"
        folders = [re.search(rb'"([^"]*)"$|(\S+)$', line).group(0).strip(b'"').decode()  # type: ignore[union-attr]
                   for line in listing if isinstance(line, bytes)]
        for folder in folders:
            typ, _ = c.select(f'"{folder}"', readonly=True)
            assert typ == "OK", folder
            uidvalidity = int(c.untagged_responses["UIDVALIDITY"][0])
            messages: dict[int, tuple[frozenset[str], str, bytes]] = {}
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            assert typ == "OK"
            for item in data:
                if not isinstance(item, tuple):
                    continue
                m = _FETCH_RE.search(item[0])
                assert m, item[0]
                flags = frozenset(f for f in m.group(2).decode().split() if f != "\\Recent")
                messages[int(m.group(1))] = (flags, m.group(3).decode(), item[1])
            view[folder] = (uidvalidity, messages)
            c.close()
    return view
