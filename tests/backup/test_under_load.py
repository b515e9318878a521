"""A backup taken while mail arrives over real SMTP, restored onto a fresh root: every
message acknowledged before the backup started is there, and a real IMAP client sees the
same UIDVALIDITY, UIDs, flags, INTERNALDATE and bytes; users log in with their passwords."""

from __future__ import annotations

import imaplib
import smtplib
import threading
import time
from email.utils import make_msgid
from pathlib import Path

from tests.backup.conftest import USERS, Root, cli, imap_view, make_root, populate, serve, stop


def _message(n: int, to: str) -> tuple[str, bytes]:
    msgid = make_msgid(f"m{n}", "sender.test")
    body = (f"From: sender@sender.test\r\nTo: {to}\r\nSubject: message {n}\r\nMessage-ID: {msgid}\r\n\r\n"
            + f"line {n}\r\n" * (1 + n % 7)).encode()
    return msgid, body


class Sender(threading.Thread):
    """Delivers over real SMTP until told to stop; remembers when each 250 came back."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.acked: list[tuple[float, str, str]] = []  # (monotonic time of the 250, message id, recipient)
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 1000
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                while not self.stop_event.is_set():
                    to = list(USERS)[n % 2]
                    msgid, data = _message(n, to)
                    s.sendmail("sender@sender.test", [to], data)  # raises unless 250
                    self.acked.append((time.monotonic(), msgid, to))
                    n += 1
        except BaseException as e:  # reported by the test
            self.error = e


def _message_ids(view: dict[str, tuple[int, dict[int, tuple[frozenset[str], str, bytes]]]]) -> set[str]:
    ids = set()
    for _validity, messages in view.values():
        for _flags, _date, data in messages.values():
            for line in data.split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    ids.add(line.split(b":", 1)[1].strip().decode())
    return ids


def _prepare_mail(root: Root) -> None:
    with smtplib.SMTP("127.0.0.1", root.smtp_port, timeout=30) as s:
        for n in range(12):
            to = list(USERS)[n % 2]
            s.sendmail("sender@sender.test", [to], _message(n, to)[1])
        s.sendmail("sender@sender.test", ["team@example.test"], _message(99, "team@example.test")[1])
    with imaplib.IMAP4("127.0.0.1", root.imap_port, timeout=30) as c:
        c.login("alice@example.test", USERS["alice@example.test"])
        c.create("Projects")
        c.select("INBOX")
        assert c.uid("STORE", "1", "+FLAGS", r"(\Flagged $Label1)")[0] == "OK"
        assert c.uid("STORE", "2", "+FLAGS", r"(\Seen \Answered)")[0] == "OK"
        assert c.uid("STORE", "3", "+FLAGS", r"(\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"  # UID 3 is gone: the restore must not bring it back
        assert c.uid("COPY", "4:5", "Projects")[0] == "OK"
        appended = b"From: alice@example.test\r\nSubject: draft\r\n\r\nold note\r\n"
        typ, _ = c.append("Projects", r"(\Draft)", imaplib.Time2Internaldate(1262347200), appended)
        assert typ == "OK"
        c.logout()


def test_backup_under_smtp_load_restores_everything_acknowledged(tmp_path: Path) -> None:
    old = make_root(tmp_path / "old")
    populate(old)
    server = serve(old)
    sender = Sender(old.smtp_port)
    try:
        _prepare_mail(old)
        before = {u: imap_view(old.imap_port, u, p) for u, p in USERS.items()}
        sender.start()
        deadline = time.monotonic() + 30
        while len(sender.acked) < 10 and sender.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.error is None and len(sender.acked) >= 10, sender.error
        started = time.monotonic()
        result = cli(old, "backup", str(tmp_path / "backups"))
        assert result.returncode == 0, result.stderr
        during = [a for a in sender.acked if a[0] >= started]
        sender.stop_event.set()
        sender.join(30)
        assert sender.error is None, sender.error
        assert during, "no message arrived while the backup ran: it was not under load"
        acked_before = {(msgid, to) for t, msgid, to in sender.acked if t < started}
    finally:
        sender.stop_event.set()
        stop(server)

    new = make_root(tmp_path / "new")
    result = cli(new, "restore", str(tmp_path / "backups"))
    assert result.returncode == 0, result.stderr
    assert (new.base / "etc" / "mailstack.toml.from-backup").read_bytes() == old.conf.read_bytes()
    server = serve(new)
    try:
        after = {u: imap_view(new.imap_port, u, p) for u, p in USERS.items()}  # logs in with the old passwords
    finally:
        stop(server)

    for user, view in before.items():
        assert set(view) <= set(after[user]), user
        for folder, (uidvalidity, messages) in view.items():
            restored_validity, restored = after[user][folder]
            assert restored_validity == uidvalidity, (user, folder)
            for uid, (flags, date, data) in messages.items():
                assert uid in restored, (user, folder, uid)
                assert restored[uid] == (flags, date, data), (user, folder, uid)
    assert before["alice@example.test"]["Projects"][1], "the APPENDed and COPYed messages are compared"
    for user in USERS:
        ids = _message_ids(after[user])
        missing = {msgid for msgid, to in acked_before if to == user} - ids
        assert not missing, f"{user}: acknowledged before the backup but not restored: {missing}"
    # the expunged message stayed expunged, and nothing is there twice
    inbox = after["alice@example.test"]["INBOX"][1]
    assert 3 not in inbox
    bodies = [data for _f, _d, data in inbox.values()]
    assert len(bodies) == len(set(bodies))
