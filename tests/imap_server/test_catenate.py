"""CATENATE (RFC 4469) against the real server: byte-level transcripts over a raw socket
after the RFC's Appendix A (a draft rebuilt from parts of itself and a forwarded
message), its BADURL example (with erratum 4046's bare URL), TOOBIG, MULTIAPPEND."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import IMAPServer, make_server
from .test_commands import until
from .test_search_ext import cmd, login  # noqa: F401  (login is a fixture)

DRAFT = (b"From: Pete <pete@example.org>\r\nTo: Jane <jane@example.org>\r\nSubject: draft\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n"
         b"--BOUND\r\nContent-Type: text/plain\r\n\r\nPlease see the attached.\r\n"
         b"--BOUND\r\nContent-Type: application/octet-stream\r\n\r\nAAAA\r\n--BOUND--\r\n")
FORWARD = b"From: Bob <bob@example.org>\r\nSubject: the original\r\n\r\nForwarded body.\r\n"


def _select(s: socket.socket, mailbox: str) -> int:
    out = cmd(s, f"SELECT {mailbox}")
    m = re.search(rb"\[UIDVALIDITY (\d+)\]", out)
    assert m, out
    return int(m.group(1))


def _append_sync(s: socket.socket, pieces: list[bytes], tag: bytes) -> bytes:
    """Send ``pieces`` joined by synchronising literals: each piece but the last ends in a
    ``{n}`` header, and the server's ``+`` is awaited before the literal (RFC 3501 §7.5)."""
    for i, piece in enumerate(pieces):
        s.sendall(piece)
        if i < len(pieces) - 1:
            assert s.recv(4096).startswith(b"+ "), piece
    return until(s, tag)


def _fetch_body(s: socket.socket, uid: int) -> bytes:
    out = cmd(s, f"UID FETCH {uid} BODY.PEEK[]")
    m = re.search(rb"BODY\[\] \{(\d+)\}\r\n", out)
    assert m, out
    return out[m.end() : m.end() + int(m.group(1))]


@pytest.fixture
def drafts(imap: IMAPServer) -> IMAPServer:
    imap.maildir().create_folder("Drafts")
    imap.deliver("alice@example.test", DRAFT.replace(b"\r\n", b"\n"), "Drafts")
    imap.deliver("alice@example.test", FORWARD.replace(b"\r\n", b"\n"), "Drafts")
    return imap


def test_capability(imap: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    assert b"CATENATE" in cmd(login(imap), "CAPABILITY").split(b"\r\n")[0].split()


def test_rfc4469_appendix_a(drafts: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(drafts)
    v = _select(s, "Drafts")
    base = f"/Drafts;UIDVALIDITY={v}/;UID=1"
    t1 = b"\r\n--------------030308070208000400050907\r\n"
    t2 = b"\r\n--------------030308070208000400050907\r\n"
    t3 = b"\r\n--------------030308070208000400050907--\r\n"
    pieces = [
        f'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "{base}/;section=HEADER" '
        f"TEXT {{{len(t1)}}}\r\n".encode(),
        t1 + f' URL "{base}/;section=1.MIME" URL "{base}/;section=1" TEXT {{{len(t2)}}}\r\n'.encode(),
        t2 + f' URL "/Drafts;UIDVALIDITY={v}/;UID=2" TEXT {{{len(t3)}}}\r\n'.encode(),
        t3 + b")\r\n",
    ]
    out = _append_sync(s, pieces, b"A003")
    # Drafts is selected: the new keyword and message are announced before the OK
    assert out.endswith(f"* 3 EXISTS\r\n* 3 RECENT\r\nA003 OK [APPENDUID {v} 3] APPEND completed\r\n".encode()), out
    header = DRAFT[: DRAFT.index(b"\r\n\r\n") + 4]
    part1_mime = b"Content-Type: text/plain\r\n\r\n"
    part1 = b"Please see the attached."
    assert _fetch_body(s, 3) == header + t1 + part1_mime + part1 + t2 + FORWARD + t3
    out = cmd(s, "UID FETCH 3 FLAGS")
    assert b"\\Seen" in out and b"\\Draft" in out and b"$MDNSent" in out


def test_rfc4469_badurl_stores_nothing(drafts: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(drafts)
    # RFC 4469 Appendix A's failing URL (";section" without its "/", a UIDVALIDITY that is
    # not the mailbox's): NO [BADURL url] with the URL bare (erratum 4046)
    bad = "/INBOX;UIDVALIDITY=785799047/;UID=113330;section=1.5.9"
    pieces = [b"A003 APPEND Drafts (\\Seen) CATENATE (TEXT {4}\r\n", f'abc\n URL "{bad}")\r\n'.encode()]
    out = _append_sync(s, pieces, b"A003")
    assert out.startswith(f"A003 NO [BADURL {bad}] ".encode()), out
    for url in ("/Drafts/;UID=99", "/Nope/;UID=1", "/Drafts;UIDVALIDITY=1/;UID=1", "/Drafts/;UID=1/;SECTION=7",
                "/Drafts/;UID=1/;URLAUTH=anonymous:internal:0123", "imap://other.example/Drafts/;UID=1",
                "imap://bob%40example.test@mx.example.test/Drafts/;UID=1", "Drafts/;UID=1",
                "/..%2F..%2Fexample.test%2Fbob/;UID=1", "/.Drafts/;UID=1", "/~/;UID=1"):  # never outside
        out = cmd(s, f'APPEND Drafts CATENATE (URL "{url}")')
        assert out.startswith(f"t NO [BADURL {url}] ".encode()), out
    assert cmd(s, "STATUS Drafts (MESSAGES)").startswith(b"* STATUS Drafts (MESSAGES 2)\r\n")


def test_urls_of_other_mailboxes_and_the_full_form(drafts: IMAPServer,
                                                   login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(drafts)
    urls = ('"imap://alice%40example.test@MX.example.test:143/Drafts/;uid=2/;section=TEXT"',
            '"/Drafts/;UID=1/;SECTION=HEADER.FIELDS%20(SUBJECT)"', '"/Drafts/;UID=2/;PARTIAL=6.3"')
    out = cmd(s, f"APPEND INBOX CATENATE (URL {' URL '.join(urls)})")
    assert re.fullmatch(rb"t OK \[APPENDUID \d+ 1\] APPEND completed\r\n", out), out
    _select(s, "INBOX")
    assert _fetch_body(s, 1) == b"Forwarded body.\r\nSubject: draft\r\n\r\nBob"


def test_multiappend_all_or_nothing(drafts: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(drafts)
    # RFC 3502 + RFC 4469 §5: several CATENATE messages in one APPEND, stored together or not at all
    out = cmd(s, 'APPEND INBOX CATENATE (URL "/Drafts/;UID=2") () CATENATE (URL "/Drafts/;UID=2/;SECTION=9")')
    assert out.startswith(b"t NO [BADURL /Drafts/;UID=2/;SECTION=9] ")
    assert cmd(s, "STATUS INBOX (MESSAGES)").startswith(b"* STATUS INBOX (MESSAGES 0)\r\n")
    out = cmd(s, 'APPEND INBOX CATENATE (URL "/Drafts/;UID=2") (\\Flagged) {3+}\r\nabc')
    assert re.fullmatch(rb"t OK \[APPENDUID \d+ 1:2\] APPEND completed\r\n", out), out


def test_missing_target_is_trycreate_before_urls(drafts: IMAPServer,
                                                 login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(drafts)
    out = cmd(s, 'APPEND Nowhere CATENATE (URL "/Drafts;UIDVALIDITY=1/;UID=1")')
    assert out.startswith(b"t NO [TRYCREATE] ")


def test_bad_catenate_syntax(drafts: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    s = login(drafts)
    for line in ("APPEND INBOX CATENATE ()", 'APPEND INBOX CATENATE (FOO "x")', "APPEND INBOX CATENATE URL x",
                 'APPEND INBOX CATENATE (URL "/Drafts/;UID=1"', "APPEND INBOX CATENATE (" + "URL x " * 300 + ")"):
        assert cmd(s, line).startswith(b"t BAD "), line
    assert cmd(s, "NOOP") == b"t OK NOOP completed\r\n"


@pytest.fixture
def small(tmp_path: Path) -> Iterator[IMAPServer]:
    yield from make_server(tmp_path, imap={"append_limit": 1000})


def test_toobig(small: IMAPServer, login: Callable[[IMAPServer], socket.socket]) -> None:
    small.deliver("alice@example.test", b"Subject: x\n\n" + b"y" * 400 + b"\n")
    s = login(small)
    # RFC 4469 §6 TOOBIG: the parts together pass the server's APPENDLIMIT
    out = cmd(s, "APPEND INBOX CATENATE (" + " ".join(['URL "/INBOX/;UID=1"'] * 200) + ")")
    assert out == b"t NO [TOOBIG] Message too large\r\n"
    out = cmd(s, 'APPEND INBOX CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1")')
    assert re.fullmatch(rb"t OK \[APPENDUID \d+ 2\] APPEND completed\r\n", out), out
    assert cmd(s, "STATUS INBOX (MESSAGES)").startswith(b"* STATUS INBOX (MESSAGES 2)\r\n")
