"""Transcripts against the real POP3 server on loopback (poplib and raw sockets)."""

from __future__ import annotations

import os
import poplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailstack.pop3.maildrop import LOCK_NAME
from mailstack.storage.errors import StorageError
from mailstack.storage.folder import Folder

from .conftest import PASSWORD, POP3Server, make_server

ALICE = "alice@example.test"


def msg(i: int, body: bytes = b"hello\n") -> bytes:
    return b"From: x@example.org\nSubject: message %d\n\n" % i + body


def raw_session(srv: POP3Server, data: bytes, port: int | None = None) -> bytes:
    """Send everything at once (pipelined), read until the server closes."""
    with socket.create_connection(("127.0.0.1", port or srv.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def wait_until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_download_and_delete(pop3: POP3Server) -> None:
    for i in range(3):
        pop3.deliver(ALICE, msg(i))
    c = pop3.client(ALICE)
    assert c.stat()[0] == 3
    resp, lines, octets = c.retr(2)
    assert lines == [b"From: x@example.org", b"Subject: message 1", b"", b"hello"]
    assert resp == b"+OK %d octets" % len(msg(1).replace(b"\n", b"\r\n")) == b"+OK %d octets" % octets
    uidls = c.uidl()[1]
    c.dele(2)
    assert c.quit() == b"+OK Logging out, messages deleted."
    c = pop3.client(ALICE)
    assert c.stat()[0] == 2
    assert c.uidl()[1] == [b"1 " + uidls[0].split()[1], b"2 " + uidls[2].split()[1]]
    c.quit()
    # IMAP's view (the storage) no longer has it either
    state = pop3.maildir(ALICE).folder("INBOX").sync()
    assert [m.uid for m in state.messages] == [1, 3]


def test_uidl_matches_storage_and_survives_restart(tmp_path: Path) -> None:
    gen = make_server(tmp_path)
    srv = next(gen)
    for i in range(3):
        srv.deliver(ALICE, msg(i))
    c = srv.client(ALICE)
    first = c.uidl()[1]
    c.quit()
    state = srv.maildir(ALICE).folder("INBOX").sync()
    expected = [f"{n} {m.uid:08x}{state.uidvalidity:08x}".encode() for n, m in enumerate(state.messages, 1)]
    assert first == expected
    gen.close()  # server stopped
    # a new server process over the same store: same UIDLs
    gen = make_server_same_store(tmp_path)
    srv = next(gen)
    c = srv.client(ALICE)
    assert c.uidl()[1] == first
    c.quit()
    gen.close()


def test_uidl_saved_in_uidlist_is_served(pop3: POP3Server) -> None:
    """A Dovecot-saved UIDL (`P` field, pop3_save_uidl = yes) wins over the default; an
    empty `P` is the base name; a DELE's UPDATE keeps the other records' fields."""
    for i in range(3):
        pop3.deliver(ALICE, msg(i))
    folder = pop3.maildir(ALICE).folder("INBOX")
    state = folder.sync()
    bases = [m.base for m in state.messages]
    uidlist = folder.path / "dovecot-uidlist"
    lines = uidlist.read_text().splitlines()
    assert lines[1:] == [f"{m.uid} :{m.base}" for m in state.messages]
    lines[1] = f"1 P :{bases[0]}"  # as Dovecot writes them
    lines[2] = f"2 Pcourier-2 O1 :{bases[1]}"
    uidlist.write_text("\n".join(lines) + "\n")
    c = pop3.client(ALICE)
    assert c.uidl()[1] == [f"1 {bases[0]}".encode(), b"2 courier-2", f"3 {3:08x}{state.uidvalidity:08x}".encode()]
    assert c.uidl(2) == b"+OK 2 courier-2"
    c.dele(3)
    c.quit()
    assert uidlist.read_text().splitlines()[1:] == lines[1:3]


def make_server_same_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh server (new ports, new DB) over the Maildir root of ``tmp_path``."""
    other = tmp_path / "second"
    other.mkdir(exist_ok=True)
    return make_server(other, storage={"maildir_root": str(tmp_path / "mailboxes")})


def test_snapshot_hides_later_arrivals(pop3: POP3Server) -> None:
    pop3.deliver(ALICE, msg(1))
    c = pop3.client(ALICE)
    pop3.deliver(ALICE, msg(2))
    assert c.stat()[0] == 1
    c.quit()
    c = pop3.client(ALICE)
    assert c.stat()[0] == 2
    c.quit()


def test_retr_sets_seen_dele_only_at_quit_and_not_on_drop(pop3: POP3Server) -> None:
    for i in range(3):
        pop3.deliver(ALICE, msg(i))
    c = pop3.client(ALICE)
    c.retr(1)
    c.top(2, 0)
    c.dele(3)
    c.close()  # dropped: no UPDATE (RFC 1939 §6)
    folder = pop3.maildir(ALICE).folder("INBOX")
    wait_until(lambda: _login_ok(pop3))
    state = folder.sync()
    assert len(state.messages) == 3 and all("\\Seen" not in m.flags for m in state.messages)
    c = pop3.client(ALICE)
    c.retr(1)
    c.top(2, 0)
    c.quit()
    flags = [m.flags for m in folder.sync().messages]
    assert flags == [frozenset({"\\Seen"}), frozenset(), frozenset()]  # TOP does not mark


def _login_ok(srv: POP3Server, user: str = ALICE) -> bool:
    c = srv.client()
    try:
        c.user(user)
        c.pass_(PASSWORD)
    except poplib.error_proto:
        c.close()
        return False
    c.quit()
    return True


def test_lock_in_use_released_on_quit_and_drop(pop3: POP3Server) -> None:
    pop3.deliver(ALICE, msg(1))
    first = pop3.client(ALICE)
    second = pop3.client()
    second.user(ALICE)
    with pytest.raises(poplib.error_proto) as e:
        second.pass_(PASSWORD)
    assert e.value.args[0] == b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
    second.quit()
    assert _login_ok(pop3, "bob@example.test")  # other users are not affected
    first.quit()
    assert _login_ok(pop3)
    dropped = pop3.client(ALICE)
    dropped.close()
    wait_until(lambda: _login_ok(pop3))


def test_lock_across_processes_and_crash(pop3: POP3Server) -> None:
    md = pop3.maildir(ALICE)
    lock = md.root / LOCK_NAME
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
         "fcntl.flock(fd,fcntl.LOCK_EX);print('locked',flush=True);time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        c = pop3.client()
        c.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"IN-USE"):
            c.pass_(PASSWORD)
        c.quit()
    finally:
        holder.kill()  # a crash: the kernel drops the lock
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert _login_ok(pop3)


def test_lock_held_by_our_server_blocks_another_process(pop3: POP3Server) -> None:
    c = pop3.client(ALICE)
    lock = pop3.maildir(ALICE).root / LOCK_NAME
    probe = subprocess.run(
        [sys.executable, "-c",
         "import fcntl,os,sys;fd=os.open(sys.argv[1],os.O_RDWR)\n"
         "try:\n fcntl.flock(fd,fcntl.LOCK_EX|fcntl.LOCK_NB);print('free')\n"
         "except BlockingIOError:\n print('held')", str(lock)],
        capture_output=True, check=True,
    )
    assert probe.stdout == b"held\n"
    c.quit()


def test_pipelined_session_byte_for_byte(pop3: POP3Server) -> None:
    pop3.deliver(ALICE, b"Subject: a\n\n.x\n")
    size = len(b"Subject: a\r\n\r\n.x\r\n")
    out = raw_session(pop3, f"CAPA\r\nUSER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nRETR 1\r\nTOP 1 0\r\n"
                            "UIDL 1\r\nDELE 1\r\nSTAT\r\nQUIT\r\n".encode())
    uidl = pop3.maildir(ALICE).folder("INBOX").sync()
    uid = f"{1:08x}{uidl.uidvalidity:08x}".encode()
    assert out == (
        b"+OK mx.example.test POP3 ready.\r\n"
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"USER\r\nSASL PLAIN\r\nSTLS\r\nIMPLEMENTATION mailstack\r\n.\r\n"
        b"+OK\r\n+OK Logged in.\r\n"
        b"+OK 1 %d\r\n" % size
        + b"+OK 1 messages (%d octets)\r\n1 %d\r\n.\r\n" % (size, size)
        + b"+OK %d octets\r\nSubject: a\r\n\r\n..x\r\n.\r\n" % size
        + b"+OK\r\nSubject: a\r\n\r\n.\r\n"
        + b"+OK 1 " + uid + b"\r\n"
        + b"+OK Marked to be deleted.\r\n+OK 0 0\r\n+OK Logging out, messages deleted.\r\n"
    )
    assert pop3.maildir(ALICE).folder("INBOX").sync().messages == ()


def test_sasl_plain(pop3: POP3Server) -> None:
    import base64

    ir = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    out = raw_session(pop3, b"AUTH PLAIN " + ir + b"\r\nSTAT\r\nQUIT\r\n")
    assert out.endswith(b"+OK Logged in.\r\n+OK 0 0\r\n+OK Logging out.\r\n")


def test_wrong_password_and_unknown_user(pop3: POP3Server) -> None:
    out = raw_session(pop3, f"USER {ALICE}\r\nPASS nope\r\nUSER nobody@example.test\r\nPASS x\r\nQUIT\r\n".encode())
    assert out.count(b"-ERR [AUTH] Authentication failed.\r\n") == 2
    assert out.endswith(b"+OK Logging out.\r\n")


def test_blocked_after_max_failures_without_hashing(tmp_path: Path) -> None:
    gen = make_server(tmp_path, auth={"max_failures": 2})
    pop3 = next(gen)
    try:
        out = raw_session(pop3, f"USER {ALICE}\r\nPASS nope\r\nUSER {ALICE}\r\nPASS nope\r\nQUIT\r\n".encode())
        assert out.count(b"-ERR [AUTH] Authentication failed.\r\n") == 2
        checks = pop3.service.auth.hash_calls
        # blocked now: the right password gets the same answer, and nothing is hashed
        out = raw_session(pop3, f"USER {ALICE}\r\nPASS {PASSWORD}\r\nQUIT\r\n".encode())
        assert b"-ERR [AUTH] Authentication failed.\r\n" in out and b"Logged in" not in out
        assert pop3.service.auth.hash_calls == checks
    finally:
        gen.close()


def test_overlong_sasl_line_ends_the_exchange(pop3: POP3Server) -> None:
    # RFC 5034 §4 continuation longer than the line limit: -ERR, and the next line is a command again
    out = raw_session(pop3, b"AUTH PLAIN\r\n" + b"A" * 70000 + b"\r\nCAPA\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1:3] == [b"+ ", b"-ERR Line too long."]
    assert b"+OK Capability list follows" in out or b"\r\nUSER\r\n" in out
    assert out.endswith(b"+OK Logging out.\r\n")


def test_stls_on_plain_port(pop3: POP3Server) -> None:
    pop3.deliver(ALICE, msg(1))
    c = pop3.client()
    assert "STLS" in c.capa()
    c.stls(pop3.client_context())
    assert "STLS" not in c.capa()
    c.user(ALICE)
    c.pass_(PASSWORD)
    assert c.retr(1)[1][-1] == b"hello"
    c.quit()


def test_implicit_tls_port(pop3: POP3Server) -> None:
    pop3.deliver(ALICE, msg(1))
    c = pop3.tls_client(ALICE)
    assert c.stat()[0] == 1
    assert "STLS" not in c.capa()
    c.quit()
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that verifies against the system CAs
        poplib.POP3_SSL("127.0.0.1", pop3.tls_port, timeout=5, context=ssl.create_default_context())


def test_plaintext_refused_unless_tls(tmp_path: Path) -> None:
    gen = make_server(tmp_path, auth={"allow_plaintext_on_loopback": False})
    srv = next(gen)
    try:
        c = srv.client()
        caps = c.capa()
        assert "USER" not in caps and "SASL" not in caps and "STLS" in caps
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext"):
            c.user(ALICE)
        c.stls(srv.client_context())
        c.user(ALICE)
        c.pass_(PASSWORD)
        c.quit()
        srv.tls_client(ALICE).quit()
    finally:
        gen.close()


def test_stls_injection_is_discarded(pop3: POP3Server) -> None:
    with socket.create_connection(("127.0.0.1", pop3.port), timeout=10) as s:
        s.recv(1000)
        s.sendall(b"STLS\r\nUSER injected\r\n")
        assert s.recv(1000) == b"+OK Begin TLS negotiation now.\r\n"
        with pop3.client_context().wrap_socket(s, server_hostname="localhost") as tls:
            tls.sendall(b"NOOP\r\n")
            assert tls.recv(1000) == b"-ERR NOOP not valid in this state.\r\n"  # not "+OK" from USER injected


def test_idle_timeout(tmp_path: Path) -> None:
    gen = make_server(tmp_path, pop3={"idle_timeout": 0.3})
    srv = next(gen)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            data = b""
            while chunk := s.recv(1000):
                data += chunk
        assert data.endswith(b"-ERR Disconnected for inactivity.\r\n")
    finally:
        gen.close()


def test_long_line(pop3: POP3Server) -> None:
    out = raw_session(pop3, b"NOOP " + b"x" * 10000 + b"\r\nQUIT\r\n")
    assert out.endswith(b"-ERR Line too long.\r\n+OK Logging out.\r\n")


def test_large_message_streamed(pop3: POP3Server) -> None:
    line = b"x" * 76 + b"\n"
    body = line * (20 * 1024 * 1024 // len(line))
    data = b"Subject: big\n\n" + body + b".starts with a dot\n"
    pop3.deliver(ALICE, data)
    c = pop3.client(ALICE)
    resp, lines, octets = c.retr(1)
    assert octets == len(data.replace(b"\n", b"\r\n"))
    assert b"\n".join(lines) + b"\n" == data
    assert c.top(1, 2)[1] == [b"Subject: big", b"", b"x" * 76, b"x" * 76]
    c.quit()


def test_message_renamed_by_imap_still_retrieved(pop3: POP3Server) -> None:
    pop3.deliver(ALICE, msg(1))
    c = pop3.client(ALICE)
    imap_view = pop3.maildir(ALICE).folder("INBOX")
    imap_view.sync()
    imap_view.set_flags(1, {"\\Flagged"})  # renames the file behind the snapshot
    assert c.retr(1)[1][-1] == b"hello"
    imap_view.expunge([1])
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
        c.retr(1)
    c.dele(1)
    assert c.quit() == b"+OK Logging out, messages deleted."


def test_update_failure_is_sys_temp(pop3: POP3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    pop3.deliver(ALICE, msg(1))

    def broken(self: Folder, uids: object) -> list[int]:
        raise StorageError("disk on fire")

    monkeypatch.setattr(Folder, "expunge", broken)
    c = pop3.client(ALICE)
    c.dele(1)
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
        c.quit()
    c.close()
    monkeypatch.undo()
    assert _login_ok(pop3)  # lock released
    c = pop3.client(ALICE)
    assert c.stat()[0] == 1
    c.quit()


def test_directory_down_is_sys_temp(pop3: POP3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailstack.directory import DirectoryUnavailable

    def down(address: str, password: str) -> None:
        raise DirectoryUnavailable("database is gone")

    monkeypatch.setattr(pop3.service.directory, "authenticate", down)
    out = raw_session(pop3, f"USER {ALICE}\r\nPASS {PASSWORD}\r\nQUIT\r\n".encode())
    assert b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n" in out


def test_internal_error_never_leaks_a_traceback(pop3: POP3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailstack.pop3.server as server_mod

    def boom(*a: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server_mod, "open_maildrop", boom)
    out = raw_session(pop3, f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
    assert out.endswith(b"-ERR [SYS/TEMP] Internal server error.\r\n")
    assert b"secret" not in out and b"Traceback" not in out


def test_many_concurrent_sessions(tmp_path: Path) -> None:
    import concurrent.futures

    # 8 logins at once from one address: over [auth] max_inflight_per_client's default (3)
    gen = make_server(tmp_path, auth={"max_inflight_per_client": 8})
    pop3 = next(gen)
    users = []
    for i in range(8):
        u = f"user{i}@example.test"
        pop3.directory.add_user(u, PASSWORD)
        pop3.deliver(u, msg(i))
        users.append(u)

    def one(u: str) -> bytes:
        c = pop3.client(u)
        lines = c.retr(1)[1]
        c.quit()
        return lines[1]

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            assert sorted(ex.map(one, users)) == sorted(b"Subject: message %d" % i for i in range(8))
    finally:
        gen.close()


def test_lock_file_mode(pop3: POP3Server) -> None:
    pop3.client(ALICE).quit()
    assert oct(os.stat(pop3.maildir(ALICE).root / LOCK_NAME).st_mode & 0o777) == "0o600"


def test_command_in_the_same_segment_as_the_stls_handshake_end_is_answered(pop3: POP3Server) -> None:
    """The client's TLS Finished and its first command arrive in one TCP segment: the
    command came through TLS and must be answered (only pre-handshake bytes are dropped)."""
    with socket.create_connection(("127.0.0.1", pop3.port), timeout=5) as s:
        s.recv(1000)
        s.sendall(b"STLS\r\n")
        assert s.recv(1000).startswith(b"+OK")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = pop3.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    s.sendall(outgoing.read())
                incoming.write(s.recv(65536))
        tls.write(b"CAPA\r\n")
        s.sendall(outgoing.read())  # client Finished + CAPA together
        reply = b""
        while not reply.endswith(b"\r\n.\r\n"):
            incoming.write(s.recv(65536))  # a socket.timeout here = the command was dropped
            try:
                reply += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                s.sendall(outgoing.read())
        assert reply.startswith(b"+OK") and b"USER" in reply


def test_stop_says_goodbye_closes_sessions_and_listeners(pop3: POP3Server) -> None:
    with socket.create_connection(("127.0.0.1", pop3.port), timeout=5) as s:
        assert s.recv(1000).startswith(b"+OK")
        pop3.call(pop3.service.stop(1.0))
        data = b""
        while chunk := s.recv(1000):
            data += chunk
    assert data == b"-ERR [SYS/TEMP] Server shutting down.\r\n"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pop3.port), timeout=2).close()
