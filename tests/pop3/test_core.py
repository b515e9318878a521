"""Bytes in, bytes out against the POP3 core (no sockets, no storage)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.pop3 import replies as R
from mailstack.pop3.core import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    Close,
    LoginFailed,
    LoginOK,
    Maildrop,
    MaildropMessage,
    MessageEncoder,
    POP3Core,
    Retrieve,
    Send,
    StartTLS,
    State,
    Update,
    encode_message,
    redact,
    uidl_for,
)

MESSAGES = {
    1: b"Subject: one\n\nhello\n.dot line\n",
    2: b"Subject: two\nX: y\n\nl1\nl2\nl3\n",
    3: b"Subject: three\n\nbody",
}


def drop() -> Maildrop:
    msgs = []
    for uid, data in MESSAGES.items():
        size = len(data.replace(b"\n", b"\r\n"))
        msgs.append(MaildropMessage(uid=uid, size=size, uidl=uidl_for(uid, 1700000000), key=f"f{uid}"))
    return Maildrop(tuple(msgs))


class Driver:
    """Runs a core like the adapter would, with scripted effect results."""

    def __init__(self, core: POP3Core | None = None, login: object = None, update_ok: bool = True) -> None:
        self.core = core or POP3Core("mx.example.test")
        self.login = login if login is not None else LoginOK(drop())
        self.update_ok = update_ok
        self.effects: list[object] = []
        self.closed: str | None = None

    def run(self, data: bytes = b"") -> bytes:
        if data:
            self.core.receive_data(data)
        out = []
        while True:
            ev = self.core.next_event()
            if ev is NEED_DATA:
                return b"".join(out)
            if ev is PAUSED:
                raise AssertionError("paused without an effect")
            self.effects.append(ev)
            if isinstance(ev, Send):
                out.append(ev.data)
            elif isinstance(ev, Authenticate):
                self.core.login_done(self.login)  # type: ignore[arg-type]
            elif isinstance(ev, StartTLS):
                self.core.tls_done()
            elif isinstance(ev, Retrieve):
                out.append(ev.ok_line)
                out.extend(encode_message([MESSAGES[ev.message.uid]], ev.body_lines))
            elif isinstance(ev, Update):
                self.core.update_done(self.update_ok)
            elif isinstance(ev, Close):
                self.closed = ev.reason
                return b"".join(out)


def logged_in() -> Driver:
    d = Driver()
    d.run()
    assert d.run(b"USER a@example.test\r\nPASS secret\r\n") == b"+OK\r\n+OK Logged in.\r\n"
    return d


def test_greeting_and_quit() -> None:
    d = Driver()
    assert d.run() == b"+OK mx.example.test POP3 ready.\r\n"
    assert d.run(b"QUIT\r\n") == b"+OK Logging out.\r\n"
    assert d.closed == "QUIT"


def test_capa_before_and_after_login() -> None:
    d = Driver(POP3Core("h", tls_available=True, plaintext_allowed=True))
    d.run()
    assert d.run(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"USER\r\nSASL PLAIN\r\nSTLS\r\nIMPLEMENTATION mailstack\r\n.\r\n"
    )
    d.run(b"USER u\r\nPASS p\r\n")
    assert d.run(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"IMPLEMENTATION mailstack\r\n.\r\n"
    )


def test_plaintext_refused_without_tls_then_allowed_after_stls() -> None:
    d = Driver(POP3Core("h", tls_available=True, plaintext_allowed=False))
    d.run()
    capa = d.run(b"CAPA\r\n")
    assert b"USER\r\n" not in capa and b"SASL" not in capa and b"STLS\r\n" in capa
    assert d.run(b"USER u\r\n") == (
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
    )
    assert d.run(b"AUTH PLAIN AHUAcA==\r\n").startswith(b"-ERR [AUTH] Plaintext")
    # RFC 2595 §4: what was pipelined behind STLS is thrown away
    assert d.run(b"STLS\r\nUSER injected\r\n") == b"+OK Begin TLS negotiation now.\r\n"
    assert d.core.tls_active
    assert b"STLS" not in d.run(b"CAPA\r\n")
    assert d.run(b"STLS\r\n") == b"-ERR TLS is already active.\r\n"
    assert d.run(b"USER u\r\nPASS p\r\n") == b"+OK\r\n+OK Logged in.\r\n"


def test_stls_unavailable() -> None:
    d = Driver()
    d.run()
    assert d.run(b"STLS\r\n") == b"-ERR TLS support isn't enabled.\r\n"


def test_pass_needs_user_first() -> None:
    d = Driver()
    d.run()
    assert d.run(b"PASS x\r\n") == b"-ERR No username given.\r\n"
    assert d.run(b"USER a\r\nNOOP\r\nPASS x\r\n") == (
        b"+OK\r\n-ERR NOOP not valid in this state.\r\n-ERR No username given.\r\n"
    )


def test_password_keeps_spaces() -> None:
    d = Driver()
    d.run()
    d.run(b"USER a@b.test\r\nPASS  two words \r\n")
    auth = next(e for e in d.effects if isinstance(e, Authenticate))
    assert (auth.username, auth.password, auth.mechanism) == ("a@b.test", " two words ", "USER")
    assert "two words" not in repr(auth)


def test_failed_login_codes_and_limit() -> None:
    d = Driver(login=LoginFailed(R.AUTH_FAILED))
    d.run()
    assert d.run(b"USER a\r\nPASS b\r\n") == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    assert d.core.state is State.AUTHORIZATION
    d.login = LoginFailed(R.IN_USE)
    assert d.run(b"USER a\r\nPASS b\r\n") == b"+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
    d.login = LoginFailed(R.SYS_TEMP)
    assert d.run(b"USER a\r\nPASS b\r\n") == (
        b"+OK\r\n-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"
    )
    assert d.closed == "too many failed logins"


def test_sasl_plain_initial_response_and_continuation() -> None:
    d = Driver()
    d.run()
    ir = base64.b64encode(b"\0user@example.test\0pw").decode()
    assert d.run(f"AUTH PLAIN {ir}\r\n".encode()) == b"+OK Logged in.\r\n"
    auth = next(e for e in d.effects if isinstance(e, Authenticate))
    assert (auth.username, auth.password, auth.mechanism) == ("user@example.test", "pw", "PLAIN")

    d = Driver()
    d.run()
    assert d.run(b"AUTH PLAIN\r\n") == b"+ \r\n"
    resp = base64.b64encode(b"u\0u\0pw")
    assert d.run(resp + b"\r\n") == b"+OK Logged in.\r\n"


def test_sasl_edge_cases() -> None:
    d = Driver()
    d.run()
    assert d.run(b"AUTH\r\n") == b"+OK\r\nPLAIN\r\n.\r\n"
    assert d.run(b"AUTH CRAM-MD5\r\n") == b"-ERR Unsupported authentication mechanism.\r\n"
    assert d.run(b"AUTH PLAIN\r\n*\r\n") == b"+ \r\n-ERR Authentication aborted by client.\r\n"
    assert d.run(b"AUTH PLAIN\r\n!!!\r\n") == b"+ \r\n-ERR Invalid base64 data in response.\r\n"
    other = base64.b64encode(b"admin\0u\0pw").decode()  # proxy authorization refused
    assert d.run(f"AUTH PLAIN {other}\r\n".encode()) == b"-ERR [AUTH] Authentication failed.\r\n"
    assert not any(isinstance(e, Authenticate) for e in d.effects)


def test_transaction_commands_byte_for_byte() -> None:
    d = logged_in()
    s1, s2, s3 = (m.size for m in drop().messages)
    total = s1 + s2 + s3
    assert d.run(b"STAT\r\n") == f"+OK 3 {total}\r\n".encode()
    assert d.run(b"LIST\r\n") == f"+OK 3 messages ({total} octets)\r\n1 {s1}\r\n2 {s2}\r\n3 {s3}\r\n.\r\n".encode()
    assert d.run(b"LIST 2\r\n") == f"+OK 2 {s2}\r\n".encode()
    assert d.run(b"UIDL\r\n") == (
        b"+OK\r\n1 000000016553f100\r\n2 000000026553f100\r\n3 000000036553f100\r\n.\r\n"
    )
    assert d.run(b"UIDL 3\r\n") == b"+OK 3 000000036553f100\r\n"
    assert d.run(b"RETR 1\r\n") == f"+OK {s1} octets\r\n".encode() + b"Subject: one\r\n\r\nhello\r\n..dot line\r\n.\r\n"
    assert d.run(b"TOP 2 1\r\n") == b"+OK\r\nSubject: two\r\nX: y\r\n\r\nl1\r\n.\r\n"
    assert d.run(b"TOP 2 0\r\n") == b"+OK\r\nSubject: two\r\nX: y\r\n\r\n.\r\n"
    assert d.run(b"RETR 3\r\n") == f"+OK {s3} octets\r\n".encode() + b"Subject: three\r\n\r\nbody\r\n.\r\n"
    assert d.run(b"NOOP\r\n") == b"+OK\r\n"


def test_number_errors() -> None:
    d = logged_in()
    assert d.run(b"LIST 4\r\n") == b"-ERR There's no message 4.\r\n"
    assert d.run(b"LIST 0\r\n") == b"-ERR There's no message 0.\r\n"
    assert d.run(b"RETR x\r\n") == b"-ERR Invalid message number: x\r\n"
    assert d.run(b"RETR\r\n") == b"-ERR Expected one message number.\r\n"
    assert d.run(b"DELE 1 2\r\n") == b"-ERR Noise after message number.\r\n"
    assert d.run(b"TOP 1\r\n") == b"-ERR TOP needs a message number and a line count.\r\n"
    assert d.run(b"TOP 1 -1\r\n") == b"-ERR Invalid line count: -1\r\n"
    assert d.run(b"RETR \xd9\xa3\r\n") == b"-ERR Invalid message number: \xd9\xa3\r\n"  # Arabic-Indic 3


def test_dele_rset_and_update() -> None:
    d = logged_in()
    s1, s2, s3 = (m.size for m in drop().messages)
    assert d.run(b"DELE 2\r\n") == b"+OK Marked to be deleted.\r\n"
    assert d.run(b"DELE 2\r\n") == b"-ERR Message is deleted.\r\n"
    assert d.run(b"RETR 2\r\n") == b"-ERR Message is deleted.\r\n"
    assert d.run(b"STAT\r\n") == f"+OK 2 {s1 + s3}\r\n".encode()
    assert d.run(b"LIST\r\n").endswith(f"1 {s1}\r\n3 {s3}\r\n.\r\n".encode())
    assert b"\r\n2 " not in d.run(b"UIDL\r\n")
    assert d.run(b"RSET\r\n") == f"+OK maildrop has 3 messages ({s1 + s2 + s3} octets)\r\n".encode()
    d.run(b"RETR 1\r\nDELE 3\r\nRETR 3\r\n")
    assert d.run(b"QUIT\r\n") == b"+OK Logging out, messages deleted.\r\n"
    update = next(e for e in d.effects if isinstance(e, Update))
    assert update == Update(expunge=(3,), seen=(1,))
    assert d.closed == "QUIT"


def test_update_failure_is_sys_temp() -> None:
    d = logged_in()
    d.update_ok = False
    d.run(b"DELE 1\r\n")
    assert d.run(b"QUIT\r\n") == b"-ERR [SYS/TEMP] Some deleted messages could not be removed, try again later.\r\n"


def test_quit_without_changes_needs_no_update() -> None:
    d = logged_in()
    d.run(b"TOP 1 0\r\n")  # TOP does not set \Seen
    assert d.run(b"QUIT\r\n") == b"+OK Logging out.\r\n"
    assert not any(isinstance(e, Update) for e in d.effects)


def test_dropped_connection_never_updates() -> None:
    d = logged_in()
    d.run(b"DELE 1\r\n")
    d.core.receive_data(b"")
    assert d.run() == b""
    assert d.closed == "client closed the connection"
    assert not any(isinstance(e, Update) for e in d.effects)


def test_state_table() -> None:
    d = Driver()
    d.run()
    assert d.run(b"STAT\r\n") == b"-ERR STAT not valid in this state.\r\n"
    assert d.run(b"APOP a b\r\n") == b"-ERR Unknown command: APOP\r\n"
    assert d.run(b"FOO\r\n") == b"-ERR Unknown command: FOO\r\n"
    d = logged_in()
    assert d.run(b"USER x\r\n") == b"-ERR USER not valid in this state.\r\n"
    assert d.run(b"STLS\r\n") == b"-ERR STLS not valid in this state.\r\n"


def test_pipelined_in_one_packet_answered_in_order() -> None:
    d = Driver()
    d.run()
    out = d.run(b"USER a\r\nPASS b\r\nSTAT\r\nLIST 1\r\nQUIT\r\n")
    s1 = drop().messages[0].size
    assert out.startswith(b"+OK\r\n+OK Logged in.\r\n+OK 3 ")
    assert out.endswith(f"+OK 1 {s1}\r\n+OK Logging out.\r\n".encode())


def test_bare_lf_and_lowercase_and_split_packets() -> None:
    d = Driver()
    d.run()
    assert d.run(b"us") == b""
    assert d.run(b"er a\npass b\n") == b"+OK\r\n+OK Logged in.\r\n"


def test_long_line_and_too_many_bad_commands() -> None:
    d = Driver(POP3Core("h", max_line=100, max_bad=3))
    d.run()
    assert d.run(b"NOOP " + b"x" * 200) == b"-ERR Line too long.\r\n"
    assert d.run(b"x" * 50 + b"\r\nCAPA\r\n").startswith(b"+OK Capability")  # rest of the long line skipped
    assert d.run(b"BAD\r\nBAD\r\n") == (
        b"-ERR Unknown command: BAD\r\n-ERR Unknown command: BAD\r\n-ERR Too many bad commands.\r\n"
    )
    assert d.closed == "too many bad commands"


def test_invalid_utf8_command() -> None:
    d = Driver()
    d.run()
    assert d.run(b"USER \xff\r\n") == b"-ERR Invalid characters in command.\r\n"


def test_redact() -> None:
    assert redact(b"PASS hunter2") == b"PASS <hidden>"
    assert redact(b"AUTH PLAIN AGEAYg==") == b"AUTH PLAIN <hidden>"
    assert redact(b"AGEAYg==", in_sasl=True) == b"<SASL response hidden>"
    assert redact(b"RETR 1") == b"RETR 1"


def test_uidl_format() -> None:
    assert uidl_for(1, 1) == "0000000100000001"
    assert uidl_for(0xABC, 0x5F000000) == "00000abc5f000000"


# -- message encoding: (file bytes, TOP k or None) -> wire bytes ------------------
ENCODING_TABLE = [
    (b"", None, b".\r\n"),  # empty message
    (b"a\nb\n", None, b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb\r\n", None, b"a\r\nb\r\n.\r\n"),  # CRLF on disk stays CRLF (no CR CR LF)
    (b"no newline", None, b"no newline\r\n.\r\n"),
    (b".\n..\n.x\n", None, b"..\r\n...\r\n..x\r\n.\r\n"),  # RFC 1939 §3 byte-stuffing
    (b"a\rb\n", None, b"a\rb\r\n.\r\n"),  # a lone CR is kept
    (b"H: 1\n\nb1\nb2\n", 0, b"H: 1\r\n\r\n.\r\n"),
    (b"H: 1\n\nb1\nb2\n", 5, b"H: 1\r\n\r\nb1\r\nb2\r\n.\r\n"),
    (b"H: 1\n\nb1\n.b2", 2, b"H: 1\r\n\r\nb1\r\n..b2\r\n.\r\n"),
    (b"H: 1\nH: 2\n", 3, b"H: 1\r\nH: 2\r\n.\r\n"),  # no body at all
]


@pytest.mark.parametrize("data,k,wire", ENCODING_TABLE)
def test_encoding_table(data: bytes, k: int | None, wire: bytes) -> None:
    assert b"".join(encode_message([data], k)) == wire
    # the same byte by byte
    assert b"".join(encode_message([data[i : i + 1] for i in range(len(data))], k)) == wire


def unstuff(wire: bytes) -> bytes:
    """What poplib does: split lines, drop the terminator, unstuff leading dots."""
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    lines = body.split(b"\r\n")[:-1] if body else []
    return b"".join((line[1:] if line.startswith(b"..") else line) + b"\r\n" for line in lines)


lines_st = st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), max_size=20)


@settings(max_examples=300, deadline=None)
@given(lines=lines_st, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8), crlf=st.booleans())
def test_encoder_roundtrip_any_chunking(lines: list[bytes], cuts: list[int], crlf: bool) -> None:
    eol = b"\r\n" if crlf else b"\n"
    data = b"".join(line + eol for line in lines)
    points = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:])]
    wire = b"".join(encode_message(chunks))
    assert unstuff(wire) == b"".join(line + b"\r\n" for line in lines)
    assert b"\r\n.\r\n" not in wire[:-3] or wire.count(b"\r\n.\r\n") == 1
    # the announced size (CRLF size) equals what was sent before stuffing
    assert len(unstuff(wire)) == len(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


@settings(max_examples=200, deadline=None)
@given(lines=lines_st, k=st.integers(min_value=0, max_value=25), cut=st.integers(min_value=1, max_value=50))
def test_top_is_a_prefix_of_retr(lines: list[bytes], k: int, cut: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    full = unstuff(b"".join(encode_message(chunks)))
    top = unstuff(b"".join(encode_message(chunks, k)))
    assert full.startswith(top)
    out_lines = top.split(b"\r\n")[:-1]
    if b"" in lines:
        blank = out_lines.index(b"") if b"" in out_lines else len(out_lines)
        assert len(out_lines) - blank - 1 == min(k, len(lines) - lines.index(b"") - 1)
    else:
        assert top == full


def test_encoder_done_stops_reading() -> None:
    enc = MessageEncoder(0)
    assert enc.feed(b"H: 1\n\nbody\n") == b"H: 1\r\n\r\n"
    assert enc.done
    assert enc.feed(b"more\n") == b""
    assert enc.finish() == b".\r\n"


def test_quit_after_retr_only_sets_seen() -> None:
    d = logged_in()
    d.run(b"RETR 2\r\n")
    assert d.run(b"QUIT\r\n") == b"+OK Logging out.\r\n"
    assert next(e for e in d.effects if isinstance(e, Update)) == Update(expunge=(), seen=(2,))


def test_rset_forgets_seen() -> None:
    d = logged_in()
    d.run(b"RETR 2\r\nRSET\r\n")
    assert d.run(b"QUIT\r\n") == b"+OK Logging out.\r\n"
    assert not any(isinstance(e, Update) for e in d.effects)


COMMANDS = [b"USER a", b"PASS b", b"STAT", b"LIST", b"LIST 2", b"RETR 1", b"TOP 3 1", b"DELE 2", b"RSET",
            b"UIDL", b"UIDL 9", b"NOOP", b"CAPA", b"AUTH PLAIN", b"AUTH", b"STLS", b"*", b"RETR -1", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(COMMANDS), st.binary(max_size=30)), max_size=30),
       st.sampled_from([b"\r\n", b"\n"]))
def test_any_input_gives_well_formed_replies(cmds: list[bytes], eol: bytes) -> None:
    d = Driver(POP3Core("h", tls_available=True))
    out = d.run()
    for c in cmds:
        out += d.run(c.replace(b"\n", b"") + eol)
        if d.closed:
            break
    assert out.endswith(b"\r\n")
    assert out.count(b"\n") == out.count(b"\r\n")  # never a bare LF
    sends = [e.data for e in d.effects if isinstance(e, Send)]
    assert all(s.startswith((b"+OK", b"-ERR", b"+ ")) for s in sends)
