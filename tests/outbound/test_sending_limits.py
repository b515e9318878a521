"""Per-user sending limits on submission (smtp/sendlimits.py), over real SMTP: messages per
hour at MAIL FROM, recipients per day at RCPT TO, counted in the directory database so a
second service (another process or host) and a restart see the same counts."""

from __future__ import annotations

import logging
import smtplib
from pathlib import Path
from typing import Any

import pytest

from mailstack.smtp.sendlimits import SendingLimits, periods
from tests.dnsserver import TestDNS
from tests.outbound.conftest import Remote, Stack, submission_config
from tests.outbound.test_submission import ALICE, tls_ctx

BOB = ("bob@example.test", "bob password 123")


def _client(stack: Stack, who: tuple[str, str]) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", stack.cfg.submission.listen[0].port, timeout=10)
    c.starttls(context=tls_ctx())
    c.ehlo("client.test")
    c.login(*who)
    return c


def _send(c: smtplib.SMTP, sender: str, rcpts: list[str]) -> tuple[int, bytes]:
    code, text = c.mail(sender)
    if code != 250:
        return code, text
    for r in rcpts:
        code, text = c.rcpt(r)
        if code != 250:
            c.rset()
            return code, text
    msg = f"From: <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: limits\r\n\r\nHello.\r\n"
    return c.data(msg.encode())


@pytest.fixture
def limited(tmp_path: Path, dns: TestDNS, remote: Remote, directory: Any) -> Any:
    stacks: list[Stack] = []

    def start() -> Stack:  # each on its own ports, all on one directory database
        scfg = submission_config(tmp_path, dns, remote.port,
                                 submission={"max_messages_per_hour": 3, "max_recipients_per_day": 5})
        s = Stack(scfg, directory, ("submission", "queue"))
        stacks.append(s)
        return s

    yield start
    for s in stacks:
        s.stop()


def test_messages_per_hour(limited: Any, caplog: pytest.LogCaptureFixture) -> None:
    stack = limited()
    with _client(stack, ALICE) as c:
        for _ in range(3):
            assert _send(c, ALICE[0], ["x@remote.test"])[0] == 250
        with caplog.at_level(logging.INFO, logger="mailstack.maillog"):
            code, text = c.mail(ALICE[0])
        assert (code, text) == (451, b"4.7.1 Sending limit reached: 3 messages per hour; try again later")
        assert any("status=rate_limited" in r.getMessage() and "user=alice@example.test" in r.getMessage()
                   for r in caplog.records)
    with _client(stack, BOB) as c:  # per user: bob still sends
        assert _send(c, BOB[0], ["x@remote.test"])[0] == 250


def test_recipients_per_day_counted_across_services(limited: Any) -> None:
    first = limited()
    with _client(first, ALICE) as c:
        assert _send(c, ALICE[0], ["a@remote.test", "b@remote.test", "c@remote.test"])[0] == 250
        assert c.mail(ALICE[0])[0] == 250
        assert c.rcpt("d@remote.test")[0] == 250
        assert c.rcpt("e@remote.test")[0] == 250  # 3 sent + 2 in this transaction: 5, the limit
        assert c.rcpt("f@remote.test") == (451, b"4.7.1 Sending limit reached: 5 recipients per day; try again later")
        c.rset()  # nothing of this transaction was sent: nothing counted
    second = limited()  # another service on the same directory: a second process or host
    with _client(second, ALICE) as c:
        assert _send(c, ALICE[0], ["d@remote.test", "e@remote.test"])[0] == 250  # 3 + 2 = 5: the last allowed
        assert _send(c, ALICE[0], ["f@remote.test"])[0] == 451


def test_refused_messages_do_not_count(limited: Any, directory: Any) -> None:
    stack = limited()
    with _client(stack, ALICE) as c:
        code, _ = c.mail("bob@example.test")  # not alice's address: 553, nothing counted
        assert code == 553
        assert _send(c, ALICE[0], ["x@remote.test"])[0] == 250
    hour, day = periods(__import__("time").time())
    got = directory.sending_usage(ALICE[0], [hour, day])
    assert got[hour] == (1, 1) and got[day] == (1, 1)


def test_the_policy() -> None:
    lim = SendingLimits(messages_per_hour=2, recipients_per_day=10)
    assert lim.at_mail(1) is None and lim.at_mail(2) is not None
    assert lim.at_rcpt(9, 0) is None and lim.at_rcpt(9, 1) is not None and lim.at_rcpt(0, 10) is not None
    off = SendingLimits(0, 0)
    assert not off.enabled and off.at_mail(10**6) is None and off.at_rcpt(10**6, 10**6) is None
    assert periods(0) == ("h1970010100", "d19700101")
