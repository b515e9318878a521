"""REQUIRETLS (RFC 8689) through submission and the queue, end to end with smtplib."""

from __future__ import annotations

from pathlib import Path

from tests.outbound.conftest import Remote, Stack
from tests.outbound.test_submission import ALICE, MSG, client, wait_for


def inbox(stack: Stack) -> list[Path]:
    new = stack.cfg.storage.maildir_root / "example.test" / "alice" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def test_submitted_requiretls_mail_is_not_sent_to_an_unauthenticated_mx(stack: Stack, remote: Remote) -> None:
    with client(stack) as c:
        assert c.has_extn("requiretls")  # offered after STARTTLS
        c.login(*ALICE)
        c.sendmail("alice@example.test", ["x@remote.test"], MSG, mail_options=["REQUIRETLS"])
    # remote.test has neither MTA-STS nor DANE: nothing vouches for its MX, so the message
    # comes back to alice (5.7.10) and the plaintext sink never sees it
    assert wait_for(lambda: bool(inbox(stack)), 20)
    bounce = inbox(stack)[0].read_bytes()
    assert b"Status: 5.7.10" in bounce and b"REQUIRETLS" in bounce
    assert remote.messages == []


def test_without_requiretls_the_same_mail_goes_out(stack: Stack, remote: Remote) -> None:
    with client(stack) as c:
        c.login(*ALICE)
        c.sendmail("alice@example.test", ["x@remote.test"], MSG)
    assert wait_for(lambda: len(remote.messages) == 1, 20)
