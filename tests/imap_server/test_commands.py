"""Transcripts against the real server with imaplib: RFC 3501 core and the extensions."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import subprocess
import sys
import time

import pytest

imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
from pathlib import Path

from .conftest import PASSWORD, IMAPServer, make_server, message

ALICE = "alice@example.test"


def raw(imap: IMAPServer, port: int | None = None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port or imap.port), timeout=10)
    assert s.recv(4096).startswith(b"* OK [CAPABILITY")
    return s


def until(s: socket.socket, tag: bytes) -> bytes:
    data = b""
    while not re.search(rb"(^|\r\n)" + re.escape(tag) + rb" [A-Z]+ [^\r\n]*\r\n", data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_greeting_capabilities_and_login(imap: IMAPServer) -> None:
    c = imap.client(None)
    caps = set(c.capabilities)
    for cap in ("IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "NAMESPACE", "ID", "ENABLE", "UNSELECT",
                "LITERAL+", "CHILDREN", "QUOTA", "STARTTLS", "AUTH=PLAIN", "SASL-IR", "LIST-EXTENDED",
                "LIST-STATUS"):
        assert cap in caps
    assert any(x.startswith("APPENDLIMIT=") for x in caps)
    with pytest.raises(imaplib.IMAP4.error):
        c.login(ALICE, "wrong")
    assert c.login(ALICE, PASSWORD)[0] == "OK"
    assert "STARTTLS" not in c.capability()[1][0].decode()
    c.logout()


def test_special_use_folders_created_on_first_login(imap: IMAPServer) -> None:
    c = imap.client()
    typ, data = c.list()
    lines = [d.decode() for d in data]
    for name, attr in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Junk", "\\Junk"),
                       ("Archive", "\\Archive")):
        assert any(line.endswith(f'"." {name}') and attr in line for line in lines), lines
    assert c.lsub()[1] and len(c.lsub()[1]) == 5
    typ, data = c.list('""', "%")
    assert typ == "OK"
    typ, data = c._simple_command("LIST", "(SPECIAL-USE)", '""', "*")  # type: ignore[attr-defined]
    assert typ == "OK"
    assert len(c.untagged_responses.pop("LIST")) == 5
    c.logout()


def test_starttls_and_implicit_tls_and_logindisabled(imap: IMAPServer) -> None:
    c = imap.client(None)
    c.starttls(imap.client_context())
    assert c.login(ALICE, PASSWORD)[0] == "OK"
    c.logout()
    t = imap.tls_client()
    assert "STARTTLS" not in " ".join(t.capabilities)
    assert t.select()[0] == "OK"
    t.logout()
    imap.service.allow_plaintext_on_loopback = False  # as seen from a remote address
    s = raw(imap)
    s.sendall(b"a CAPABILITY\r\n")
    assert b"LOGINDISABLED" in until(s, b"a")
    s.sendall(b"b LOGIN alice@example.test secret\r\n")
    assert b"b NO [PRIVACYREQUIRED]" in until(s, b"b")
    s.sendall(b"c AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n")
    assert b"c NO [PRIVACYREQUIRED]" in until(s, b"c")
    s.close()


def test_authenticate_plain_with_and_without_initial_response(imap: IMAPServer) -> None:
    import base64

    token = base64.b64encode(b"\0alice@example.test\0secret")
    s = raw(imap)
    s.sendall(b"a AUTHENTICATE PLAIN " + token + b"\r\n")
    assert b"a OK [CAPABILITY" in until(s, b"a")
    s.close()
    s = raw(imap)
    s.sendall(b"a AUTHENTICATE PLAIN\r\n")
    assert s.recv(100) == b"+ \r\n"
    s.sendall(token + b"\r\n")
    assert b"a OK" in until(s, b"a")
    s.close()
    s = raw(imap)
    s.sendall(b"a AUTHENTICATE PLAIN\r\n")
    s.recv(100)
    s.sendall(b"*\r\n")
    assert b"a BAD" in until(s, b"a")
    s.sendall(b"b NOOP\r\n")
    assert b"b OK" in until(s, b"b")
    s.close()


def test_fetch_store_search_expunge(imap: IMAPServer) -> None:
    for i in range(5):
        imap.deliver(ALICE, message(f"msg {i}", body=f"body number {i} caf\u00e9\n",
                                    extra="Content-Type: text/plain; charset=utf-8\n"))
    c = imap.client()
    assert c.select("INBOX") == ("OK", [b"5"])
    typ, data = c.fetch("1:*", "(FLAGS RFC822.SIZE INTERNALDATE)")
    assert typ == "OK" and len(data) == 5
    typ, data = c.fetch("2", "(BODY.PEEK[])")
    assert data[0][1].startswith(b"From: Carol") and b"\r\n" in data[0][1]
    assert b"\\Seen" not in c.fetch("2", "(FLAGS)")[1][0]
    typ, data = c.fetch("2", "(RFC822)")
    assert b"\\Seen" in c.fetch("2", "(FLAGS)")[1][0]
    typ, data = c.fetch("3", "(BODY[1] BODY[HEADER.FIELDS (Subject)] BODY.PEEK[]<5.6>)")
    assert data[0][1] == "body number 2 caf\u00e9\r\n".encode()
    assert data[1][1] == b"Subject: msg 2\r\n\r\n"
    assert data[2][1] == b" Carol"
    assert c.search(None, "SEEN") == ("OK", [b"2 3"])  # BODY[1] set \\Seen on 3
    assert c.search(None, "UNSEEN", "SUBJECT", "\"msg 4\"") == ("OK", [b"5"])
    assert c.search("UTF-8", "BODY", "\"number 3\"") == ("OK", [b"4"])
    c.literal = "café".encode()  # type: ignore[attr-defined]
    assert c.search("UTF-8", "BODY")[1] == [b"1 2 3 4 5"]
    assert c.uid("SEARCH", "OR", "FROM", "carol", "LARGER", "100000")[1] == [b"1 2 3 4 5"]
    assert c.search(None, "NOT", "FROM", "carol") == ("OK", [b""])
    assert c.search(None, "HEADER", "Message-ID", "example.org")[1] == [b"1 2 3 4 5"]
    assert c.search(None, "SENTON", "7-Feb-1994")[1] == [b"1 2 3 4 5"]
    assert c.store("1:2", "+FLAGS.SILENT", "(\\Deleted)") == ("OK", [None])
    typ, data = c.uid("STORE", "3", "+FLAGS", "($Label1 \\Flagged)")
    assert b"UID 3" in data[0] and b"$Label1" in data[0] and b"\\Flagged" in data[0]
    typ, data = c.uid("EXPUNGE", "2")  # RFC 4315: only UID 2
    assert typ == "OK" and c.untagged_responses.pop("EXPUNGE") == [b"2"]
    typ, data = c.expunge()
    assert data == [b"1"]
    assert c.select("INBOX") == ("OK", [b"3"])
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"3", b"4", b"5"]  # type: ignore[union-attr]
    c.logout()


def test_bad_sequence_and_bad_commands_keep_the_session(imap: IMAPServer) -> None:
    imap.deliver(ALICE, message())
    s = raw(imap)
    s.sendall(b"a LOGIN alice@example.test secret\r\nb SELECT INBOX\r\n")
    assert b"b OK" in until(s, b"b")
    for line, want in ((b"c FETCH 5 FLAGS", b"c BAD"), (b"d FROB", b"d BAD"), (b"e FETCH 1 (FOO)", b"e BAD"),
                       (b"f SELECT", b"f BAD"), (b"g UID STORE 1 +FLAGS (\\Bogus)", b"g BAD"),
                       (b"h SEARCH CHARSET KOI8-R ALL", b"h NO [BADCHARSET"),
                       (b"i CREATE ../../etc", b"i NO"), (b"j SELECT ../../x", b"j NO"),
                       (b"k CREATE a/b", b"k NO"), (b"l LOGIN x y", b"l BAD")):
        s.sendall(line + b"\r\n")
        assert want in until(s, line.split()[0]), line
    s.sendall(b"\r\nm NOOP\r\n")
    assert b"m OK" in until(s, b"m")
    s.close()
    assert not (imap.config.storage.maildir_root.parent / "etc").exists()


def test_literal_and_line_limits(imap: IMAPServer) -> None:
    s = raw(imap)
    s.sendall(b"a LOGIN alice@example.test secret\r\n")
    until(s, b"a")
    s.sendall(b"b APPEND INBOX {999999999}\r\n")
    assert b"b NO [TOOBIG]" in until(s, b"b")
    s.sendall(b"c LOGIN {999999999}\r\n")
    assert b"c BAD" in until(s, b"c")
    s.sendall(b"d NOOP " + b"x" * 70000 + b"\r\n")
    assert b"d BAD" in until(s, b"d")
    s.sendall(b"e NOOP\r\n")
    assert b"e OK" in until(s, b"e")
    s.sendall(b"f APPEND INBOX {999999999+}\r\n")  # RFC 7888 §4: cannot be skipped: closed
    assert b"f BAD" in until(s, b"f")
    assert s.recv(100) == b""
    s.close()


def test_append_literal_plus_flags_date_and_uidplus(imap: IMAPServer) -> None:
    s = raw(imap)
    s.sendall(b"a LOGIN alice@example.test secret\r\n")
    until(s, b"a")
    msg = message("appended")
    s.sendall(b'b APPEND Drafts (\\Draft \\Seen) "14-Jul-2020 10:00:00 +0200" {%d+}\r\n' % len(msg) + msg + b"\r\n")
    resp = until(s, b"b")
    m = re.search(rb"b OK \[APPENDUID (\d+) (\d+)\]", resp)
    assert m and m.group(2) == b"1"
    s.sendall(b"c APPEND Nowhere {3}\r\n")
    assert s.recv(100).startswith(b"+ ")
    s.sendall(b"x\r\n\r\n")
    assert b"c NO [TRYCREATE]" in until(s, b"c")
    s.close()
    c = imap.client()
    c.select("Drafts")
    typ, data = c.fetch("1", "(FLAGS INTERNALDATE)")
    assert b"\\Draft" in data[0] and b'"14-Jul-2020 08:00:00 +0000"' in data[0]
    c.logout()


def test_copy_move_and_uidplus(imap: IMAPServer) -> None:
    for i in range(3):
        imap.deliver(ALICE, message(f"m{i}"))
    c = imap.client()
    c.select()
    typ, data = c.uid("COPY", "1:2", "Archive")
    assert typ == "OK" and re.match(rb"\d+ 1:2 1:2", c.response("COPYUID")[1][0])
    typ, data = c._simple_command("UID", "MOVE", "3", "Trash")  # type: ignore[attr-defined]
    assert typ == "OK"
    assert c.untagged_responses.get("EXPUNGE") == [b"3"]
    assert b"COPYUID" in b" ".join(c.untagged_responses.get("OK", []))
    assert c.copy("1", "Missing")[0] == "NO"
    assert c.status("Archive", "(MESSAGES UIDNEXT)")[1] == [b"Archive (MESSAGES 2 UIDNEXT 3)"]
    assert c.status("Trash", "(MESSAGES)")[1] == [b"Trash (MESSAGES 1)"]
    c.logout()


def test_mailbox_management(imap: IMAPServer) -> None:
    c = imap.client()
    assert c.create("Work.Projects.2024")[0] == "OK"
    assert c.create("Work")[0] == "OK"
    assert c.create("Work")[0] == "NO"
    assert c.create("Caf&AOk-")[0] == "OK"
    lines = c.list('""', "Work*")[1]
    assert b'(\\HasChildren) "." Work' in lines
    assert b'(\\NonExistent \\HasChildren) "." Work.Projects' not in lines
    assert c.list('""', "Work.%")[1] == [b'(\\Noselect \\HasChildren) "." Work.Projects']
    assert c.rename("Work", "Job")[0] == "OK"
    assert c.list('""', "Job.*")[1] == [b'(\\Noselect \\HasChildren) "." Job.Projects',
                                      b'(\\HasNoChildren) "." Job.Projects.2024']
    assert c.subscribe("Job")[0] == "OK"
    assert c.lsub('""', "Job")[1] == [b'() "." Job']
    assert c.delete("Job.Projects.2024")[0] == "OK"
    assert c.delete("INBOX")[0] == "NO"
    assert c.delete("Nope")[0] == "NO"
    assert b"Caf&AOk-" in b" ".join(c.list()[1])
    assert (imap.maildir().root / ".Caf&AOk-").is_dir()
    typ, _ = c._simple_command("LIST", '""', '"*"', "RETURN", "(STATUS (MESSAGES UIDNEXT) SUBSCRIBED)")  # type: ignore
    assert typ == "OK"
    statuses = c.untagged_responses.pop("STATUS")
    assert b"Sent (MESSAGES 0 UIDNEXT 1)" in statuses
    assert any(b"\\Subscribed" in x and x.endswith(b"Sent") for x in c.untagged_responses.pop("LIST"))
    typ, _ = c._simple_command("LIST", "(SUBSCRIBED)", '""', "*")  # type: ignore
    assert all(b"\\Subscribed" in x for x in c.untagged_responses.pop("LIST"))
    c.logout()


def test_namespace_id_enable_unselect_quota(imap: IMAPServer) -> None:
    c = imap.client("bob@example.test")
    assert c.namespace() == ("OK", [b'(("" ".")) NIL NIL'])
    typ, _ = c._simple_command("ID", '("name" "pytest")')  # type: ignore[attr-defined]
    assert typ == "OK" and c.untagged_responses.pop("ID")
    assert c._simple_command("ENABLE", "FOO")[0] == "OK"  # type: ignore[attr-defined]
    c.select()
    assert c._simple_command("UNSELECT")[0] == "OK"  # type: ignore[attr-defined]
    with pytest.raises(imaplib.IMAP4.error, match="not allowed"):
        c.fetch("1", "FLAGS")  # no mailbox selected any more
    imap.deliver("bob@example.test", b"Subject: x\n\n" + b"y" * 10000)
    typ, data = c.getquotaroot("INBOX")
    assert data[1] == [b'"" (STORAGE 9 1024)']
    big = b"Subject: big\r\n\r\n" + b"z" * (1024 * 1024)
    typ, data = c.append("INBOX", None, None, big)
    assert typ == "NO" and b"OVERQUOTA" in data[0]
    assert c.setquota('""', "(STORAGE 5)")[0] == "NO"
    c.logout()


def test_two_sessions_see_each_others_changes(imap: IMAPServer) -> None:
    imap.deliver(ALICE, message("a"))
    imap.deliver(ALICE, message("b"))
    one, two = imap.client(), imap.client()
    one.select()
    two.select()
    one.store("1", "+FLAGS", "\\Flagged")
    two.noop()
    assert any(b"\\Flagged" in x for x in two.untagged_responses.pop("FETCH", []))
    one.store("2", "+FLAGS", "\\Deleted")
    one.expunge()
    imap.deliver(ALICE, message("c"))
    two.noop()
    assert two.untagged_responses.pop("EXPUNGE") == [b"2"]
    assert two.untagged_responses.pop("EXISTS")[-1] == b"2"
    # EXPUNGE is held back during FETCH (RFC 3501 §7.4.1)
    one.store("1", "+FLAGS", "\\Deleted")
    one.expunge()
    typ, data = two.fetch("1:*", "(FLAGS)")
    assert "EXPUNGE" not in two.untagged_responses
    two.noop()
    assert two.untagged_responses.pop("EXPUNGE") == [b"1"]
    one.logout()
    two.logout()


def _idle_until(c: imaplib.IMAP4, want: bytes, timeout: float) -> tuple[float, bytes]:
    start = time.monotonic()
    tag = c._new_tag()  # type: ignore[attr-defined]
    c.send(tag + b" IDLE\r\n")
    assert c.readline().startswith(b"+")
    c.sock.settimeout(timeout)
    got = b""
    while want not in got:
        got += c.readline()
    elapsed = time.monotonic() - start
    c.send(b"DONE\r\n")
    while not c.readline().startswith(tag + b" OK"):
        pass
    c.sock.settimeout(10)
    return elapsed, got


def test_idle_sees_delivery_from_another_process(imap: IMAPServer) -> None:
    c = imap.client()
    c.select()
    root = imap.config.storage.maildir_root
    code = (
        "import time, sys; time.sleep(0.5); from mailstack.storage import Maildir; "
        f"Maildir.for_user({str(root)!r}, 'example.test', 'alice').deliver(b'Subject: pushed\\n\\nhi\\n')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    elapsed, got = _idle_until(c, b"EXISTS", 10)
    proc.wait(10)
    assert b"* 1 EXISTS" in got
    assert elapsed < 2.5  # 0.5 s before the delivery, then well within 2 s
    # a flag change by another session of this process is pushed too
    other = imap.client()
    other.select()
    import threading

    threading.Timer(0.3, lambda: other.store("1", "+FLAGS", "\\Seen")).start()
    elapsed, got = _idle_until(c, b"FETCH", 10)
    assert b"\\Seen" in got
    other.logout()
    c.logout()


def test_restart_keeps_uids_and_flags(tmp_path: Path) -> None:
    gen = make_server(tmp_path)
    imap = next(gen)
    for i in range(3):
        imap.deliver(ALICE, message(f"r{i}"))
    c = imap.client()
    c.select()
    c.store("2", "+FLAGS", "(\\Answered $Forwarded)")
    validity = c.response("UIDVALIDITY")[1]
    before = c.uid("FETCH", "1:*", "(FLAGS)")[1]
    c.logout()
    gen.close()  # the server stops in the middle of the account's life
    gen = make_server(tmp_path)
    imap = next(gen)
    imap.deliver(ALICE, message("r3"))
    c = imap.client()
    c.select()
    assert c.response("UIDVALIDITY")[1] == validity
    after = c.uid("FETCH", "1:*", "(FLAGS)")[1]
    # RFC 3501 §2.3.2: the first session saw 1-3 as \Recent, this one only the new arrival
    assert after[:3] == [b.replace(b" \\Recent", b"").replace(b"\\Recent", b"") for b in before]
    assert b"UID 4" in after[3] and b"\\Recent" in after[3]
    assert b"$Forwarded" in after[1] and b"\\Answered" in after[1]
    c.logout()
    gen.close()


def test_unknown_user_and_block(tmp_path: Path) -> None:
    gen = make_server(tmp_path, auth={"max_failures": 2})
    imap = next(gen)
    try:
        c = imap.client(None)
        for _ in range(2):
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                c.login("nobody@example.test", "x")
        checks = imap.service.auth.hash_calls
        # the client network is blocked: even alice's right password is refused, unhashed
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.login("alice@example.test", PASSWORD)
        assert imap.service.auth.hash_calls == checks
        c.logout()
    finally:
        gen.close()


def test_tls_client_context_is_real(imap: IMAPServer) -> None:
    ctx = imap.client_context()
    with socket.create_connection(("127.0.0.1", imap.tls_port), timeout=5) as s:
        with ctx.wrap_socket(s) as t:
            assert t.version() in ("TLSv1.2", "TLSv1.3")
            assert t.recv(100).startswith(b"* OK")
    assert isinstance(ctx, ssl.SSLContext)


def test_login_timeout_and_pipelined_commands(tmp_path: Path) -> None:
    gen = make_server(tmp_path, imap={"login_timeout": 0.5})
    imap = next(gen)
    try:
        s = raw(imap)
        s.settimeout(5)
        data = b""
        while b"BYE" not in data:
            chunk = s.recv(1000)
            if not chunk:
                break
            data += chunk
        assert b"* BYE Autologout" in data
        s.close()
        # many pipelined commands on one connection: answered in order, none lost
        s = raw(imap)
        s.sendall(b"a LOGIN alice@example.test secret\r\n" + b"".join(b"n%d NOOP\r\n" % i for i in range(300))
                  + b"z LOGOUT\r\n")
        out = b""
        while not out.endswith(b"z OK Logout completed\r\n"):
            chunk = s.recv(65536)
            assert chunk
            out += chunk
        tags = re.findall(rb"^(n\d+) OK", out, re.M)
        assert tags == [b"n%d" % i for i in range(300)]
        s.close()
    finally:
        gen.close()


def test_stop_says_bye_closes_sessions_and_listeners(imap: IMAPServer) -> None:
    import asyncio

    with socket.create_connection(("127.0.0.1", imap.port), timeout=5) as s:
        assert s.recv(1000).startswith(b"* OK")
        asyncio.run_coroutine_threadsafe(imap.service.stop(1.0), imap.loop).result(10)
        data = b""
        while chunk := s.recv(1000):
            data += chunk
    assert data == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", imap.port), timeout=2).close()
