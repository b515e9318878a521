"""Transcripts of the IMAP extensions CREATE-SPECIAL-USE (RFC 6154), STATUS=SIZE
(RFC 8438) and MULTIAPPEND (RFC 3502) against the real server, from their RFCs' examples
(issue 16, deliverable 2). imaptest's ``multiappend`` group runs in ``test_imaptest``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .conftest import IMAPServer
from .test_corners import Raw, connect, tagged

__all__ = ["connect"]  # the fixture, re-exported for pytest


def created(status: str) -> bool:
    """A CREATE's tagged OK, with the new mailbox's MAILBOXID (RFC 8474 §4.1)."""
    return re.fullmatch(r"OK \[MAILBOXID \([0-9a-f]{32}\)\] CREATE completed", status) is not None


def capabilities(c: Raw) -> set[str]:
    return set(re.search(r"\* CAPABILITY ([^\r\n]*)", c.cmd("CAPABILITY")).group(1).split())  # type: ignore[union-attr]


# -- RFC 6154 §5.2, §5.3 CREATE-SPECIAL-USE -----------------------------------------------------

def test_create_special_use_is_kept_across_sessions_and_rename(connect: Callable[[], Raw]) -> None:
    c = connect()
    assert "CREATE-SPECIAL-USE" in capabilities(c)
    # RFC 6154 §5.3: C: t1 CREATE MySpecial (USE (\Drafts \Sent))
    assert created(tagged(c.cmd(r"CREATE MySpecial (USE (\Drafts \Sent))")))
    assert r'* LIST (\HasNoChildren \Drafts \Sent) "." MySpecial' in c.cmd('LIST "" MySpecial')
    assert created(tagged(c.cmd(r"CREATE Videos (use (\archive))")))  # any case
    other = connect()  # the use is on disk, not in the session
    assert r'* LIST (\HasNoChildren \Archive) "." Videos' in other.cmd('LIST "" Videos')
    assert r'"." Videos' in other.cmd('LIST (SPECIAL-USE) "" *')
    assert tagged(other.cmd("RENAME Videos Films")) == "OK RENAME completed"
    assert r'* LIST (\HasNoChildren \Archive) "." Films' in other.cmd('LIST "" Films')
    assert tagged(other.cmd("DELETE Films")) == "OK DELETE completed"
    assert created(tagged(other.cmd("CREATE Films")))
    assert r'* LIST (\HasNoChildren) "." Films' in other.cmd('LIST "" Films')


def test_create_special_use_refused_creates_nothing(connect: Callable[[], Raw]) -> None:
    c = connect()
    # RFC 6154 §5.3: "C: t1 CREATE Everything (USE (\All))" / "S: t1 NO [USEATTR] ..."
    assert tagged(c.cmd(r"CREATE Everything (USE (\All))")).startswith("NO [USEATTR] ")
    assert tagged(c.cmd(r"CREATE Everything (USE (\Archive \Bogus))")).startswith("NO [USEATTR] ")
    assert tagged(c.cmd(r"CREATE Everything (USE (Archive))")).startswith("BAD ")
    assert tagged(c.cmd(r"CREATE Everything (FOO (\Archive))")).startswith("BAD ")  # RFC 4466 §2.2
    assert "Everything" not in c.cmd('LIST "" *')
    assert created(tagged(c.cmd(r"CREATE Everything (USE ())")))


# -- RFC 8438 §3 STATUS=SIZE --------------------------------------------------------------------

def test_status_size_is_sum_of_rfc822_size(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    msgs = [b"Subject: one\n\nbody\n", b"Subject: two\n\nlonger body\nline two\n"]
    for m in msgs:
        imap.deliver("alice@example.test", m)
    c = connect()
    assert "STATUS=SIZE" in capabilities(c)
    c.cmd("SELECT INBOX")
    sizes = [int(n) for n in re.findall(r"RFC822\.SIZE (\d+)", c.cmd("FETCH 1:* RFC822.SIZE"))]
    assert sizes == [len(m) + m.count(b"\n") for m in msgs]  # CRLF counted
    # RFC 8438 §3: C: A042 STATUS blurdybloop (UIDNEXT MESSAGES SIZE)
    assert f"* STATUS INBOX (UIDNEXT 3 MESSAGES 2 SIZE {sum(sizes)})\r\n" in \
        c.cmd("STATUS INBOX (UIDNEXT MESSAGES SIZE)")


# -- RFC 3502 §6.3.11 MULTIAPPEND ---------------------------------------------------------------

MSG1 = b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nSubject: afternoon meeting\r\n\r\nHello Joe\r\n"
MSG2 = b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\nSubject: afternoon meeting 2\r\n\r\nI'll bring.\r\n"


def test_multiappend_stores_all_in_order(connect: Callable[[], Raw]) -> None:
    c = connect()
    assert "MULTIAPPEND" in capabilities(c)
    # RFC 3502 §6.3.11: A003 APPEND saved-messages (\Seen) {310} ... (\Seen) " 7-Feb-1994 ..." {328}
    resp = c.cmd(f"APPEND INBOX (\\Seen) {{{len(MSG1)}+}}\r\n" + MSG1.decode()
                 + f' (\\Seen $Work) " 7-Feb-1994 22:43:04 -0800" {{{len(MSG2)}+}}\r\n' + MSG2.decode())
    assert tagged(resp) == "OK [APPENDUID " + re.search(r"APPENDUID (\d+) ", resp).group(1) + " 1:2] APPEND completed"  # type: ignore[union-attr]
    c.cmd("SELECT INBOX")
    got = c.cmd("FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert "* 1 FETCH (FLAGS (\\Seen \\Recent) " in got and "afternoon meeting\r\n" in got
    assert '* 2 FETCH (FLAGS (\\Seen \\Recent $Work) INTERNALDATE " 8-Feb-1994 06:43:04 +0000"' in got
    assert "afternoon meeting 2" in got


def test_multiappend_is_all_or_nothing(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    c = connect()
    # the second message's 30 new keywords exceed what a Maildir folder can name (26
    # letters): the first message, already stored, is taken back
    kws = " ".join(f"kw{i}" for i in range(30))
    resp = c.cmd(f"APPEND INBOX {{{len(MSG1)}+}}\r\n" + MSG1.decode() + f" ({kws}) {{{len(MSG2)}+}}\r\n" + MSG2.decode())
    assert tagged(resp).startswith("NO [LIMIT] ")
    # a malformed second message: BAD, nothing stored
    resp = c.cmd(f"APPEND INBOX {{{len(MSG1)}+}}\r\n" + MSG1.decode() + ' "bad date" {1+}\r\nx')
    assert tagged(resp).startswith("BAD ")
    assert "* STATUS INBOX (MESSAGES 0)" in c.cmd("STATUS INBOX (MESSAGES)")
    assert imap.maildir().folder().sync().messages == ()


# -- RFC 3516 BINARY ----------------------------------------------------------------------------

MIME = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=xx\r\n\r\n"
        b"--xx\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29y\r\nbGQ=\r\n"
        b"--xx\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=C3=A9 =\r\nau lait  \r\n"
        b"--xx\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n"
        b"--xx\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
        b"--xx--\r\n")


def send(c: Raw, data: bytes) -> bytes:
    """Send a command with tag ``bN`` and return its whole response as bytes (it may hold
    octets that are not UTF-8)."""
    tag = data.split(b" ", 1)[0]
    c.sock.sendall(data)
    buf = b""
    while not re.search(rb"(^|\r\n)" + tag + rb" [A-Z]+ [^\r\n]*\r\n", buf):
        chunk = c.sock.recv(65536)
        assert chunk, buf
        buf += chunk
    return buf


def test_fetch_binary_decodes_parts(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    imap.deliver("alice@example.test", MIME)
    c = connect()
    assert "BINARY" in capabilities(c)
    c.cmd("SELECT INBOX")
    # RFC 3516 §4.2: BINARY.SIZE is the decoded size; BINARY.PEEK leaves \Seen alone
    got = c.cmd("FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] BINARY.PEEK[2] BINARY.PEEK[1]<6.5>)")
    assert got.startswith("* 1 FETCH (BINARY.SIZE[1] 11 BINARY[1] {11}\r\nhello world "
                          "BINARY[2] {13}\r\ncaf\u00e9 au lait BINARY[1]<6> {5}\r\nworld)\r\n")
    assert "\\Seen" not in c.cmd("FETCH 1 FLAGS")
    # §4.3: content with a NUL comes as a literal8
    raw = send(c, b"b1 FETCH 1 (BINARY[3])\r\n")
    assert b"BINARY[3] ~{4}\r\n\x00\x01\x02\xff" in raw and b"FLAGS (\\Seen" in raw  # BINARY sets \Seen
    # §4.3: an encoding the server does not know: NO [UNKNOWN-CTE]
    assert tagged(c.cmd("FETCH 1 (BINARY.PEEK[4])")).startswith("NO [UNKNOWN-CTE] ")
    assert tagged(c.cmd("FETCH 1 (BINARY.SIZE[4])")).startswith("NO [UNKNOWN-CTE] ")
    assert tagged(c.cmd("FETCH 1 (BINARY.SIZE[1]<0.2>)")).startswith("BAD ")  # no partial (§4.4)


def test_append_literal8_keeps_octets(connect: Callable[[], Raw]) -> None:
    c = connect()
    body = b"\x00-\xe4\n\r\n\n"
    msg = (b"From: user@domain.org\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n" + body)
    # RFC 3516 §4.4: append-data =/ literal8; a plain literal with a NUL stays BAD (RFC 3501 §9)
    assert b"b1 BAD " in send(c, b"b1 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert b"b2 OK [APPENDUID " in send(c, b"b2 APPEND INBOX ~{%d+}\r\n" % len(msg) + msg + b"\r\n")
    c.cmd("SELECT INBOX")
    raw = send(c, b"b3 FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] BODY.PEEK[1])\r\n")
    assert b"BINARY.SIZE[1] 7 BINARY[1] ~{7}\r\n" + body in raw
    assert b"BODY[1] {" in raw and raw.count(b"\x00") == 1  # stored base64: BODY[1] has no NUL
