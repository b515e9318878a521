"""Byte transcripts against the real ManageSieve service on loopback (RFC 5804), good input
and bad: every script command, what lands on disk, and what a hostile client gets."""

from __future__ import annotations

import os
import socket
import time

import pytest

from mailstack.sieve.grammar import MAX_SCRIPT_BYTES
from mailstack.sieve.store import MAX_SCRIPTS, MAX_STORAGE_BYTES
from tests.managesieve.conftest import USERS, SieveServer

ALICE = USERS[0]
SCRIPT = b'require "fileinto";\r\nif header :contains "subject" "invoice" {\r\n  fileinto "Bills";\r\n}\r\n'


def put(name: bytes, text: bytes) -> bytes:
    """PUTSCRIPT with both strings as literals (any octets, no quoting)."""
    return b"PUTSCRIPT {%d+}\r\n" % len(name) + name + b" {%d+}\r\n" % len(text) + text


def test_greeting_lists_capabilities_and_starttls(sieve: SieveServer) -> None:
    r = sieve.raw()
    greeting = r.greeting()
    assert greeting.startswith(b'"IMPLEMENTATION" "mailstack"\r\n')
    assert b'"STARTTLS"' in greeting and b'"VERSION" "1.0"' in greeting
    assert greeting.endswith(b'OK "mailstack ManageSieve ready."\r\n')
    after = r.starttls(sieve.client_context())
    assert b'"STARTTLS"' not in after and b'"SIEVE" "' in after and after.endswith(b'OK "TLS negotiation successful."\r\n')
    assert r.login() == b'OK "Logged in."\r\n'
    assert b'"OWNER" "alice@example.test"' in r.cmd(b"CAPABILITY")
    assert r.cmd(b"LOGOUT") == b'OK "Logout completed."\r\n'
    assert r.closed()


def test_round_trip_on_disk_where_pigeonhole_keeps_it(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    r.login()
    assert r.cmd(b'HAVESPACE "main" %d' % len(SCRIPT)) == b'OK "Putscript would succeed."\r\n'
    assert r.cmd(put(b"main", SCRIPT)) == b'OK "Putscript completed."\r\n'
    home = sieve.home(ALICE)
    assert (home / "sieve" / "main.sieve").read_bytes() == SCRIPT
    assert r.cmd(b"CHECKSCRIPT {6+}\r\nkeep;\n") == b'OK "Script is valid."\r\n'
    assert r.cmd(b"LISTSCRIPTS") == b'"main"\r\nOK "Listscripts completed."\r\n'
    assert r.cmd(b'SETACTIVE "main"') == b'OK "Setactive completed."\r\n'
    assert os.readlink(home / ".dovecot.sieve") == "sieve/main.sieve"
    assert r.cmd(b"LISTSCRIPTS") == b'"main" ACTIVE\r\nOK "Listscripts completed."\r\n'
    assert r.cmd(b'GETSCRIPT "main"') == b"{%d}\r\n" % len(SCRIPT) + SCRIPT + b'\r\nOK "Getscript completed."\r\n'
    # RFC 5804 §2.10: the active script cannot be deleted
    assert r.cmd(b'DELETESCRIPT "main"') == b'NO (ACTIVE) "Cannot delete active script."\r\n'
    # RFC 5804 §2.11.1: renaming the active script keeps it active
    assert r.cmd(b'RENAMESCRIPT "main" "filters"') == b'OK "Renamescript completed."\r\n'
    assert os.readlink(home / ".dovecot.sieve") == "sieve/filters.sieve"
    assert not (home / "sieve" / "main.sieve").exists()
    assert r.cmd(put(b"other", b"keep;")) == b'OK "Putscript completed."\r\n'
    assert r.cmd(b'RENAMESCRIPT "other" "filters"') == b'NO (ALREADYEXISTS) "A script with that name already exists."\r\n'
    assert r.cmd(b'RENAMESCRIPT "nope" "x"') == b'NO (NONEXISTENT) "Script does not exist."\r\n'
    assert r.cmd(b'GETSCRIPT "nope"') == b'NO (NONEXISTENT) "Script does not exist."\r\n'
    assert r.cmd(b'SETACTIVE "nope"') == b'NO (NONEXISTENT) "Script does not exist."\r\n'
    # RFC 5804 §2.8: "" deactivates
    assert r.cmd(b'SETACTIVE ""') == b'OK "Setactive completed."\r\n'
    assert not os.path.lexists(home / ".dovecot.sieve")
    assert r.cmd(b'DELETESCRIPT "filters"') == b'OK "Deletescript completed."\r\n'
    assert r.cmd(b"LISTSCRIPTS") == b'"other"\r\nOK "Listscripts completed."\r\n'
    assert r.cmd(b'NOOP "t1"') == b'OK (TAG "t1") "Done"\r\n'
    assert r.cmd(b"UNAUTHENTICATE") == b'OK "Unauthenticate completed."\r\n'
    assert r.cmd(b"LISTSCRIPTS") == b'NO "LISTSCRIPTS is not allowed in this state."\r\n'
    assert r.login(USERS[1]) == b'OK "Logged in."\r\n'
    assert r.cmd(b"LISTSCRIPTS") == b'OK "Listscripts completed."\r\n'  # bob's, not alice's


def test_bad_script_is_refused_with_its_line_and_nothing_is_written(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    r.login()
    assert r.cmd(put(b"main", SCRIPT)) .startswith(b"OK")
    before = (sieve.home(ALICE) / "sieve").iterdir()
    names = sorted(p.name for p in before)
    bad = b'require "fileinto";\r\n\r\nif header :regex "subject" "([a-z" { discard; }\r\n'
    assert r.cmd(put(b"main", bad)).startswith(b'NO "line 3: error: ')
    bad2 = b'require "regex";\r\nif header :regex "subject"\r\n  "([a-z" { discard; }\r\n'
    assert r.cmd(put(b"main", bad2)).startswith(b'NO "line 3: error: invalid regular expression')
    assert r.cmd(b"CHECKSCRIPT {9+}\r\nkeep;\nfoo") .startswith(b'NO "line 2: error: ')
    assert (sieve.home(ALICE) / "sieve" / "main.sieve").read_bytes() == SCRIPT
    assert sorted(p.name for p in (sieve.home(ALICE) / "sieve").iterdir()) == names


def test_bad_names_never_leave_the_sieve_folder(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    r.login()
    for name in (b"../../bob/x", b"a/b", b".dovecot", b"..", b"x\\y", b"\xff\xfe", b"tab\there"):
        assert r.cmd(put(name, b"keep;")) == b'NO "Invalid script name."\r\n', name
        assert r.cmd(b"GETSCRIPT {%d+}\r\n" % len(name) + name) == b'NO "Invalid script name."\r\n'
    assert r.cmd(b'RENAMESCRIPT "a" "../b"') == b'NO "Invalid script name."\r\n'
    assert not (sieve.home(ALICE) / "sieve").exists()
    assert not any(sieve.config.storage.maildir_root.rglob("*.sieve"))


def test_quotas(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    r.login()
    assert r.cmd(b'HAVESPACE "big" %d' % (MAX_SCRIPT_BYTES + 1)) == b'NO (QUOTA/MAXSIZE) "Script is too large."\r\n'
    assert r.cmd(b'HAVESPACE "big" 99999999999999999999') == b'NO (QUOTA/MAXSIZE) "Script is too large."\r\n'
    store = sieve.store(ALICE)
    for i in range(MAX_SCRIPTS):
        store.put(f"s{i}", b"keep;")
    assert r.cmd(b'HAVESPACE "new" 10') == b'NO (QUOTA/MAXSCRIPTS) "Too many scripts."\r\n'
    assert r.cmd(put(b"new", b"keep;")) == b'NO (QUOTA/MAXSCRIPTS) "Too many scripts."\r\n'
    assert r.cmd(put(b"s1", b"discard;")) == b'OK "Putscript completed."\r\n'  # replacing is fine
    for i in range(MAX_SCRIPTS):
        store.delete(f"s{i}")
    # all scripts together: fill up with comments (each under the per-script size)
    chunk = b"#" + b"x" * (MAX_SCRIPT_BYTES - 100) + b"\n"
    for i in range(MAX_STORAGE_BYTES // len(chunk)):
        store.put(f"f{i}", chunk)
    assert r.cmd(b'HAVESPACE "one-more" %d' % len(chunk)) == b'NO (QUOTA) "Not enough room for the script."\r\n'


def test_huge_literal_is_skipped_not_buffered_and_the_session_goes_on(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    r.login()
    size = 64 * 1024 * 1024
    r.send(b'PUTSCRIPT "huge" {%d+}\r\n' % size)
    block = (b"LOGOUT\r\n" * 8192)  # literal octets that look like commands must stay data
    sent = 0
    while sent < size:
        n = min(len(block), size - sent)
        r.send(block[:n])
        sent += n
    assert r.cmd(b"") == b'NO (QUOTA/MAXSIZE) "Command refused: literal larger than 1048576 octets."\r\n'
    assert r.cmd(b"NOOP") == b'OK "Done"\r\n'
    assert not (sieve.home(ALICE) / "sieve").exists()


def test_absurd_literal_size_and_overlong_line(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    r.login()
    r.send(b'PUTSCRIPT "x" {99999999999999999999+}\r\nkeep;\r\n')
    r.sock.shutdown(socket.SHUT_WR)
    assert r.closed()  # the server counts the literal off until the client gives up
    r2 = sieve.raw()
    r2.greeting()
    r2.send(b"NOOP " + b"a" * 100_000 + b"\r\n")
    assert r2.response() == b'BYE "Line too long."\r\n'
    assert r2.closed()


def test_unknown_and_malformed_commands(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    assert r.cmd(b"FROB") == b'NO "Unknown command."\r\n'
    assert r.cmd(b"PUTSCRIPT \"a\" \"keep;\"") == b'NO "PUTSCRIPT is not allowed in this state."\r\n'
    assert r.cmd(b'GETSCRIPT "unterminated') == b'NO "Syntax error: unterminated quoted string."\r\n'
    assert r.cmd(b"\xff\xfe") == b'NO "Syntax error: invalid characters in an atom."\r\n'
    assert r.cmd(b'AUTHENTICATE "DIGEST-MD5"') == b'NO "Unsupported authentication mechanism."\r\n'
    for _ in range(15):
        r.send(b"FROB\r\n")
    out = b"".join(r.response() for _ in range(15))  # the 20th bad command is the last
    assert out == b'NO "Unknown command."\r\n' * 15
    assert r.response() == b'BYE "Too many invalid commands."\r\n'
    assert r.closed()


def test_wrong_password_and_the_shared_throttle(sieve: SieveServer) -> None:
    r = sieve.raw()
    r.greeting()
    assert r.login(password="wrong") == b'NO "Authentication failed."\r\n'
    assert r.login(password="wrong") == b'NO "Authentication failed."\r\n'
    assert r.login(password="wrong") == b'NO "Authentication failed."\r\n'
    assert r.response() == b'BYE "Too many failed logins."\r\n'
    assert r.closed()
    r = sieve.raw()
    r.greeting()
    for _ in range(2):
        r.login(password="wrong")
    r.close()
    # the fifth failure blocked the account: even the right password now fails (as IMAP)
    r = sieve.raw()
    r.greeting()
    assert r.login() == b'NO "Authentication failed."\r\n'


def test_plaintext_needs_tls_when_not_allowed_on_loopback(sieve_tls_only: SieveServer) -> None:
    r = sieve_tls_only.raw()
    greeting = r.greeting()
    assert b'"SASL" ""' in greeting
    assert r.login() == (b'NO (ENCRYPT-NEEDED) "Plaintext authentication disallowed on non-secure '
                         b'(SSL/TLS) connections."\r\n')
    assert b'"SASL" "PLAIN"' in r.starttls(sieve_tls_only.client_context())
    assert r.login() == b'OK "Logged in."\r\n'


def test_a_flooding_client_does_not_stall_others(sieve: SieveServer) -> None:
    flood = sieve.raw()
    flood.greeting()
    flood.login()
    flood.send(b'PUTSCRIPT "x" {900000000+}\r\n' + b"x" * 4_000_000)  # and then goes silent
    started = time.monotonic()
    other = sieve.raw()
    assert other.greeting().endswith(b"ready.\"\r\n")
    assert other.login() == b'OK "Logged in."\r\n'
    assert time.monotonic() - started < 10
    flood.close()


def test_compiling_a_big_script_does_not_stall_other_clients(sieve: SieveServer) -> None:
    # ~1 MiB of rules takes seconds of CPU to compile; it runs off the event loop
    rules = b'require ["fileinto", "regex"];\n'
    rule = b'if header :regex "subject" "^a(b|c)+d$" { fileinto "X"; }\n'
    script = rules + rule * ((MAX_SCRIPT_BYTES - len(rules)) // len(rule))
    busy = sieve.raw()
    busy.greeting()
    busy.login()
    busy.send(put(b"big", script) + b"\r\n")
    time.sleep(0.5)  # the upload is in; the compile has begun
    started = time.monotonic()
    other = sieve.raw()
    other.greeting()
    assert other.cmd(b"NOOP") == b'OK "Done"\r\n'
    waited = time.monotonic() - started
    assert busy.response() == b'OK "Putscript completed."\r\n'
    compiled = time.monotonic() - started
    assert waited < max(1.5, compiled / 3), (waited, compiled)  # on the loop it was all of it


def test_status_probes_it(sieve: SieveServer) -> None:
    import asyncio

    from mailstack.ops.status import enabled, probe

    assert "managesieve" in enabled(sieve.config)
    (address, tls), = sieve.config.listeners("managesieve")
    check = asyncio.run(probe("managesieve", address, tls, hostname="mx.example.test"))
    assert check.up and check.detail == '"IMPLEMENTATION" "mailstack"'


def test_a_client_that_never_logs_in_is_disconnected(sieve: SieveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailstack.managesieve import server

    monkeypatch.setattr(server, "LOGIN_TIMEOUT", 0.5)
    r = sieve.raw()
    r.greeting()
    assert r.response() == b'BYE "Disconnected for inactivity."\r\n'
    assert r.closed()


def test_failures_here_block_the_account_for_imap_too(sieve: SieveServer) -> None:
    import asyncio

    from mailstack.auth import Authenticator, AuthStatus

    for attempts in (3, 2):
        r = sieve.raw()
        r.greeting()
        for _ in range(attempts):
            assert r.login(password="wrong") == b'NO "Authentication failed."\r\n'
        r.close()
    imap_auth = Authenticator.from_config(sieve.config, sieve.directory)  # what the imap service builds
    try:
        outcome = asyncio.run(imap_auth.authenticate("imap", ALICE, "secret", "192.0.2.9"))
    finally:
        imap_auth.close()
    assert outcome.status is AuthStatus.THROTTLED
