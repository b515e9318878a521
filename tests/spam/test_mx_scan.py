"""The MX scanning with a real rspamd (tests/spam/rspamd_peer.py), end to end over smtplib.

Every verdict of the contract (reject, greylist, add header, rewrite subject, no action),
the headers written and the forged ones removed, who is not scanned (ignored networks,
submission, LMTP), and never losing mail to the filter: rspamd down, slow, or answering
garbage -> delivered unscanned with a header and a warning, or 451 with fail_mode = defer.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.smtp.conftest import MXServer, make_server
from tests.spam.rspamd_peer import GTUBE, Rspamd

DOMAIN = "example.test"


def message(body: bytes, subject: str = "Quarterly figures", extra: bytes = b"") -> bytes:
    return (b"From: Sam <sam@sender.test>\r\nTo: bob@example.test\r\nSubject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + str(time.monotonic_ns()).encode() + b"@sender.test>\r\n" + extra +
            b"\r\n" + body + b"\r\n")


def send(mx: MXServer, msg: bytes, to: str = "bob@example.test") -> tuple[int, bytes]:
    with mx.client() as c:
        c.ehlo("client.sender.test")
        c.mail("sam@sender.test")
        c.rcpt(to)
        code, text = c.data(msg)
    return code, text


def fields(stored: bytes) -> dict[str, list[str]]:
    head = stored.split(b"\n\n", 1)[0].replace(b"\n\t", b" ").replace(b"\n ", b" ")
    out: dict[str, list[str]] = {}
    for line in head.decode().split("\n"):
        name, _, value = line.partition(":")
        out.setdefault(name.lower(), []).append(value.strip())
    return out


# -- the verdicts ----------------------------------------------------------------------


def test_gtube_is_rejected_with_rspamds_message(spam_mx: Any) -> None:
    mx = spam_mx()
    code, text = send(mx, message(GTUBE))
    assert (code, text[:5]) == (550, b"5.7.1")
    assert b"Gtube pattern" in text  # rspamd's smtp_message
    assert mx.messages("bob") == [] and mx.messages("bob", "Junk") == []


def test_add_header_goes_to_junk_with_spam_headers_and_forged_ones_removed(spam_mx: Any) -> None:
    mx = spam_mx()
    forged = b"X-Spam-Status: No, score=-100\r\nX-Spam: No\r\nX-Rspamd-Action: no action\r\n"
    code, _ = send(mx, message(b"hello SPAMMYWORD, buy now", extra=forged))
    assert code == 250
    assert mx.messages("bob") == []
    [stored] = mx.messages("bob", "Junk")
    f = fields(stored)
    assert f["x-spam"] == ["Yes"]
    assert f["x-spam-status"] == ["Yes, score=8.00 required=15.00"]
    assert f["x-spam-score"] == ["8.00"]
    assert f["x-rspamd-action"] == ["add header"]
    assert "MAILSTACK_TEST_SPAMMY(8.00)" in f["x-rspamd-symbols"][0]
    assert len(f["x-rspamd-queue-id"]) == 1
    # the Junk folder was made (Dovecot's layout) and is the \Junk special-use one by name
    assert (mx.maildir("bob").root / ".Junk" / "cur").is_dir()
    assert "Junk" in mx.maildir("bob").list_subscriptions()


def test_a_junk_folder_of_another_name_is_made_with_the_junk_special_use(spam_mx: Any) -> None:
    mx = spam_mx(checks={"enabled": False, "ignore_networks": [], "junk_folder": "Spam"})
    assert send(mx, message(b"SPAMMYWORD"))[0] == 250
    assert len(mx.messages("bob", "Spam")) == 1
    assert mx.maildir("bob").special_use("Spam") == ("\\Junk",)  # LIST shows it as \Junk (RFC 6154)


def test_rewrite_subject_goes_to_junk_with_rspamds_subject(spam_mx: Any) -> None:
    mx = spam_mx()
    code, _ = send(mx, message(b"a SUBJWORD offer", subject="Lunch?"))
    assert code == 250
    [stored] = mx.messages("bob", "Junk")
    f = fields(stored)
    assert f["subject"] == ["***SPAM*** Lunch?"]
    assert f["x-rspamd-action"] == ["rewrite subject"] and f["x-spam"] == ["Yes"]


def test_greylist_is_a_temporary_failure(spam_mx: Any) -> None:
    mx = spam_mx()
    code, text = send(mx, message(b"some GREYWORD text"))
    assert (code, text[:5]) == (451, b"4.7.1")
    assert mx.messages("bob") == [] and mx.messages("bob", "Junk") == []


def test_clean_mail_goes_to_inbox_with_the_score_header(spam_mx: Any) -> None:
    mx = spam_mx()
    code, _ = send(mx, message(b"Figures attached, see you Monday.", extra=b"X-Spam: Yes\r\nX-Spam-Flag: YES\r\n"))
    assert code == 250
    [stored] = mx.messages("bob")
    f = fields(stored)
    assert f["x-spam-status"][0].startswith("No, score=")
    assert f["x-rspamd-action"] == ["no action"]
    assert "x-spam" not in f and "x-spam-flag" not in f  # the forged ones are gone
    assert mx.messages("bob", "Junk") == []


def test_every_recipient_gets_the_verdict(spam_mx: Any) -> None:
    mx = spam_mx()
    with mx.client() as c:
        c.sendmail("sam@sender.test", ["bob@example.test", "alice@example.test"], message(b"SPAMMYWORD"))
    assert len(mx.messages("bob", "Junk")) == 1 and len(mx.messages("alice", "Junk")) == 1
    assert mx.messages("bob") == [] and mx.messages("alice") == []


# -- who is not scanned ---------------------------------------------------------------------


def test_ignored_networks_are_not_scanned(tmp_path: Path, rspamd: Rspamd) -> None:
    """Default ignore_networks (loopback): local programs are trusted, as for the checks."""
    mx = make_server(tmp_path, spam={"rspamd_url": rspamd.url}, checks={"enabled": False})
    try:
        code, _ = send(mx, message(GTUBE, extra=b"X-Spam: Yes\r\n"))
        assert code == 250
        [stored] = mx.messages("bob")
        assert b"X-Spam: Yes" in stored and b"X-Rspamd" not in stored  # untouched
    finally:
        mx.close()


def test_lmtp_and_submission_are_not_scanned(tmp_path: Path, rspamd: Rspamd) -> None:
    from mailstack.service import ServiceContext, limits_for
    from mailstack.smtp import submission

    port = free_port()
    mx = make_server(tmp_path, spam={"rspamd_url": rspamd.url}, submission={"listen": [f"127.0.0.1:{port}"]},
                     checks={"enabled": False, "ignore_networks": []})
    try:
        ctx = ServiceContext(config=mx.config, directory=mx.directory, tls=mx.tls,
                             limits=limits_for(mx.config, "submission"))
        mx.services.append(mx.call(submission.start(ctx)))
        msg = message(GTUBE).replace(b"From: Sam <sam@sender.test>", b"From: alice@example.test")
        with smtplib.SMTP("127.0.0.1", port, local_hostname="laptop.example.org", timeout=15) as c:
            c.login("alice@example.test", "secret")
            c.sendmail("alice@example.test", ["bob@example.test"], msg)
        with mx.lmtp_client() as c:
            c.sendmail("sam@sender.test", ["bob@example.test"], message(GTUBE))
        stored = mx.messages("bob")
        assert len(stored) == 2 and all(b"X-Rspamd" not in s and b"X-Spam" not in s for s in stored)
        assert b"GTUBE" in stored[0]
        # ... while the same message from outside on the MX is refused
        code, _ = send(mx, message(GTUBE))
        assert code == 550
    finally:
        mx.close()


# -- never losing mail to the filter ---------------------------------------------------------


class _BadPeer:
    """A TCP peer on loopback that accepts and then stays silent ("slow") or answers garbage."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "garbage":
                conn.settimeout(5)
                try:
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        buf += conn.recv(65536)
                    body = b"this is not JSON {"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                                 % (len(body), body))
                except OSError:
                    pass
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def bad_peer() -> Iterator[Any]:
    made: list[_BadPeer] = []

    def factory(mode: str) -> _BadPeer:
        made.append(_BadPeer(mode))
        return made[-1]

    yield factory
    for p in made:
        p.close()


@pytest.mark.parametrize("what", ["down", "slow", "garbage"])
def test_rspamd_failing_delivers_unscanned_with_a_header_and_a_warning(
        spam_mx: Any, bad_peer: Any, what: str, caplog: pytest.LogCaptureFixture) -> None:
    url = {"down": f"http://127.0.0.1:{free_port()}",  # nothing listens there
           "slow": f"http://127.0.0.1:{bad_peer('slow').port}" if what == "slow" else "",
           "garbage": f"http://127.0.0.1:{bad_peer('garbage').port}" if what == "garbage" else ""}[what]
    mx = spam_mx(rspamd_url=url, timeout=0.5)
    caplog.set_level(logging.WARNING, logger="mailstack.spam")
    start = time.monotonic()
    code, _ = send(mx, message(b"SPAMMYWORD (would be junk)", extra=b"X-Spam-Scanned: yes\r\n"))
    assert code == 250
    assert time.monotonic() - start < 10  # bounded by [spam] timeout, not hanging
    [stored] = mx.messages("bob")  # INBOX: no verdict, no Junk
    f = fields(stored)
    reason = {"down": "cannot connect", "slow": "timed out after 0.5 s", "garbage": "not JSON"}[what]
    assert len(f["x-spam-scanned"]) == 1 and f["x-spam-scanned"][0].startswith("no (")
    assert reason in f["x-spam-scanned"][0]
    assert any("no verdict" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_fail_mode_defer_gives_451(spam_mx: Any) -> None:
    mx = spam_mx(rspamd_url=f"http://127.0.0.1:{free_port()}", fail_mode="defer")
    code, text = send(mx, message(b"hello"))
    assert (code, text[:5]) == (451, b"4.7.1")
    assert mx.messages("bob") == []


def test_a_slow_rspamd_does_not_stop_other_sessions(spam_mx: Any, bad_peer: Any) -> None:
    """The scan waits without blocking the loop: another client gets its banner meanwhile."""
    mx = spam_mx(rspamd_url=f"http://127.0.0.1:{bad_peer('slow').port}", timeout=3)
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(send(mx, message(b"x"))[0]))
    t.start()
    time.sleep(0.5)  # the first session is waiting for rspamd now
    start = time.monotonic()
    with mx.client() as c:
        assert c.noop()[0] == 250
    assert time.monotonic() - start < 2
    t.join(15)
    assert done == [250]


# -- our SPF/DKIM/DMARC results go to rspamd ----------------------------------------------


def test_our_auth_results_are_handed_to_rspamd(tmp_path: Path, rspamd: Rspamd, dns: TestDNS) -> None:
    """rspamd's SPF/DKIM/DMARC rules are switched off for the scan and our results inserted:
    R_SPF_ALLOW from our SPF pass, and no R_SPF_DNSFAIL although rspamd's DNS is dead."""
    dns.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=none")
    mx = make_server(tmp_path, spam={"rspamd_url": rspamd.url}, checks={"ignore_networks": []},
                     dns={"nameservers": [dns.address], "timeout": 2})
    try:
        code, _ = send(mx, message(b"SPAMMYWORD"))
        assert code == 250
        [stored] = mx.messages("bob", "Junk")
        symbols = fields(stored)["x-rspamd-symbols"][0]
        assert "R_SPF_ALLOW" in symbols and "R_DKIM_NA" in symbols and "DMARC_POLICY_ALLOW" in symbols
        assert "DNSFAIL" not in symbols
        assert b"spf=pass" in stored  # and our Authentication-Results is there as before
    finally:
        mx.close()


@pytest.fixture
def dns() -> Iterator[TestDNS]:
    with TestDNS() as server:
        yield server


def test_scan_of_many_sessions_at_once(spam_mx: Any) -> None:
    """Ten sessions scanning at the same time all get their verdict (one HTTP session)."""
    mx = spam_mx()
    codes: list[int] = []

    def one(i: int) -> None:
        codes.append(send(mx, message(b"SPAMMYWORD" if i % 2 else b"plain text %d" % i))[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [250] * 10
    assert len(mx.messages("bob", "Junk")) == 5 and len(mx.messages("bob")) == 5


def test_stop_closes_the_http_session(spam_mx: Any) -> None:
    """No 'Unclosed client session' at stop (filterwarnings = error would turn it into a failure)."""
    mx = spam_mx()
    send(mx, message(b"hello"))
    mx.stop()
    mx.call(asyncio.sleep(0.05))
