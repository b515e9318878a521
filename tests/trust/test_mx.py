"""End to end through the real MX (smtplib on loopback, test DNS): the checks at the end of DATA."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import authres  # type: ignore[import-untyped]
import pytest

from mailstack.dns import DNSPythonResolver
from mailstack.mail import dkim
from mailstack.mail.authcheck import verify_dkim
from tests.dnsserver import TestDNS
from tests.smtp.conftest import MXServer, make_server
from tests.trust.conftest import REMOTE, message, publish_remote


@pytest.fixture
def mx_with_dns(tmp_path: Path, dns: TestDNS) -> Iterator[Any]:
    made: list[MXServer] = []

    def factory(**checks: Any) -> MXServer:
        checks = {"ignore_networks": [], **checks}  # these tests' remote MTA is on loopback
        s = make_server(tmp_path / str(len(made)), dns={"nameservers": [dns.address], "timeout": 2},
                        checks=checks)
        made.append(s)
        return s

    try:
        yield factory
    finally:
        for s in made:
            s.close()


def send(mx: MXServer, msg: bytes, mail_from: str = f"alice@{REMOTE}", to: str = "bob@example.test") -> None:
    with mx.client() as c:
        c.sendmail(mail_from, [to], msg)


def raw(error: object) -> bytes:
    """smtplib's error text (bytes at run time, though typeshed says str)."""
    return error if isinstance(error, bytes) else str(error).encode()


def top_fields(stored: bytes) -> list[bytes]:
    head = stored.split(b"\n\n", 1)[0]
    return head.replace(b"\n\t", b"\t").split(b"\n")  # one item per field, unfolded


def test_signed_remote_mail_passes(mx_with_dns: Any, dns: TestDNS, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    mx = mx_with_dns()
    signed = dkim.sign(message(), [remote_key])
    send(mx, signed)
    [stored] = mx.messages("bob")
    fields = top_fields(stored)
    ar = [f for f in fields if f.lower().startswith(b"authentication-results:")]
    assert len(ar) == 1
    parsed = authres.AuthenticationResultsHeader.parse(ar[0].decode())
    assert parsed.authserv_id == "mx.example.test"
    assert [(r.method, r.result) for r in parsed.results] == [("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")]
    # the message as stored still verifies: our header did not break the signature
    sigs = asyncio.run(verify_dkim(stored.replace(b"\n", b"\r\n"), DNSPythonResolver([dns.address])))
    assert [s.result for s in sigs] == ["pass"]
    assert mx.messages("bob", folder="Junk") == []


def test_forged_from_of_reject_domain_is_refused(mx_with_dns: Any, dns: TestDNS, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    mx = mx_with_dns()
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(mx, message(), mail_from="attacker@evil.test")
    assert e.value.smtp_code == 550 and raw(e.value.smtp_error).startswith(b"5.7.1")
    assert mx.messages("bob") == []


def test_reject_as_quarantine_when_configured(mx_with_dns: Any, dns: TestDNS, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    mx = mx_with_dns(dmarc_reject="quarantine")
    send(mx, message(), mail_from="attacker@evil.test")
    assert mx.messages("bob") == [] and len(mx.messages("bob", folder="Junk")) == 1


def test_quarantine_lands_in_junk(mx_with_dns: Any, dns: TestDNS, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key, policy="quarantine")
    mx = mx_with_dns()
    send(mx, message(), mail_from="attacker@evil.test", to="team@example.test")  # alias: alice and bob
    for user in ("alice", "bob"):
        assert mx.messages(user) == []
        [stored] = mx.messages(user, folder="Junk")
        assert b"dmarc=fail (p=quarantine dis=quarantine) header.from=remote.test" in stored
        assert "Junk" in mx.maildir(user).list_folders()
        assert "Junk" in mx.maildir(user).list_subscriptions()


def test_spoofed_authentication_results_is_stripped(mx_with_dns: Any, dns: TestDNS,
                                                    remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key, policy="none")
    mx = mx_with_dns()
    forged = (b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test;\r\n"
              b"\tdmarc=pass header.from=bank.test\r\n"
              b"Authentication-Results: elsewhere.test; spf=pass smtp.mailfrom=x@elsewhere.test\r\n")
    send(mx, forged + message(), mail_from="attacker@evil.test")
    [stored] = mx.messages("bob")
    assert b"bank.test" not in stored
    assert b"Authentication-Results: elsewhere.test;" in stored
    assert stored.count(b"Authentication-Results: mx.example.test;") == 1


def test_dns_failure_is_451(mx_with_dns: Any, dns: TestDNS, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    dns.servfail.add(f"_dmarc.{REMOTE}")
    mx = mx_with_dns()
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(mx, dkim.sign(message(), [remote_key]))
    assert e.value.smtp_code == 451 and raw(e.value.smtp_error).startswith(b"4.4.3")
    assert mx.messages("bob") == []


def test_spf_fail_without_dmarc_is_marked_and_delivered(mx_with_dns: Any, dns: TestDNS) -> None:
    dns.add("plain.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    mx = mx_with_dns()
    send(mx, message(from_addr="carol@plain.test"), mail_from="carol@plain.test")
    [stored] = mx.messages("bob")
    assert b"spf=fail smtp.mailfrom=carol@plain.test" in stored


def test_checks_can_be_turned_off(mx_with_dns: Any, dns: TestDNS, remote_key: dkim.DKIMKey) -> None:
    publish_remote(dns, remote_key)
    mx = mx_with_dns(enabled=False)
    send(mx, message(), mail_from="attacker@evil.test")
    [stored] = mx.messages("bob")
    assert b"Authentication-Results" not in stored


def test_mail_log_has_the_results(mx_with_dns: Any, dns: TestDNS, remote_key: dkim.DKIMKey,
                                  caplog: pytest.LogCaptureFixture) -> None:
    publish_remote(dns, remote_key, policy="quarantine")
    mx = mx_with_dns()
    with caplog.at_level("INFO", logger="mailstack.maillog"):
        send(mx, dkim.sign(message(), [remote_key]))
        send(mx, message(), mail_from="attacker@evil.test")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=accepted")]
    assert len(lines) == 2
    assert 'auth="spf=pass dkim=pass dmarc=pass"' in lines[0] and "folder=" not in lines[0]
    assert "dmarc=fail" in lines[1] and "folder=Junk" in lines[1]


def test_submission_is_not_checked(dns: TestDNS, tmp_path: Path) -> None:
    """Our own users' mail (submission, authenticated) skips the checks; the MX does not."""
    from mailstack.service import ServiceContext, limits_for
    from mailstack.smtp import submission
    from tests.helpers import free_port

    dns.add("example.test", "TXT", "v=spf1 -all")  # nobody may send as example.test ...
    dns.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")  # ... and failures are refused
    port = free_port()
    mx = make_server(tmp_path / "sub", dns={"nameservers": [dns.address], "timeout": 2},
                     submission={"listen": [f"127.0.0.1:{port}"]}, checks={"ignore_networks": []})
    try:
        ctx = ServiceContext(config=mx.config, directory=mx.directory, tls=mx.tls,
                             limits=limits_for(mx.config, "submission"))
        mx.services.append(mx.call(submission.start(ctx)))
        msg = message(from_addr="alice@example.test")
        with smtplib.SMTP("127.0.0.1", port, local_hostname="laptop.example.org", timeout=15) as c:
            c.login("alice@example.test", "secret")
            c.sendmail("alice@example.test", ["bob@example.test"], msg)
        [stored] = mx.messages("bob")
        assert b"Authentication-Results" not in stored
        with pytest.raises(smtplib.SMTPDataError) as e:  # the same mail from outside: refused
            send(mx, msg, mail_from="alice@example.test")
        assert e.value.smtp_code == 550
    finally:
        mx.close()


def test_loopback_clients_are_not_checked_by_default(tmp_path: Path) -> None:
    """Like OpenDMARC's IgnoreHosts: local programs (and the README's tour) on loopback
    deliver even with no working DNS at all; anyone else would get 451 4.4.3."""
    from tests.helpers import free_port

    dead_dns = f"127.0.0.1:{free_port()}"  # nothing answers there
    for ignore, expect in ((None, 250), ([], 451)):
        checks: dict[str, Any] = {} if ignore is None else {"ignore_networks": ignore}
        mx = make_server(tmp_path / f"x{expect}", dns={"nameservers": [dead_dns], "timeout": 0.5}, checks=checks)
        try:
            assert mx.config.checks.enabled
            with mx.client() as c:
                code, _ = c.ehlo("client.example")
                c.mail(f"alice@{REMOTE}")
                c.rcpt("bob@example.test")
                code, _ = c.data(message())
            assert code == expect
            if expect == 250:
                (only,) = mx.messages("bob")
                assert b"Authentication-Results" not in only
        finally:
            mx.close()
