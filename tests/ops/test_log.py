"""``mailstack log ID``: one message through the mail log, across accept, queue and delivery.

End to end: alice submits a message for a domain with a null MX (RFC 7505); the queue runner
bounces it at once and delivers the bounce (a new queue id, ``dsn=`` on the bounce line)
to alice's INBOX. ``mailstack log`` reads what ``serve`` wrote and follows the message
through all of it, and through nothing else. The id links themselves (``orig_id=``,
``dsn=``) and the quoting are checked against lines made by ``maillog.format_event``.
"""

from __future__ import annotations

import gzip
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from mailstack.maillog import follow, format_event, parse
from tests.auth.conftest import ALICE, BOB, PASSWORD
from tests.dnsserver import TestDNS
from tests.ops.conftest import ports_for, running, write_config


def mailstack_log(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailstack", "log", *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=60, env={**os.environ})


def test_follow_a_message_from_submission_to_its_bounce_in_the_inbox(tmp_path: Path) -> None:
    with TestDNS() as dns:
        dns.add("nomail.test", "MX", "0 .")  # RFC 7505: this domain accepts no mail
        ports = ports_for("smtp", "submission")
        conf = write_config(tmp_path, ports, extra=f'[dns]\nnameservers = ["{dns.address}"]\n')
        inbox = tmp_path / "mailboxes" / "example.test" / "alice" / "new"
        with running(conf, ports, services=("smtp", "submission", "queue")):
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=20) as s:  # another message, not followed
                s.sendmail("x@elsewhere.test", [BOB], b"Subject: other\r\n\r\nother\r\n")
            with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=20) as s:
                s.login(ALICE, PASSWORD)
                s.mail(ALICE)
                s.rcpt("friend@nomail.test")
                code, reply = s.data(f"From: {ALICE}\r\nSubject: out\r\n\r\nout\r\n".encode())
            assert code == 250
            (qid,) = re.findall(rb"queued as ([0-9A-F]{18})", reply)
            deadline = time.monotonic() + 60
            while not (inbox.is_dir() and any(inbox.iterdir())) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert inbox.is_dir() and any(inbox.iterdir()), "the bounce never reached alice"
    log = (tmp_path / "serve.log").read_text()

    done = mailstack_log(qid.decode(), str(tmp_path / "serve.log"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    events = [(f["event"], f["id"], f["service"]) for f in map(parse, lines) if f]
    assert len(events) == len(lines)  # every line printed is a mail-log line
    q = qid.decode()
    assert ("accepted", q, "submission") in events
    assert ("queued", q, "submission") in events
    (bounce,) = [parse(line) for line in lines if "event=bounced" in line]
    assert bounce is not None and bounce["id"] == q and bounce["service"] == "queue"
    dsn = bounce["dsn"]
    assert re.fullmatch(r"[0-9A-F]{18}", dsn)
    assert ("delivered", dsn, "queue") in events  # the bounce, delivered to alice under its own id
    assert [e[0] for e in events].index("accepted") < [e[0] for e in events].index("bounced")
    assert all(BOB not in line for line in lines)  # the other message is not followed
    assert f"to=<{BOB}>" in log  # ... though it is in the log

    # the same from standard input (journalctl ... | mailstack log ID) and from a rotated .gz
    piped = mailstack_log(q.lower(), stdin=log)
    assert piped.returncode == 0 and piped.stdout == done.stdout
    gz = tmp_path / "mail.log.1.gz"
    gz.write_bytes(gzip.compress(log.encode()))
    assert mailstack_log(q, str(gz)).stdout == done.stdout


def test_nothing_found_and_bad_usage(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("INFO mailstack.serve: ready\n")
    nothing = mailstack_log("18C2F4A51B3E000001", str(empty))
    assert nothing.returncode == 1 and nothing.stderr == "mailstack: no mail-log line about 18C2F4A51B3E000001\n"
    bad = mailstack_log("not-an-id", str(empty))
    assert bad.returncode == 2 and "not a queue id" in bad.stderr
    missing = mailstack_log("18C2F4A51B3E000001", str(tmp_path / "nope.log"))
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def _line(event: str, qid: str | None, **extra: object) -> str:
    return "2026-12-01T10:00:00+0000 mx mailstack[7]: INFO mailstack.maillog: " + format_event(
        event, queue_id=qid, service="smtp", client="192.0.2.7", sender="a@example.org",
        recipients=["u@example.test"], size=10, status="ok", reply="250 2.0.0 OK", **extra) + "\n"


A, B, C, D = "18C2F4A51B3E0000AA", "18C2F4A51B3E0000BB", "18C2F4A51B3E0000CC", "18C2F4A51B3E0000DD"


def test_follow_takes_the_links_the_log_states() -> None:
    lines = [
        _line("accepted", A),
        _line("queued", B, orig_id=A),  # the MX's local retry: a new id
        _line("accepted", C),  # someone else
        _line("delivered", B, delay="1.5"),
        _line("bounced", A, dsn=D),
        _line("delivered", D),
        # a client's text holding " id=C" is quoted: it links nothing
        _line("rejected", None, user=f"x id={C}"),
    ]
    assert list(follow(lines, A.lower())) == [lines[0], lines[1], lines[3], lines[4], lines[5]]
    assert list(follow(lines, C)) == [lines[2]]
    assert parse(lines[6])["user"] == f"x id={C}"  # type: ignore[index]
