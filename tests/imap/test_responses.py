"""Rendering of responses: quoting vs literals, NIL, lists, status responses, FETCH items."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailstack.imap.responses import (
    Atom, ContinuationRequest, DataResponse, ImapError, Literal, Raw, StatusResponse, bad, bye,
    fetch_response, no, ok, render, render_astring, render_flags, render_mailbox, render_string,
)

STRINGS = [
    ("", b'""'),
    ("plain", b'"plain"'),
    ('say "hi"', b'"say \\"hi\\""'),
    ("back\\slash", b'"back\\\\slash"'),
    ("two\r\nlines", b"{10}\r\ntwo\r\nlines"),
    ("bare\nlf", b"{7}\r\nbare\nlf"),
    ("café", b"{5}\r\ncaf\xc3\xa9"),
    (b"\x80raw", b"{4}\r\n\x80raw"),
    ("x" * 2000, b"{2000}\r\n" + b"x" * 2000),
]


@pytest.mark.parametrize(("value", "expected"), STRINGS)
def test_string_quoting_or_literal(value: str | bytes, expected: bytes) -> None:
    assert render_string(value) == expected


def test_astring() -> None:
    assert render_astring("INBOX") == b"INBOX"
    assert render_astring("a]b") == b"a]b"
    assert render_astring("NIL") == b'"NIL"'  # would read back as NIL
    assert render_astring("two words") == b'"two words"'
    assert render_astring("") == b'""'
    assert render_astring("a*") == b'"a*"'


def test_mailbox_names_are_modified_utf7() -> None:
    assert render_mailbox("Entwürfe") == b"Entw&APw-rfe"
    assert render_mailbox("A & B") == b'"A &- B"'


def test_values() -> None:
    assert render(None) == b"NIL"
    assert render(42) == b"42"
    assert render(Atom("\\Seen")) == b"\\Seen"
    assert render(Literal(b"abc")) == b"{3}\r\nabc"
    assert render(Raw(b"(x)")) == b"(x)"
    assert render([1, None, "a", [Atom("X"), []]]) == b'(1 NIL "a" (X ()))'
    when = datetime(2024, 3, 5, 9, 8, 7, tzinfo=timezone(timedelta(hours=-1, minutes=-30)))
    assert render(when) == b'" 5-Mar-2024 09:08:07 -0130"'
    with pytest.raises(TypeError):
        render(True)


def test_flags_order() -> None:
    assert render_flags(frozenset({"$Junk", "\\Seen", "\\Answered", "Work"})) == b"(\\Answered \\Seen $Junk Work)"
    assert render_flags(()) == b"()"


def test_status_responses() -> None:
    assert ok("a1").to_bytes() == b"a1 OK Completed\r\n"
    assert ok("a1", "SELECT completed", "READ-WRITE").to_bytes() == b"a1 OK [READ-WRITE] SELECT completed\r\n"
    assert no("a2", "No such mailbox", "TRYCREATE").to_bytes() == b"a2 NO [TRYCREATE] No such mailbox\r\n"
    assert bad(None, "Empty command line").to_bytes() == b"* BAD Empty command line\r\n"
    assert bye("Server shutting down").to_bytes() == b"* BYE Server shutting down\r\n"
    assert ok(None, "x", "PERMANENTFLAGS (\\Seen \\*)").to_bytes() == b"* OK [PERMANENTFLAGS (\\Seen \\*)] x\r\n"
    # text never smuggles a line end or 8-bit into the response
    assert no("t", "bad\r\n* OK fake ü").to_bytes() == b"t NO bad  * OK fake ?\r\n"
    with pytest.raises(ValueError):
        StatusResponse("t", "MAYBE", "x")


def test_error_carries_its_response() -> None:
    err = ImapError("NO", "Mailbox does not exist", "NONEXISTENT")
    assert err.response("a").to_bytes() == b"a NO [NONEXISTENT] Mailbox does not exist\r\n"


def test_data_and_continuation() -> None:
    assert DataResponse((3, Atom("EXISTS"))).to_bytes() == b"* 3 EXISTS\r\n"
    assert DataResponse((Atom("LIST"), [Atom("\\HasNoChildren")], ".", "INBOX")).to_bytes() == (
        b'* LIST (\\HasNoChildren) "." "INBOX"\r\n'
    )
    assert ContinuationRequest().to_bytes() == b"+ Ready\r\n"
    assert ContinuationRequest("").to_bytes() == b"+ \r\n"


def test_fetch_response() -> None:
    got = fetch_response(12, [
        ("UID", 4827313), ("FLAGS", Raw(render_flags({"\\Seen"}))), ("RFC822.SIZE", 44827),
        ("BODY[HEADER.FIELDS (SUBJECT)]<0>", Literal(b"Subject: x\r\n\r\n")),
        ("BODY[3]", None),
    ])
    assert got == (
        b"* 12 FETCH (UID 4827313 FLAGS (\\Seen) RFC822.SIZE 44827 "
        b"BODY[HEADER.FIELDS (SUBJECT)]<0> {14}\r\nSubject: x\r\n\r\n BODY[3] NIL)\r\n"
    )
