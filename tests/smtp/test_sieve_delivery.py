"""Sieve at delivery, through the real MX and LMTP services: the user's active script
(``<maildir>/sieve/NAME.sieve`` behind ``.dovecot.sieve``) decides where the message goes.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest

from mailstack.mail import dkim
from mailstack.sieve.store import ScriptStore
from tests.smtp.conftest import MXServer

MSG = (b"From: Sender <s@example.org>\r\nTo: alice@example.test\r\nSubject: Invoice 42\r\n"
       b"Message-ID: <m1@example.org>\r\n\r\nPlease pay.\r\n")


def activate(mx: MXServer, user: str, script: str) -> ScriptStore:
    store = ScriptStore(mx.maildir(user).root)
    store.put("main", script.encode())
    store.activate("main")
    return store


def lmtp(mx: MXServer, rcpts: list[str], sender: str = "s@example.org") -> dict[str, tuple[int, bytes]]:
    with mx.lmtp_client() as c:
        return c.sendmail(sender, rcpts, MSG)


def queued(mx: MXServer) -> list[tuple[object, bytes]]:
    return [mx.queue.load(q) for q in mx.queue.list()]


def test_fileinto_existing_folder_via_lmtp(mx_server: MXServer) -> None:
    mx_server.maildir("alice").ensure()
    mx_server.maildir("alice").create_folder("Bills")
    activate(mx_server, "alice", 'require "fileinto"; if header :contains "subject" "invoice" { fileinto "Bills"; }')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert len(mx_server.messages("alice", "Bills")) == 1
    assert mx_server.messages("alice") == []
    assert b"Subject: Invoice 42" in mx_server.messages("alice", "Bills")[0]


def test_fileinto_missing_folder_keeps_in_inbox_unless_create(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'require "fileinto"; fileinto "Nowhere";')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert len(mx_server.messages("alice")) == 1
    assert not mx_server.maildir("alice").has_folder("Nowhere")
    activate(mx_server, "alice", 'require ["fileinto", "mailbox"]; fileinto :create "Made";')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert mx_server.maildir("alice").has_folder("Made")
    assert len(mx_server.messages("alice", "Made")) == 1


def test_flags_are_stored(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'require "imap4flags"; addflag ["\\\\Seen", "\\\\Flagged"];')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    folder = mx_server.maildir("alice").folder("INBOX")
    state = folder.sync()
    infos = [state.get(uid) for uid in state.uids()]
    assert len(infos) == 1 and infos[0] is not None
    assert {"\\Seen", "\\Flagged"} <= set(infos[0].flags)


def test_discard_and_stop(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'if header :contains "from" "example.org" { discard; stop; } keep;')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert mx_server.messages("alice") == []


def test_redirect_goes_to_the_queue_and_copy_keeps(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'require "copy"; redirect :copy "elsewhere@remote.example";')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert len(mx_server.messages("alice")) == 1
    [(env, data)] = queued(mx_server)
    assert env.recipients == ("elsewhere@remote.example",)  # type: ignore[attr-defined]
    # a forward like an alias's: the SRS sender of alice's domain, the original kept in the envelope
    assert env.sender.startswith("SRS0=") and env.sender.endswith("=example.org=s@example.test")  # type: ignore[attr-defined]
    assert env.extra["orig_sender"] == "s@example.org"  # type: ignore[attr-defined]
    assert b"Delivered-To: alice@example.test\r\n" in data and b"Return-Path" not in data


def test_too_many_redirects_is_an_implicit_keep(mx_server: MXServer) -> None:
    script = "".join(f'redirect "r{i}@remote.example";' for i in range(5))
    activate(mx_server, "alice", script)
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert len(mx_server.messages("alice")) == 1
    assert queued(mx_server) == []


def test_reject_on_lmtp_mails_the_sender(mx_server: MXServer) -> None:
    """Pigeonhole's LMTP never refuses on reject: 250, nothing stored, a rejection to the sender."""
    activate(mx_server, "alice", 'require "reject"; reject "I do not want invoices";')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert mx_server.messages("alice") == []
    [(env, data)] = queued(mx_server)
    assert env.sender == "" and env.recipients == ("s@example.org",)  # type: ignore[attr-defined]
    assert b"I do not want invoices" in data and b"disposition-notification" in data
    assert b"Subject: Invoice 42" in data  # the original's header, for the sender to recognise it


def test_reject_with_null_sender_sends_nothing(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'require "reject"; reject "no";')
    assert lmtp(mx_server, ["alice@example.test"], sender="") == {}
    assert mx_server.messages("alice") == [] and queued(mx_server) == []


def test_ereject_refuses_in_protocol_for_that_recipient_only(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'require "ereject"; ereject "go away";')
    with mx_server.client() as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("s@example.org", ["alice@example.test"], MSG)
    assert e.value.smtp_code == 550
    with mx_server.client() as c:
        assert c.sendmail("s@example.org", ["bob@example.test"], MSG) == {}
    assert mx_server.messages("alice") == [] and len(mx_server.messages("bob")) == 1


def test_broken_script_is_an_implicit_keep(mx_server: MXServer) -> None:
    """A script that no longer compiles (written behind the CLI's back) never loses mail."""
    store = activate(mx_server, "alice", "discard;")
    (store.dir / "main.sieve").write_bytes(b"if true {\n discard;\n")
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert len(mx_server.messages("alice")) == 1


def test_runtime_error_is_an_implicit_keep(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'require "include"; discard; include :personal "missing";')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert len(mx_server.messages("alice")) == 1


def test_include_personal(mx_server: MXServer) -> None:
    store = ScriptStore(mx_server.maildir("alice").root)
    store.put("lib", b'require ["fileinto", "mailbox"]; fileinto :create "Lib";')
    activate(mx_server, "alice", 'require "include"; include :personal "lib";')
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert mx_server.messages("alice") == [] and len(mx_server.messages("alice", "Lib")) == 1


def test_mx_alias_each_mailbox_runs_its_own_script(mx_server: MXServer) -> None:
    activate(mx_server, "bob", "discard;")
    with mx_server.client() as c:
        assert c.sendmail("s@example.org", ["team@example.test"], MSG) == {}
    assert len(mx_server.messages("alice")) == 1
    assert mx_server.messages("bob") == []


def test_dangling_active_link_is_no_script(mx_server: MXServer) -> None:
    home = mx_server.maildir("alice").root
    home.mkdir(parents=True, exist_ok=True)
    os.symlink("sieve/gone.sieve", home / ".dovecot.sieve")
    assert lmtp(mx_server, ["alice@example.test"]) == {}
    assert len(mx_server.messages("alice")) == 1


def test_scripts_sit_where_pigeonhole_keeps_them(mx_server: MXServer) -> None:
    activate(mx_server, "alice", "keep;")
    home: Path = mx_server.maildir("alice").root
    assert (home / "sieve" / "main.sieve").read_bytes() == b"keep;"
    assert os.readlink(home / ".dovecot.sieve") == "sieve/main.sieve"


def send_lmtp(mx: MXServer, message: bytes, sender: str = "s@example.org") -> None:
    with mx.lmtp_client() as c:
        assert c.sendmail(sender, ["alice@example.test"], message) == {}


def test_vacation_answers_once_per_sender_and_keeps(mx_server: MXServer) -> None:
    activate(mx_server, "alice", 'require "vacation"; vacation :days 2 "Back on Monday.";')
    send_lmtp(mx_server, MSG)
    send_lmtp(mx_server, MSG)  # the same sender within the period: no second reply
    assert len(mx_server.messages("alice")) == 2  # vacation never stops the keep
    [(env, data)] = queued(mx_server)
    assert env.sender == "" and env.recipients == ("s@example.org",)  # type: ignore[attr-defined]
    assert b"Subject: Auto: Invoice 42" in data and b"In-Reply-To: <m1@example.org>" in data
    assert b"Auto-Submitted: auto-replied" in data and b"Back on Monday." in data
    send_lmtp(mx_server, MSG, sender="other@example.org")  # another sender gets one
    assert sorted(env.recipients for env, _ in queued(mx_server)) == [  # type: ignore[attr-defined]
        ("other@example.org",), ("s@example.org",)]


@pytest.mark.parametrize("extra, sender", [
    (b"List-Id: <dev.example.org>\r\n", "s@example.org"),
    (b"Auto-Submitted: auto-generated\r\n", "s@example.org"),
    (b"Precedence: bulk\r\n", "s@example.org"),
    (b"", "MAILER-DAEMON@example.org"),
    (b"", ""),
])
def test_vacation_does_not_answer_automated_mail(mx_server: MXServer, extra: bytes, sender: str) -> None:
    activate(mx_server, "alice", 'require "vacation"; vacation "Away.";')
    send_lmtp(mx_server, extra + MSG, sender=sender)
    assert len(mx_server.messages("alice")) == 1 and queued(mx_server) == []


def test_vacation_only_when_addressed_to_the_user(mx_server: MXServer) -> None:
    """RFC 5230 §4.5: not in To/Cc/Bcc (a Bcc'd list copy) -> no reply, unless :addresses names it."""
    bcc = MSG.replace(b"To: alice@example.test", b"To: someone@example.org")
    activate(mx_server, "alice", 'require "vacation"; vacation "Away.";')
    send_lmtp(mx_server, bcc)
    assert queued(mx_server) == []
    activate(mx_server, "alice", 'require "vacation"; vacation :addresses "someone@example.org" "Away.";')
    send_lmtp(mx_server, bcc)
    assert len(queued(mx_server)) == 1


def test_include_global_from_the_configured_folder(mx_factory: object, tmp_path: Path) -> None:
    global_dir = tmp_path / "global-sieve"
    global_dir.mkdir()
    (global_dir / "spam.sieve").write_bytes(
        b'require ["fileinto", "mailbox"]; if header :contains "subject" "invoice" { fileinto :create "Suspect"; }')
    mx = mx_factory(sieve={"global_dir": str(global_dir)})  # type: ignore[operator]
    activate(mx, "alice", 'require "include"; include :global "spam";')
    with mx.client() as c:  # the MX delivers in-process: the same LocalDelivery as LMTP
        assert c.sendmail("s@example.org", ["alice@example.test"], MSG) == {}
    assert mx.messages("alice") == [] and len(mx.messages("alice", "Suspect")) == 1
    activate(mx, "alice", 'require "include"; include :global "missing";')
    assert lmtp(mx, ["alice@example.test"]) == {}
    assert len(mx.messages("alice")) == 1  # a missing global script: implicit keep


def test_vacation_replies_are_dkim_signed(mx_server: MXServer) -> None:
    """Like every message we send (issue: "DKIM-signed like any mail we send")."""
    dkim.generate_key(mx_server.config.queue.dkim_dir, "example.test", "mail", "rsa")
    activate(mx_server, "alice", 'require "vacation"; vacation "Away.";')
    send_lmtp(mx_server, MSG)
    [(_env, data)] = queued(mx_server)
    assert data.startswith(b"DKIM-Signature: ") and b"d=example.test" in data.split(b"\r\n\r\n")[0]
