"""IMAP URLs for CATENATE (RFC 5092 §6 as RFC 4469 uses them) and putting a message
together (``imap.catenate``), without a server."""

from __future__ import annotations

import pytest

from mailstack.imap.catenate import BadUrl, MessageUrl, TooBig, badurl_code, build_message, parse_url
from mailstack.imap.message import ParsedMessage
from mailstack.imap.types import CatenatePart, Section

ME = {"user": "alice@example.test", "hostname": "mx.example.test"}


@pytest.mark.parametrize(("url", "mailbox", "validity", "uid", "section", "partial"), [
    ("/INBOX/;UID=20", "INBOX", None, 20, None, None),
    ("/inbox;uidvalidity=385759045/;uid=20", "INBOX", 385759045, 20, None, None),
    ("/Drafts/;UID=20/;section=1.MIME", "Drafts", None, 20, Section((1,), "MIME"), None),
    ("/Drafts/;UID=20/;SECTION=HEADER.FIELDS%20(Subject%20From)", "Drafts", None, 20,
     Section((), "HEADER.FIELDS", ("Subject", "From")), None),
    ("/Drafts/;UID=2/;PARTIAL=0.1024", "Drafts", None, 2, None, (0, 1024)),
    ("/Drafts/;UID=2/;section=TEXT/;partial=100000", "Drafts", None, 2, Section((), "TEXT"), (100000, None)),
    ("/Entw%C3%BCrfe/;UID=1", "Entwürfe", None, 1, None, None),          # UTF-8, %-encoded
    ("imap://mx.example.test/Sent/;UID=5", "Sent", None, 5, None, None),
    ("IMAP://alice%40example.test;AUTH=*@MX.EXAMPLE.TEST:993/Sent/;UID=5", "Sent", None, 5, None, None),
])
def test_urls_taken(url: str, mailbox: str, validity: int | None, uid: int, section: Section | None,
                    partial: tuple[int, int | None] | None) -> None:
    assert parse_url(url, **ME) == MessageUrl(url, mailbox, validity, uid, section, partial)


@pytest.mark.parametrize("url", [
    "", "/", "INBOX/;UID=1", "/INBOX", "/INBOX/;UID=0", "/INBOX/;UID=x", "/INBOX/;UID=99999999999",
    "/INBOX/;UID=1/;SECTION=1.X", "/INBOX/;UID=1/;SECTION=%FF", "/%FF/;UID=1", "/;UID=1",
    "/INBOX/;SECTION=1/;UID=1",                    # out of order
    "/INBOX/;UID=1/;UID=2", "/INBOX;FOO=1/;UID=1", "/INBOX/;UID=1/;PARTIAL=1.0",
    "/INBOX/;UID=1;URLAUTH=anonymous", "/INBOX/;UID=1/;URLAUTH=anonymous:internal:00",
    "/INBOX?SUBJECT%20x", "imap://elsewhere.example/INBOX/;UID=1", "imap://mx.example.test",
    "imap://bob@mx.example.test/INBOX/;UID=1",
])
def test_urls_refused(url: str) -> None:
    with pytest.raises(BadUrl):
        parse_url(url, **ME)


MSG = ParsedMessage(b"Subject: s\r\n\r\nbody\r\n")


def _read(u: MessageUrl) -> ParsedMessage | None:
    return MSG if u.uid == 1 else None


def test_build_message() -> None:
    parts = (CatenatePart(text=b"X: 1\r\n"), CatenatePart(url="/INBOX/;UID=1/;SECTION=HEADER"),
             CatenatePart(url="/INBOX/;UID=1/;SECTION=TEXT/;PARTIAL=1.2"))
    assert build_message(parts, _read, limit=100, **ME) == b"X: 1\r\nSubject: s\r\n\r\nod"
    with pytest.raises(BadUrl) as info:
        build_message((CatenatePart(url="/INBOX/;UID=2"),), _read, limit=100, **ME)
    assert info.value.url == "/INBOX/;UID=2"
    with pytest.raises(TooBig):  # checked part by part: the 2nd already passes the limit
        build_message((CatenatePart(url="/INBOX/;UID=1"),) * 200, _read, limit=30, **ME)


def test_badurl_code_holds_no_bracket() -> None:
    # RFC 4469 §6 url-resp-text: TEXT-CHAR except "]"; bare (erratum 4046)
    assert badurl_code("/a]b/;UID=1\r\n") == "BADURL /ab/;UID=1"
