"""mail.headers, bytes in / values out: the one reader of header sections (issue 17 #4).

Tables of edge cases (LF vs CRLF, no body, no empty line, header only, folding, obs
``Name :``, NUL, 8-bit) for the end of the header section, the field reader and the
edits (insert, remove, Received:). The arbitrary-bytes property is in
tests/hostile/test_headers.py.
"""

from __future__ import annotations

import email.utils

import pytest

from mailstack.mail import headers as H

# (message, (end of header section, start of body))
ENDS = [
    (b"A: b\r\n\r\nbody", (6, 8)),  # CRLF
    (b"A: b\n\nbody", (5, 6)),  # LF (Maildir files)
    (b"A: b\n\r\nbody", (5, 7)),  # mixed: LF line, CRLF empty line
    (b"A: b\r\n\nbody", (6, 7)),  # mixed: CRLF line, LF empty line
    (b"A: b\r\n\r\n", (6, 8)),  # empty body
    (b"A: b\r\n", (6, 6)),  # header only, no empty line
    (b"A: b", (4, 4)),  # header only, no line end at all
    (b"", (0, 0)),
    (b"\r\nbody\r\n\r\nX: y\r\n", (0, 2)),  # no header: the first line is the empty one
    (b"\nbody", (0, 1)),
    (b"A: b\r\n \r\nbody", (13, 13)),  # a line of one space is a continuation, not empty
    (b"A: b\r\r\n\r\nbody", (7, 9)),  # a bare CR is a byte of the line
    (b"A: b\r\nC: d\r\n\r\nX: in body\r\n\r\n", (12, 14)),  # the FIRST empty line ends it
    (b"A: \x00\xff\r\n\r\n", (7, 9)),  # NUL and 8-bit bytes change nothing
]


@pytest.mark.parametrize("message, expected", ENDS)
def test_header_end(message: bytes, expected: tuple[int, int]) -> None:
    assert H.header_end(message) == expected
    end, body = expected
    assert H.split_message(message) == (message[:end], message[body:])
    assert b"".join(f.raw for f in H.raw_fields(message)) == message[:end]


def test_header_end_limit_keeps_whole_lines() -> None:
    message = b"A: b\r\nC: " + b"d" * 100 + b"\r\n\r\nbody"
    assert H.header_end(message, 20) == (6, 6)
    assert H.header_block(message, 20) == b"A: b\r\n"
    assert H.header_block(message) == message[: message.index(b"\r\n\r\n") + 2]
    assert H.header_block(b"x" * 50, 10) == b""  # one endless line: nothing whole


# (header section, lenient reading as (name, value) pairs, strict: the same or an error text)
FIELDS: list[tuple[bytes, list[tuple[str, str]], str | None]] = [
    (b"From: a@b\r\nTo: c@d\r\n", [("From", " a@b"), ("To", " c@d")], None),
    (b"From: a@b\nTo: c@d\n", [("From", " a@b"), ("To", " c@d")], None),
    (b"Subject: one\r\n two\r\n\tthree\r\n", [("Subject", " one two\tthree")], None),  # RFC 5322 §2.2.3
    (b"Subject: one\n two\n", [("Subject", " one two")], None),
    (b"From : a@b\r\n", [("From", " a@b")], None),  # obs: WSP before the colon, §4.5.3
    (b"FROM\t:a@b\r\n", [("FROM", "a@b")], None),
    (b"X-Empty:\r\n", [("X-Empty", "")], None),
    (b"X:y:z\r\n", [("X", "y:z")], None),
    (b"Subject: caf\xc3\xa9\r\n", [("Subject", " caf\u00e9")], None),  # RFC 6532
    (b"Subject: caf\xe9\r\n", [("Subject", " caf\ufffd")], "Subject: header is not UTF-8"),
    (b"Subject: a\x00b\r\n", [("Subject", " a\x00b")], None),  # NUL in a value is the value's
    (b"Subject: a\rb\r\n", [("Subject", " a\rb")], None),  # so is a bare CR
    (b"Bogus line\r\nFrom: a@b\r\n", [("From", " a@b")], "header line 1 is not a header field"),
    (b"From a@b\r\n", [], "header line 1 is not a header field"),  # no colon
    (b"Fr om: a@b\r\n", [], "header line 1 is not a header field"),  # space in the name
    (b"Fr\x00om: a@b\r\n", [], "header line 1 is not a header field"),  # NUL in the name
    (b"Fr\xc3\xb6m: a@b\r\n", [], "header line 1 is not a header field"),  # 8-bit name
    (b": a@b\r\n", [], "header line 1 is not a header field"),  # empty name
    (b" From: a@b\r\nTo: c@d\r\n", [("To", " c@d")], "header line 1 continues no field"),
    (b"Bogus\r\n From: a@b\r\nTo: c@d\r\n", [("To", " c@d")], "header line 1 is not a header field"),
    (b"To: c@d\r\n", [("To", " c@d")], None),
    (b"To: c@d\r", [("To", " c@d")], None),  # a last CR without LF
    (b"\r", [], None),
    (b"", [], None),
]


@pytest.mark.parametrize("head, lenient, strict_error", FIELDS)
def test_header_fields(head: bytes, lenient: list[tuple[str, str]], strict_error: str | None) -> None:
    # the body after it (not read), unless the section ends in a bare CR
    message = head + b"\r\nbody: not a field\r\n" if not head.endswith(b"\r") else head
    assert [(f.name, f.value) for f in H.header_fields(message, strict=False)] == lenient
    if strict_error is None:
        assert [(f.name, f.value) for f in H.header_fields(message, strict=True)] == lenient
    else:
        with pytest.raises(H.HeaderError, match=f"^{strict_error}$"):
            H.header_fields(message, strict=True)


def test_field_names_compare_case_insensitively() -> None:
    message = b"DKIM-signature : v=1\r\nsubject: x\r\n\r\nDate: in the body\r\n"
    assert H.has_field(message, "DKIM-Signature") and H.has_field(message, "SUBJECT")
    assert not H.has_field(message, "Date")  # the body is not the header
    assert not H.has_field(b"Bogus Date: x\r\n\r\n", "Date")
    assert [f.key for f in H.header_fields(message)] == ["dkim-signature", "subject"]


# (message, fields inserted, expected)
INSERTS = [
    (b"A: b\r\n\r\nbody\r\n", b"X: 1\r\n", b"A: b\r\nX: 1\r\n\r\nbody\r\n"),
    (b"A: b\n\nbody\n", b"X: 1\r\n", b"A: b\nX: 1\r\n\nbody\n"),
    (b"A: b\r\n", b"X: 1\r\n", b"A: b\r\nX: 1\r\n"),  # header only
    (b"A: b", b"X: 1\r\n", b"A: b\r\nX: 1\r\n"),  # no line end: one is added first
    (b"A: b\r\n folded\r\n\r\nbody", b"X: 1\r\n", b"A: b\r\n folded\r\nX: 1\r\n\r\nbody"),
    (b"\r\nbody\r\n\r\nmore\r\n", b"X: 1\r\n", b"X: 1\r\n\r\nbody\r\n\r\nmore\r\n"),  # never into the body
    (b"", b"X: 1\r\n", b"X: 1\r\n"),
]


@pytest.mark.parametrize("message, fields, expected", INSERTS)
def test_insert_fields(message: bytes, fields: bytes, expected: bytes) -> None:
    assert H.insert_fields(message, fields) == expected


def test_remove_fields_keeps_every_other_byte() -> None:
    message = (b"Received: x\r\nA-R: one\r\n  folded\r\nBogus line\r\nA-R : two\nSubject: s\r\n"
               b"\r\nA-R: in the body\r\n")
    out, n = H.remove_fields(message, lambda f: f.key == "a-r")
    assert n == 2
    assert out == b"Received: x\r\nBogus line\r\nSubject: s\r\n\r\nA-R: in the body\r\n"
    seen: list[str] = []

    def keep(f: H.HeaderField) -> bool:
        seen.append(f.value)
        return False

    assert H.remove_fields(message, keep) == (message, 0)
    assert seen == [" x", " one  folded", " two", " s"]


def test_field_never_injects_a_line() -> None:
    assert H.field("Delivered-To", "a@b\r\nBcc: evil@x") == b"Delivered-To: a@bBcc: evil@x\r\n"
    assert H.field("Return-Path", "<\x00a\x7f@b>") == b"Return-Path: <a@b>\r\n"
    assert H.field("Return-Path", "<j\u00f6@b>") == "Return-Path: <j\u00f6@b>\r\n".encode()
    # an envelope address that was not UTF-8 on the wire (surrogate-escaped) keeps its bytes
    assert H.field("Return-Path", "<\udce9@b>") == b"Return-Path: <\xe9@b>\r\n"


def test_received_header() -> None:
    got = H.received_header(helo="client.example.org", client_ip="192.0.2.1", by="mx.example.test",
                            protocol="ESMTPS", queue_id="ABC123", recipient="alice@example.test",
                            tls="version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384", now=0.0)
    assert got == (b"Received: from client.example.org ([192.0.2.1])\r\n"
                   b"\tby mx.example.test (mailstack) with ESMTPS id ABC123\r\n"
                   b"\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384)\r\n"
                   b"\tfor <alice@example.test>;\r\n"
                   b"\tThu, 01 Jan 1970 00:00:00 -0000\r\n")
    fields = H.header_fields(got + b"\r\n")
    assert [f.key for f in fields] == ["received"]
    assert email.utils.parsedate_to_datetime(fields[0].value.rpartition(";")[2].strip()).timestamp() == 0


def test_received_header_without_helo_ip_or_recipient_and_hostile_helo() -> None:
    got = H.received_header(helo=None, client_ip=None, by="mx", protocol="LMTP", queue_id="Q", now=0.0)
    assert got.startswith(b"Received: from unknown (localhost)\r\n\tby mx (mailstack) with LMTP id Q;\r\n\t")
    evil = H.received_header(helo="x\r\nBcc: y", client_ip="::1", by="mx", protocol="ESMTP", queue_id="Q")
    assert [f.key for f in H.header_fields(evil + b"\r\n")] == ["received"]
