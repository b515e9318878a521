"""The mixed load of the two-host test, with a ledger of what each host acknowledged.

Every client is a real one (smtplib for the MX, submission and LMTP, imaplib for IMAP),
each bound to one host, each message carrying a Message-ID that names it. A client of a
host that was killed stops at its first connection error; what it had not been told
``250``/``OK`` for is not in the ledger (it may or may not have arrived: at most once).
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import imaplib
import re
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.conftest import PASSWORD, Host

ALICE, BOB = "alice@example.test", "bob@example.test"
# A dotlock the killed host held stops the survivor's work on that folder until it is
# stale (120 s, storage/lock.py): IMAP and POP3 wait; delivery never takes that lock.
TIMEOUT = 180
_UID = re.compile(rb"UID (\d+)")
_MID = re.compile(rb"Message-ID:\s*(<[^>]+>)", re.I)


def message(mid: str, sender: str, rcpt: str) -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: load {mid}\r\nMessage-ID: {mid}\r\n"
            f"Date: Tue, 01 Dec 2026 20:00:00 +0000\r\n\r\nbody of {mid}\r\n" + "x" * 200 + "\r\n").encode()


def message_id_of(path: Path) -> str:
    with path.open("rb") as f:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parse(f)
    return str(headers.get("Message-ID", "")).strip()


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, set[str]] = field(default_factory=lambda: {ALICE: set(), BOB: set()})
    remote_acked: set[str] = field(default_factory=set)
    seen: dict[tuple[str, int, int], str] = field(default_factory=dict)  # (user, UIDVALIDITY, UID) -> Message-ID
    conflicts: list[str] = field(default_factory=list)
    errors: list[tuple[str, float, str]] = field(default_factory=list)  # (host, time, what)
    fetches: int = 0

    def ack(self, user: str, mid: str) -> None:
        with self.lock:
            self.acked[user].add(mid)

    def error(self, host: Host, what: str) -> None:
        with self.lock:
            self.errors.append((host.name, time.time(), what))

    def saw(self, user: str, validity: int, uid: int, mid: str) -> None:
        with self.lock:
            key = (user, validity, uid)
            old = self.seen.setdefault(key, mid)
            if old != mid:
                self.conflicts.append(f"{user} UIDVALIDITY {validity} UID {uid}: {old} and then {mid}")




def _alive(host: Host) -> bool:
    return host.proc is not None and host.proc.poll() is None


def mx_worker(host: Host, n: int, ledger: Ledger, stop: threading.Event) -> None:
    """MX: one message to alice and bob per transaction, on one connection."""
    i = 0
    while not stop.is_set() and _alive(host):
        try:
            with smtplib.SMTP(host.ip, host.ports["smtp"], timeout=TIMEOUT) as s:
                while not stop.is_set():
                    i += 1
                    mid = f"<mx-{host.name}-{n}-{i}@cluster.test>"
                    s.sendmail("sender@outside.test", [ALICE, BOB], message(mid, "sender@outside.test", ALICE))
                    ledger.ack(ALICE, mid)
                    ledger.ack(BOB, mid)
        except (OSError, smtplib.SMTPException) as e:
            ledger.error(host, f"mx: {e!r}")


def lmtp_worker(host: Host, n: int, ledger: Ledger, stop: threading.Event) -> None:
    """LMTP: one recipient per transaction (smtplib reads one reply after DATA)."""
    i = 0
    while not stop.is_set() and _alive(host):
        try:
            with smtplib.LMTP(host.ip, host.ports["lmtp"], timeout=TIMEOUT) as s:
                while not stop.is_set():
                    i += 1
                    mid = f"<lmtp-{host.name}-{n}-{i}@cluster.test>"
                    s.sendmail("sender@outside.test", [ALICE], message(mid, "sender@outside.test", ALICE))
                    ledger.ack(ALICE, mid)
        except (OSError, smtplib.SMTPException) as e:
            ledger.error(host, f"lmtp: {e!r}")


def submission_worker(host: Host, n: int, ledger: Ledger, stop: threading.Event) -> None:
    """Submission: alice sends to remote.test; the queue of either host delivers it."""
    i = 0
    while not stop.is_set() and _alive(host):
        try:
            with smtplib.SMTP(host.ip, host.ports["submission"], timeout=TIMEOUT) as s:
                s.login(ALICE, PASSWORD)
                while not stop.is_set():
                    i += 1
                    mid = f"<sub-{host.name}-{n}-{i}@cluster.test>"
                    rcpt = f"r{n}-{i}@remote.test"
                    s.sendmail(ALICE, [rcpt], message(mid, ALICE, rcpt))
                    with ledger.lock:
                        ledger.remote_acked.add(mid)
        except (OSError, smtplib.SMTPException) as e:
            ledger.error(host, f"submission: {e!r}")


def imap_worker(host: Host, n: int, ledger: Ledger, stop: threading.Event) -> None:
    """IMAP: APPEND to bob's INBOX, and now and then read the UID -> Message-ID map of
    alice's and bob's INBOX (every pair ever seen must stay the same)."""
    i = 0
    while not stop.is_set() and _alive(host):
        try:
            for user in (BOB, ALICE):
                with imap_session(host, user) as m:
                    for _round in range(5):
                        if stop.is_set():
                            break
                        if user == BOB:
                            i += 1
                            mid = f"<append-{host.name}-{n}-{i}@cluster.test>"
                            typ, data = m.append("INBOX", None, None, message(mid, ALICE, BOB))
                            if typ != "OK":
                                ledger.error(host, f"append: {data!r}")
                            else:
                                ledger.ack(BOB, mid)
                        read_uids(m, user, ledger)
        except (OSError, imaplib.IMAP4.error, EOFError) as e:
            ledger.error(host, f"imap: {e!r}")


@contextlib.contextmanager
def imap_session(host: Host, user: str) -> Iterator[imaplib.IMAP4]:
    """A logged-in imaplib client whose socket is closed however it ends (imaplib's own
    ``__exit__`` leaves it open when the server died under it)."""
    m = imaplib.IMAP4(host.ip, host.ports["imap"], timeout=TIMEOUT)
    try:
        m.login(user, PASSWORD)
        yield m
        m.logout()
    finally:
        with contextlib.suppress(OSError):
            m.file.close()
        m.sock.close()


def read_uids(m: imaplib.IMAP4, user: str, ledger: Ledger) -> None:
    typ, _ = m.select("INBOX", readonly=True)
    if typ != "OK":
        raise imaplib.IMAP4.error(f"select: {typ}")
    raw = m.untagged_responses["UIDVALIDITY"][0]
    validity = int(raw if isinstance(raw, bytes) else raw[0])
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"fetch: {data!r}")
    for item in data:
        if isinstance(item, tuple):
            uid, mid = _UID.search(item[0]), _MID.search(item[1])
            if uid and mid:
                ledger.saw(user, validity, int(uid.group(1)), mid.group(1).decode())
    with ledger.lock:
        ledger.fetches += 1
