"""`mailstack vacation set|show|off`: the auto-reply as a before-script.

- the settings round trip (the generated script is the one record), refusals are one line
  with the contract's exit codes, and the user's ManageSieve view never shows it;
- the sequence rules (``sieve.multiscript``): the before-script's implicit keep does not stop
  the user's script; its ``stop`` or ``discard`` does; a broken one is skipped;
- the generated script gets the same decision from Dovecot's Pigeonhole (``sieve-test``);
- end to end: mail from outside through the real MX gets exactly one reply at the remote
  MX (through the queue, DKIM-signed), while the user's own ``fileinto`` still files the
  original; nothing for a second message from the same sender, for ``<>``, lists, bulk or
  automatic mail, after ``off`` or after ``--until``.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mailstack.sieve import Context, Envelope, Interpreter
from mailstack.sieve.multiscript import run_sequence
from mailstack.sieve.store import ScriptStore
from mailstack.sieve.vacation import Vacation, parse, render
from tests.outbound.conftest import Remote, Stack, _dns_server, dns, make_config, remote  # noqa: F401 (fixtures)
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.sieve.test_pigeonhole import ours, pigeonhole, workdir  # noqa: F401  (workdir: the fixture)
from tests.test_cli import SCRIPT, cli, refused  # noqa: F401  (the fixture)

MESSAGE = 'Back on Monday.\nUrgent: call "Bob" at C:\\office\\phone.txt — merci.\n'


def home(root: Path, user: str = "alice") -> Path:
    return root / "mailboxes" / "example.test" / user


# -- the generated script ------------------------------------------------------------------


@pytest.mark.parametrize("until", [None, date(2026, 12, 24)])
def test_render_parse_round_trip(until: date | None) -> None:
    v = Vacation("alice@example.test", 'Away "now" \\ é', MESSAGE, 10, until)
    assert parse(render(v)) == v


# -- sequence rules (no I/O) ------------------------------------------------------------------

MSG = (b"From: Sender <s@remote.test>\r\nTo: alice@example.test\r\nSubject: Report\r\n"
       b"Message-ID: <m1@remote.test>\r\n\r\nHello.\r\n")
VACATION = render(Vacation("alice@example.test", "Away", "I am away.", 7))
FILE_WORK = b'require "fileinto"; if header :contains "subject" "report" { fileinto "Work"; }'


def sequence(*scripts: bytes) -> list[tuple[str, str]]:
    ctx = Context(MSG, Envelope("s@remote.test", "alice@example.test"))
    result = run_sequence([lambda s=s: Interpreter.compile(s).run(ctx) for s in scripts])  # type: ignore[misc]
    return [(a.kind, a.folder if a.kind in ("keep", "fileinto") else "") for a in result.actions]


def test_before_script_implicit_keep_does_not_stop_the_users_script() -> None:
    assert sequence(VACATION, FILE_WORK) == [("vacation", ""), ("fileinto", "Work")]
    assert sequence(VACATION, b"keep;") == [("vacation", ""), ("keep", "INBOX")]
    assert sequence(VACATION) == [("keep", "INBOX"), ("vacation", "")]
    assert sequence(b"keep;", FILE_WORK) == [("keep", "INBOX"), ("fileinto", "Work")]


def test_stop_or_discard_in_a_before_script_ends_the_sequence() -> None:
    assert sequence(b"stop;", FILE_WORK) == [("keep", "INBOX")]
    assert sequence(b"discard;", FILE_WORK) == []


def test_broken_before_script_is_skipped_and_one_vacation_at_most() -> None:
    failing = "".join(f'redirect "r{i}@remote.test";' for i in range(5)).encode()  # a runtime error
    assert sequence(failing, FILE_WORK) == [("fileinto", "Work")]
    other = b'require "vacation"; vacation :subject "mine" "mine";'
    assert sequence(VACATION, other).count(("vacation", "")) == 1
    assert sequence(VACATION, b'require "reject"; reject "no";') == [("reject", "")]


# -- the CLI ------------------------------------------------------------------------------


def setup_user(cli) -> None:  # noqa: F811
    cli("domain", "add", "example.test")
    cli("user", "add", "alice@example.test", "--password-stdin", stdin="secret\n")


def test_cli_set_show_off_round_trip(cli, tmp_path: Path) -> None:  # noqa: F811
    setup_user(cli)
    assert "no auto-reply" in cli("vacation", "show", "alice@example.test").stdout
    msg = tmp_path / "away.txt"
    msg.write_text(MESSAGE, encoding="utf-8")
    out = cli("vacation", "set", "alice@example.test", "--subject", "Away", "--message-file", str(msg),
              "--days", "3", "--until", "2099-01-31")
    assert "until 2099-01-31" in out.stdout
    shown = json.loads(cli("vacation", "show", "alice@example.test", "--json").stdout)
    assert shown == {"address": "alice@example.test", "subject": "Away", "days": 3, "until": "2099-01-31",
                     "active": True, "message": MESSAGE}
    text = cli("vacation", "show", "alice@example.test").stdout
    assert "subject: Away" in text and "Back on Monday." in text
    script = home(cli.tmp) / "sieve-before" / "vacation.sieve"
    assert b"vacation :days 3" in script.read_bytes()
    # apart from the user's own scripts: ManageSieve's view does not list it, a put does not touch it
    cli("sieve", "put", "alice@example.test", "vacation", "-", stdin="keep;\n")
    assert [s.name for s in ScriptStore(home(cli.tmp)).list()] == ["vacation"]
    assert b"vacation :days 3" in script.read_bytes()
    # replaced by a new set, without --until this time
    cli("vacation", "set", "alice@example.test", "--subject", "Gone", "--message-file", "-", stdin="Gone.\n")
    assert json.loads(cli("vacation", "show", "alice@example.test", "--json").stdout)["until"] is None
    assert "off" in cli("vacation", "off", "alice@example.test").stdout
    assert not script.exists()
    assert json.loads(cli("vacation", "show", "alice@example.test", "--json").stdout) is None
    assert "no auto-reply" in cli("vacation", "off", "alice@example.test").stdout


def test_cli_refusals_change_nothing(cli, tmp_path: Path) -> None:  # noqa: F811
    setup_user(cli)
    msg = tmp_path / "away.txt"
    msg.write_text("Away.\n")
    base = ["vacation", "set", "alice@example.test", "--subject", "Away", "--message-file", str(msg)]
    refused(cli("vacation", "set", "nobody@example.test", "--subject", "S", "--message-file", str(msg), ok=None),
            "no such user")
    refused(cli("vacation", "show", "nobody@example.test", ok=None), "no such user")
    refused(cli("vacation", "off", "not an address", ok=None), "invalid address", status=2)
    refused(cli(*base, "--days", "0", ok=None), "--days", status=2)
    refused(cli(*base, "--days", "many", ok=None), "--days", status=2)
    refused(cli(*base, "--until", "31.12.2099", ok=None), "YYYY-MM-DD", status=2)
    refused(cli(*base[:-1], str(tmp_path / "missing.txt"), ok=None), "cannot read")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9\n")
    refused(cli(*base[:-1], str(latin), ok=None), "not UTF-8")
    refused(cli(*base[:-1], "-", stdin=" \n", ok=None), "empty")
    refused(cli("vacation", "set", "alice@example.test", "--subject", "a\nBcc: x@evil.test",
                "--message-file", str(msg), ok=None), "one line", status=2)
    assert not (home(cli.tmp) / "sieve-before").exists()


# -- end to end through the MX ----------------------------------------------------------------


class Site:
    """MX + queue runner on loopback, the CLI on the same files, the remote MX as the sink."""

    def __init__(self, tmp_path: Path, dns: TestDNS, remote: Remote) -> None:
        self.tmp = tmp_path
        self.remote = remote
        self.mx_port = free_port()
        self.cfg = make_config(tmp_path, dns, remote.port, smtp={"listen": [f"127.0.0.1:{self.mx_port}"]})
        self.conf = tmp_path / "cli" / "mailstack.toml"
        self.conf.parent.mkdir()
        self.conf.write_text(f'hostname = "mx.example.test"\n[database]\nurl = "{self.cfg.database.url}"\n'
                             f'[storage]\nmaildir_root = "{tmp_path / "mailboxes"}"\n'
                             f'[queue]\ndir = "{tmp_path / "var/queue"}"\ndkim_dir = "{tmp_path / "var/dkim"}"\n')
        self.mailstack("domain", "add", "example.test")
        self.mailstack("user", "add", "alice@example.test", "--password-stdin", stdin="correct horse battery\n")
        self.mailstack("dkim", "keygen", "example.test")
        from mailstack.directory import Directory
        from mailstack.queue import QueueStore

        self.directory = Directory(self.cfg.database.url)
        self.queue = QueueStore(self.cfg.queue.dir)
        self.stack = Stack(self.cfg, self.directory, ("smtp", "queue"))

    def close(self) -> None:
        self.stack.stop()
        self.directory.close()

    def mailstack(self, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run([str(SCRIPT), "--config", str(self.conf), *args], input=stdin, capture_output=True,
                           text=True, timeout=120, stdin=None if stdin is not None else subprocess.DEVNULL)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stdout, r.stderr)
        return r.stdout

    def send(self, sender: str, extra: bytes = b"", subject: str = "Report") -> None:
        body = (f"From: <{sender or 'daemon@remote.test'}>\r\nTo: Alice <alice@example.test>\r\n"
                f"Subject: {subject}\r\nMessage-ID: <{time.monotonic_ns()}@remote.test>\r\n").encode() + extra \
            + b"\r\nThe quarterly report.\r\n"
        with smtplib.SMTP("127.0.0.1", self.mx_port, timeout=30) as c:
            assert c.sendmail(sender, ["alice@example.test"], body) == {}

    def replies(self) -> list[Any]:
        return [m for m in self.remote.messages]

    def wait_replies(self, n: int, timeout: float = 30) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.replies()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.replies()

    def wait_queue_empty(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while self.queue.list() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.queue.list()

    def no_new_reply(self, seen: int) -> None:
        """Every reply is queued before the MX's 250: right after it, a reply is either still in
        the queue or already at the remote MX (queue looked at first)."""
        assert self.queue.list() == []
        assert len(self.replies()) == seen

    def filed(self, folder: str) -> int:
        d = home(self.tmp) / f".{folder}" if folder else home(self.tmp)
        return sum(len(list((d / s).iterdir())) for s in ("new", "cur") if (d / s).is_dir())


@pytest.fixture
def site(tmp_path: Path, dns: TestDNS, remote: Remote) -> Iterator[Site]:
    s = Site(tmp_path, dns, remote)
    yield s
    s.close()


def set_vacation(site: Site, *extra: str) -> None:
    msg = site.tmp / "away.txt"
    msg.write_text("I am away until Monday.\n")
    site.mailstack("vacation", "set", "alice@example.test", "--subject", "Out of office",
                   "--message-file", str(msg), *extra)


def test_mx_message_gets_one_reply_and_the_users_rule_still_files_it(site: Site) -> None:
    site.mailstack("sieve", "put", "alice@example.test", "mine", "-", stdin=FILE_WORK.decode() + "\n")
    site.mailstack("sieve", "activate", "alice@example.test", "mine")
    (home(site.tmp) / ".Work").mkdir(parents=True)
    for sub in ("cur", "new", "tmp"):
        (home(site.tmp) / ".Work" / sub).mkdir()
    set_vacation(site, "--days", "2")

    site.send("carol@remote.test")
    [reply] = site.wait_replies(1)
    assert reply.sender == "<>" and reply.recipients == ["carol@remote.test"]  # null return path (the sink writes <>)
    head = reply.data.split(b"\r\n\r\n")[0]
    assert b"Auto-Submitted: auto-replied" in head  # RFC 3834 §5
    assert b"From: alice@example.test" in head and b"Subject: Out of office" in head
    assert b"In-Reply-To: <" in head and b"References: <" in head
    assert head.startswith(b"DKIM-Signature: ") and b"d=example.test" in head
    assert b"I am away until Monday." in reply.data
    assert site.filed("Work") == 1  # the user's own rule ran after the auto-reply
    assert site.filed("") == 0  # not kept in INBOX as well

    site.send("carol@remote.test")  # once per sender per period
    site.send("dave@remote.test")  # a barrier: this one is answered
    replies = site.wait_replies(2)
    assert [r.recipients for r in replies] == [["carol@remote.test"], ["dave@remote.test"]]
    assert site.wait_queue_empty()  # dave's reply leaves the queue once the remote MX took it
    assert len(site.replies()) == 2
    assert site.filed("Work") == 3


@pytest.mark.parametrize("sender, extra", [
    ("", b""),
    ("list@remote.test", b"List-Id: <team.remote.test>\r\n"),
    ("news@remote.test", b"Precedence: bulk\r\n"),
    ("robot@remote.test", b"Auto-Submitted: auto-generated\r\n"),
])
def test_no_reply_to_null_sender_lists_bulk_or_automatic_mail(site: Site, sender: str, extra: bytes) -> None:
    set_vacation(site)
    site.send(sender, extra)
    site.no_new_reply(0)
    site.send("eve@remote.test")  # and the same setup does answer a person
    assert [r.recipients for r in site.wait_replies(1)] == [["eve@remote.test"]]


def test_off_stops_it(site: Site) -> None:
    set_vacation(site)
    site.mailstack("vacation", "off", "alice@example.test")
    site.send("frank@remote.test")
    site.no_new_reply(0)
    assert site.filed("") == 1


def test_until_yesterday_sends_nothing(site: Site) -> None:
    yesterday = (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()
    set_vacation(site, "--until", yesterday)
    site.send("grace@remote.test")
    site.no_new_reply(0)
    tomorrow = (datetime.now(timezone.utc).date() + timedelta(days=1)).isoformat()
    set_vacation(site, "--until", tomorrow)
    site.send("grace@remote.test")
    assert [r.recipients for r in site.wait_replies(1)] == [["grace@remote.test"]]


# -- the generated script as Pigeonhole runs it (it can be a sieve_before there too) --------------


@pytest.mark.parametrize("until", [date(2000, 1, 1), date(2099, 12, 31), None])
def test_generated_script_gives_pigeonholes_decision(workdir: Path, until: date | None) -> None:
    script = render(Vacation("bob@example.com", "Away", 'Back "soon".\nBob', 3, until)).decode()
    expected = pigeonhole(workdir, script, "plain")
    assert ours(script, "plain") == expected
    assert any(item[0] == "vacation" for item in expected) == (until != date(2000, 1, 1))
