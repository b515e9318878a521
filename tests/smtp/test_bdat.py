"""CHUNKING / BDAT (RFC 3030) on the MX and LMTP: byte-level transcripts against the real server."""

from __future__ import annotations

import socket
import time

import pytest

from mailstack.smtp.chunking import BdatArgs, ChunkReceiver, parse_bdat
from tests.smtp.conftest import MXServer
from tests.smtp.test_limits import new_messages, read_until_closed
from tests.smtp.test_mx import Raw, session

MSG = b"From: a@example.org\r\nSubject: chunked\r\n\r\nhello\r\n"


def transaction(r: Raw, rcpt: bytes = b"alice@example.test") -> None:
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<" + rcpt + b">\r\n")[0] == 250


def test_chunking_is_announced(mx_server: MXServer) -> None:
    r = Raw(mx_server.port)
    r.reply()
    code, lines = r.cmd(b"EHLO client.example.org\r\n")
    assert code == 250 and any(ln[4:] == b"CHUNKING" for ln in lines)
    assert not any(b"BINARYMIME" in ln for ln in lines)  # see chunking's docstring


@pytest.mark.parametrize("pipelined", [False, True])
def test_two_chunks_then_bdat_0_last(mx_server: MXServer, pipelined: bool) -> None:
    r = session(mx_server.port)
    transaction(r)
    a, b = MSG[:20], MSG[20:]
    if pipelined:
        r.sock.sendall(b"BDAT %d\r\n%sBDAT %d\r\n%sBDAT 0 LAST\r\n" % (len(a), a, len(b), b))
        replies = [r.reply() for _ in range(3)]
    else:
        replies = [r.cmd(b"BDAT %d\r\n%s" % (len(a), a)), r.cmd(b"BDAT %d\r\n%s" % (len(b), b)),
                   r.cmd(b"BDAT 0 LAST\r\n")]
    assert [c for c, _ in replies] == [250, 250, 250]
    assert replies[0][1] == [b"250 2.0.0 20 octets received"]
    assert b"2.0.0" in replies[2][1][0]
    assert r.cmd(b"QUIT\r\n")[0] == 221
    [m] = mx_server.messages("alice")
    assert m.endswith(b"Subject: chunked\n\nhello\n")


def test_chunk_holding_command_text_is_body(mx_server: MXServer) -> None:
    """What is inside a chunk is never read as a command, dots and all (no dot-stuffing)."""
    body = b"Subject: x\r\n\r\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\n..dots\r\n"
    r = session(mx_server.port)
    transaction(r)
    assert r.cmd(b"BDAT %d LAST\r\n%s" % (len(body), body))[0] == 250
    assert r.cmd(b"NOOP\r\n")[0] == 250
    assert mx_server.messages("bob") == []
    [m] = mx_server.messages("alice")
    assert m.endswith(b"\n.\nMAIL FROM:<evil@example.org>\nRCPT TO:<bob@example.test>\n..dots\n")


def test_data_inside_a_bdat_transaction_is_refused(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    transaction(r)
    assert r.cmd(b"BDAT 5\r\nSubje")[0] == 250
    code, lines = r.cmd(b"DATA\r\n")
    assert code == 503 and b"5.5.1" in lines[0]
    # the BDAT transaction goes on
    rest = b"ct: x\r\n\r\nbody\r\n"
    assert r.cmd(b"BDAT %d LAST\r\n%s" % (len(rest), rest))[0] == 250
    [m] = mx_server.messages("alice")
    assert m.endswith(b"Subject: x\n\nbody\n")


def test_data_transaction_then_bdat_needs_mail(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    transaction(r)
    assert r.cmd(b"DATA\r\n")[0] == 354
    assert r.cmd(MSG + b".\r\n")[0] == 250
    # a new transaction is needed; the chunk is read and dropped, the session goes on
    code, lines = r.cmd(b"BDAT 10 LAST\r\nNOOP\r\nNOOP")
    assert code == 503 and b"Need MAIL" in lines[0]
    assert r.cmd(b"RSET\r\n")[0] == 250
    assert len(mx_server.messages("alice")) == 1


@pytest.mark.parametrize("ehlo", [False, True])
def test_bdat_without_transaction_discards_the_chunk(mx_server: MXServer, ehlo: bool) -> None:
    r = Raw(mx_server.port)
    assert r.reply()[0] == 220
    if ehlo:
        assert r.cmd(b"EHLO client.example.org\r\n")[0] == 250
    code, _ = r.cmd(b"BDAT 12 LAST\r\nQUIT\r\nQUIT\r\n")
    assert code == 503
    assert r.cmd(b"NOOP\r\n")[0] == 250  # the QUITs were chunk octets


def test_bdat_without_recipients(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    code, lines = r.cmd(b"BDAT 4 LAST\r\nQUIT")
    assert code == 554 and b"5.5.1" in lines[0]
    assert r.cmd(b"NOOP\r\n")[0] == 250


@pytest.mark.parametrize("line", [b"BDAT\r\n", b"BDAT x LAST\r\n", b"BDAT 5 MORE\r\n", b"BDAT -1\r\n",
                                  b"BDAT 5 LAST extra\r\n", b"BDAT " + b"9" * 21 + b"\r\n"])
def test_malformed_bdat_closes(mx_server: MXServer, line: bytes) -> None:
    r = session(mx_server.port)
    transaction(r)
    code, lines = r.cmd(line + b"RCPT TO:<bob@example.test>\r\n")
    assert code == 501 and b"5.5.4" in lines[0]
    with pytest.raises((EOFError, ConnectionError)):
        r.reply()  # closed: nothing after it is read as a command


def test_size_limit_over_chunks(mx_server: MXServer) -> None:
    """100 KB limit: the chunk that crosses it is read whole and refused, nothing stored."""
    r = session(mx_server.port)
    transaction(r)
    chunk = b"x" * 998 + b"\r\n"
    assert r.cmd(b"BDAT %d\r\n%s" % (len(chunk) * 60, chunk * 60))[0] == 250
    code, lines = r.cmd(b"BDAT %d\r\n%s" % (len(chunk) * 60, chunk * 60))
    assert code == 552 and b"5.3.4" in lines[0]
    # a pipelined chunk after the failed one is discarded (RFC 3030 §4.2)
    code, _ = r.cmd(b"BDAT 6 LAST\r\nQUIT\r\n")
    assert code == 503
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    assert mx_server.messages("alice") == []


def test_huge_announced_chunk_is_bounded(mx_server: MXServer) -> None:
    """A chunk size far over the limit does not make the server keep it: 552 once read."""
    r = session(mx_server.port)
    transaction(r)
    size = 1_000_000
    r.sock.sendall(b"BDAT %d LAST\r\n" % size)
    block = b"y" * 65536
    sent = 0
    while sent < size:
        n = min(len(block), size - sent)
        r.sock.sendall(block[:n])
        sent += n
    code, lines = r.reply()
    assert code == 552 and b"5.3.4" in lines[0]
    assert r.cmd(b"NOOP\r\n")[0] == 250


@pytest.mark.parametrize("body,code,enh", [
    (b"Subject: x\r\n\r\na\0b\r\n", 554, b"5.6.0"),
    (b"Subject: x\r\n\r\na\rb\r\n", 550, b"5.6.0"),
    (b"Subject: x\r\n\r\nends in CR\r", 550, b"5.6.0"),
])
def test_nul_and_bare_cr_refused(mx_server: MXServer, body: bytes, code: int, enh: bytes) -> None:
    r = session(mx_server.port)
    transaction(r)
    got, lines = r.cmd(b"BDAT %d LAST\r\n%s" % (len(body), body))
    assert got == code and enh in lines[0]
    assert r.cmd(b"NOOP\r\n")[0] == 250
    assert mx_server.messages("alice") == []


def test_bare_lf_and_missing_final_crlf_are_normalised(mx_server: MXServer) -> None:
    body = b"Subject: x\n\nline one\nno final newline"
    r = session(mx_server.port)
    transaction(r)
    assert r.cmd(b"BDAT %d LAST\r\n%s" % (len(body), body))[0] == 250
    [m] = mx_server.messages("alice")
    assert m.endswith(b"Subject: x\n\nline one\nno final newline\n")


def test_binarymime_refused_at_mail(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    code, lines = r.cmd(b"MAIL FROM:<s@example.org> BODY=BINARYMIME\r\n")
    assert code == 501 and b"5.5.4" in lines[0]


def test_connection_lost_mid_chunk_stores_nothing(mx_server: MXServer) -> None:
    r = session(mx_server.port)
    transaction(r)
    r.sock.sendall(b"BDAT 1000 LAST\r\n" + MSG)
    r.sock.shutdown(socket.SHUT_WR)
    with pytest.raises((EOFError, ConnectionError)):
        r.reply()
    r.close()
    assert mx_server.messages("alice") == []


def test_lmtp_bdat_gives_one_reply_per_recipient(mx_server: MXServer) -> None:
    r = Raw(mx_server.lmtp_port)
    assert r.reply()[0] == 220
    code, lines = r.cmd(b"LHLO client.example.org\r\n")
    assert code == 250 and any(ln[4:] == b"CHUNKING" for ln in lines)
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<bob@example.test>\r\n")[0] == 250
    assert r.cmd(b"BDAT %d\r\n%s" % (len(MSG), MSG))[0] == 250
    r.sock.sendall(b"BDAT 0 LAST\r\n")
    assert [r.reply()[0], r.reply()[0]] == [250, 250]
    assert len(mx_server.messages("alice")) == 1 and len(mx_server.messages("bob")) == 1


def test_smtplib_still_uses_data(mx_server: MXServer) -> None:
    with mx_server.client() as c:
        c.ehlo()
        assert c.has_extn("chunking")
        c.sendmail("s@example.org", ["alice@example.test"], MSG)
    assert len(mx_server.messages("alice")) == 1


# ---------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("arg,want", [
    ("0 LAST", BdatArgs(0, True)), ("10", BdatArgs(10, False)), ("7 last", BdatArgs(7, True)),
    ("", None), (None, None), ("x", None), ("1 LAST LAST", None), ("1  LAST", None), ("١", None),
    ("+1", None), ("9" * 21, None),
])
def test_parse_bdat(arg: str | None, want: BdatArgs | None) -> None:
    assert parse_bdat(arg) == want


def test_receiver_bounds_memory_and_refuses_over_limit() -> None:
    rx = ChunkReceiver(10)
    rx.feed(b"12345")
    rx.feed(b"678901")
    assert rx.error is not None and rx.error.code == 552
    assert len(rx._buf) == 0  # noqa: SLF001 - nothing kept past the limit
    rx.feed(b"x" * 100)
    assert rx.size == 111


def test_receiver_joins_crlf_split_across_chunks() -> None:
    rx = ChunkReceiver(None)
    rx.feed(b"a\r")
    rx.end_chunk()
    rx.feed(b"\nb\r\n")
    assert rx.finish() == (b"a\r\nb\r\n", 0)



def test_chunk_dribbled_byte_by_byte_times_out(mx_factory: object) -> None:
    """A chunk whose octets trickle in far below min_data_rate ends in 421 4.4.2, as DATA does."""
    mx = mx_factory(smtp={"command_timeout": 2, "min_data_rate": 500})  # type: ignore[operator]
    r = session(mx.port)
    transaction(r)
    r.sock.sendall(b"BDAT 100000 LAST\r\n")
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 15:
        try:
            r.sock.sendall(b"x")
        except OSError:
            closed = True
            break
        r.sock.settimeout(0.2)
        try:
            data = r.sock.recv(4096)
        except socket.timeout:
            continue
        r.buf += data
        closed = True
        break
    assert closed, "a chunk dribbled byte by byte held the session for 15 s"
    r.sock.settimeout(5)
    assert read_until_closed(r)[0].startswith(b"421 4.4.2")
    assert new_messages(mx) == 0
