"""Forwards that still arrive: SRS sender and ARC seal on mail to a remote alias target.

A real stack (the MX and the queue runner) forwards ``fwd@example.test`` to
``dave@remote.test``, a sink MX on 127.0.0.23 reached through the loopback DNS:

- the forward leaves with an ``SRS0=...@example.test`` sender and an ARC set that
  dkimpy's ``arc_verify`` passes there, with the key published in the test DNS, over the
  Authentication-Results our MX wrote;
- a bounce to that SRS address (null sender) is routed to the original sender, at its
  own MX; a forged or altered SRS address is ``550 5.1.1``; a non-bounce to it ``550 5.7.1``;
- a sender of one of our own domains is left as it is (our SPF covers it).
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy  # type: ignore[import-untyped]
import dns.message
import dns.query
import dns.rdatatype
import pytest

from mailstack.config import Config
from mailstack.mail import dkim
from tests.dnsserver import TestDNS
from tests.helpers import free_port
from tests.outbound.conftest import Remote, Stack, make_config


@pytest.fixture(params=["in-process", "lmtp"])
def fwd_cfg(request: pytest.FixtureRequest, tmp_path: Path, dns: TestDNS, remote: Remote) -> Config:
    """The MX delivering in-process, or through our LMTP service (``[smtp] mda``): the
    forward is made by whichever delivers, the SRS bounce is read back by the MX."""
    dns.add("sender.test", "MX", "10 mx.remote.test")
    smtp: dict[str, Any] = {"listen": [f"127.0.0.1:{free_port()}"]}
    sections: dict[str, Any] = {}
    if request.param == "lmtp":
        lmtp = f"127.0.0.1:{free_port()}"
        smtp["mda"] = lmtp
        sections["lmtp"] = {"listen": [lmtp]}
    return make_config(tmp_path, dns, remote.port, smtp=smtp, checks={"ignore_networks": []}, **sections)


@pytest.fixture
def fwd_stack(fwd_cfg: Config, dns: TestDNS) -> Iterator[Stack]:
    from mailstack.directory import Directory

    d = Directory(fwd_cfg.database.url)
    d.migrate()
    d.add_domain("example.test")
    d.add_user("alice@example.test", "correct horse battery staple")
    d.add_alias("fwd@example.test", ["dave@remote.test"])
    key = dkim.generate_key(fwd_cfg.queue.dkim_dir, "example.test", "arc")
    dns.add(key.record_name, "TXT", dkim.txt_record(key))
    s = Stack(fwd_cfg, d, ("smtp", "queue") + (("lmtp",) if fwd_cfg.smtp.mda else ()))
    yield s
    s.stop()
    d.close()


def _dnsfunc(dns_server: TestDNS) -> Any:
    host, port = dns_server.address.rsplit(":", 1)

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        q = dns.message.make_query(name.decode().rstrip("."), dns.rdatatype.TXT)
        answer = dns.query.tcp(q, host, port=int(port), timeout=timeout)
        for rrset in answer.answer:
            for rr in rrset:
                return b"".join(rr.strings)
        return b""

    return lookup


def _wait_for(remote: Remote, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(remote.messages) < count:
        assert time.monotonic() < deadline, f"the remote MX got {len(remote.messages)} of {count} messages"
        time.sleep(0.05)


MESSAGE = (b"From: Carol <carol@sender.test>\r\nTo: fwd@example.test\r\nSubject: forwarded\r\n"
           b"Message-ID: <fwd-1@sender.test>\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n\r\nHello through a forward.\r\n")


def test_forward_srs_arc_and_bounce_round_trip(fwd_stack: Stack, fwd_cfg: Config, remote: Remote,
                                              dns: TestDNS) -> None:
    port = fwd_cfg.smtp.listen[0].port
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("mx.sender.test")
        c.sendmail("carol@sender.test", ["fwd@example.test"], MESSAGE)
    _wait_for(remote, 1)
    got = remote.messages[0]
    assert got.recipients == ["dave@remote.test"]
    assert got.sender.startswith("SRS0=") and got.sender.endswith("=sender.test=carol@example.test"), got.sender
    # ARC (RFC 8617): one set, instance 1, cv=none, over our Authentication-Results
    assert got.data.startswith(b"ARC-Seal: i=1;"), got.data[:200]
    assert b"ARC-Authentication-Results: i=1; mx.example.test;" in got.data
    cv, results, reason = dkimpy.arc_verify(got.data, dnsfunc=_dnsfunc(dns))
    assert cv == b"pass", (cv, reason, results)
    assert results[0]["as-domain"] == b"example.test"

    srs_address = got.sender
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("mx.remote.test")
        # forged: the hash changed, or the address altered under a good hash
        forged = srs_address[:5] + ("A" if srs_address[5] != "A" else "B") + srs_address[6:]
        c.mail("<>")
        assert c.rcpt(forged)[0] == 550
        assert c.rcpt(srs_address.replace("=carol@", "=mallory@"))[0] == 550
        c.rset()
        # not a bounce: refused
        c.mail("spammer@elsewhere.test")
        code, text = c.rcpt(srs_address)
        assert (code, text[:5]) == (550, b"5.7.1")
        c.rset()
        bounce = (b"From: MAILER-DAEMON@mx.remote.test\r\nTo: " + srs_address.encode() +
                  b"\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\ndave is gone\r\n")
        c.mail("<>")
        assert c.rcpt(srs_address)[0] == 250
        assert c.data(bounce)[0] == 250
    _wait_for(remote, 2)
    back = remote.messages[1]
    assert (back.sender, back.recipients) == ("<>", ["carol@sender.test"])  # aiosmtpd's null sender
    assert b"dave is gone" in back.data

    # a sender of our own domain keeps its address
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.sendmail("alice@example.test", ["fwd@example.test"], MESSAGE.replace(b"carol@sender.test",
                                                                               b"alice@example.test"))
    _wait_for(remote, 3)
    assert remote.messages[2].sender == "alice@example.test"


def test_a_chain_that_arrives_is_verified_and_sealed_again(fwd_stack: Stack, fwd_cfg: Config, remote: Remote,
                                                          dns: TestDNS, tmp_path: Path) -> None:
    # a mailing list (list.test) sealed the message before it reached us
    key = dkim.generate_key(tmp_path / "listkeys", "list.test", "lst")
    dns.add(key.record_name, "TXT", dkim.txt_record(key))
    listed = b"Authentication-Results: mx.list.test; spf=pass smtp.mailfrom=carol@sender.test\r\n" + MESSAGE
    sealed = b"".join(dkimpy.arc_sign(listed, b"lst", b"list.test", key.private, b"mx.list.test")) + listed
    assert dkimpy.arc_verify(sealed, dnsfunc=_dnsfunc(dns))[0] == b"pass"
    with smtplib.SMTP("127.0.0.1", fwd_cfg.smtp.listen[0].port, timeout=10) as c:
        c.sendmail("list-bounces@list.test", ["fwd@example.test"], sealed)
    _wait_for(remote, 1)
    got = remote.messages[0]
    assert got.sender.endswith("=list.test=list-bounces@example.test")
    assert got.data.startswith(b"ARC-Seal: i=2;") and b"cv=pass" in got.data.split(b"\r\n\r\n")[0]
    assert b"arc=pass" in got.data  # our A-R, carried into ARC-Authentication-Results i=2
    cv, results, reason = dkimpy.arc_verify(got.data, dnsfunc=_dnsfunc(dns))
    assert cv == b"pass", (cv, reason)
    assert [r["as-domain"] for r in results] == [b"example.test", b"list.test"]

    # the same chain with the body changed on the way: our A-R says arc=fail, the seal cv=fail
    broken = sealed.replace(b"Hello through a forward.", b"Hello, altered.")
    with smtplib.SMTP("127.0.0.1", fwd_cfg.smtp.listen[0].port, timeout=10) as c:
        c.sendmail("list-bounces@list.test", ["fwd@example.test"], broken)
    _wait_for(remote, 2)
    assert b"arc=fail" in remote.messages[1].data
    assert remote.messages[1].data.startswith(b"ARC-Seal: i=2; cv=fail;")  # RFC 8617 §5.1.1
    cv, _results, reason = dkimpy.arc_verify(remote.messages[1].data, dnsfunc=_dnsfunc(dns))
    assert cv != b"pass" and "reported failure" in reason  # dkimpy: a cv=fail seal ends the chain
