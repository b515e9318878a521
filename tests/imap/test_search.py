"""SEARCH evaluation against message models (RFC 3501 §6.4.4)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mailstack.imap.grammar import parse_command
from mailstack.imap.search import MessageView, SearchContext, decode_header_value, matches, search
from mailstack.imap.types import SearchArgs, SearchKey

MSG1 = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.test>\n"
    b"To: Alice <alice@example.test>\n"
    b"Cc: carol@example.test\n"
    b"Subject: Quarterly REPORT\n"
    b"Date: Tue, 05 Mar 2024 23:30:00 -0500\n"
    b"X-Spam: no\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: multipart/alternative; boundary=b\n"
    b"\n"
    b"--b\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: quoted-printable\n"
    b"\n"
    b"Gr=C3=BC=C3=9Fe, the numbers are in.\n"
    b"--b\n"
    b"Content-Type: text/html; charset=utf-8\n"
    b"Content-Transfer-Encoding: base64\n"
    b"\n"
    b"PGI+c2VjcmV0IHNhdWNlPC9iPg==\n"
    b"--b--\n"
)
MSG2 = b"From: bob@example.test\nSubject: lunch?\n\nsee you at noon\n"

LOADS = 0


def view(seq: int, uid: int, raw: bytes, flags: set[str], day: int, size: int, modseq: int = 1) -> MessageView:
    def load() -> bytes:
        global LOADS
        LOADS += 1
        return raw

    when = datetime(2024, 3, day, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    return MessageView(seq, uid, frozenset(flags), when, size, load, modseq)


def messages() -> list[MessageView]:
    return [
        view(1, 10, MSG1, {"\\Seen", "\\Answered", "$Work"}, 5, 900, modseq=7),
        view(2, 20, MSG2, {"\\Recent", "\\Flagged"}, 6, 120, modseq=3),
        view(3, 35, MSG2, {"\\Recent", "\\Seen", "\\Deleted", "\\Draft"}, 7, 5000, modseq=9),
    ]


CTX = SearchContext(max_seq=3, max_uid=35)


def run(program: bytes) -> list[int]:
    args = parse_command(b"s SEARCH " + program + b"\r\n").args
    assert isinstance(args, SearchArgs)
    return [m.seq for m in search(args.key, messages(), CTX)]


CASES = [
    (b"ALL", [1, 2, 3]),
    (b"SEEN", [1, 3]),
    (b"UNSEEN", [2]),
    (b"ANSWERED", [1]),
    (b"UNANSWERED", [2, 3]),
    (b"FLAGGED", [2]),
    (b"DELETED", [3]),
    (b"UNDELETED", [1, 2]),
    (b"DRAFT", [3]),
    (b"UNDRAFT", [1, 2]),
    (b"RECENT", [2, 3]),
    (b"NEW", [2]),
    (b"OLD", [1]),
    (b"KEYWORD $work", [1]),
    (b"UNKEYWORD $Work", [2, 3]),
    (b"1", [1]),
    (b"2:*", [2, 3]),
    (b"*", [3]),
    (b"UID 20:*", [2, 3]),
    (b"UID *", [3]),
    (b"UID 11:19", []),
    (b"LARGER 900", [3]),
    (b"SMALLER 900", [2]),
    (b"MODSEQ 7", [1, 3]),
    (b"BEFORE 6-Mar-2024", [1]),
    (b"ON 6-Mar-2024", [2]),
    (b"SINCE 6-Mar-2024", [2, 3]),
    (b"SENTON 5-Mar-2024", [1]),  # the Date: header's own day, not UTC's
    (b"SENTBEFORE 5-Mar-2024", []),
    (b"SENTSINCE 1-Jan-2000", [1]),  # MSG2 has no Date:
    (b"FROM joerg", [1]),
    (b"CHARSET UTF-8 FROM {5+}\r\nJ\xc3\xb6rg", [1]),  # encoded word decoded for matching
    (b"FROM BOB@", [2, 3]),
    (b"TO alice", [1]),
    (b"CC carol", [1]),
    (b"BCC x", []),
    (b"SUBJECT report", [1]),
    (b"SUBJECT {8+}\r\nQUARTERL", [1]),
    (b"HEADER X-Spam no", [1]),
    (b'HEADER X-Spam ""', [1]),  # an empty string: the field exists
    (b'HEADER X-Missing ""', []),
    (b"BODY numbers", [1]),
    (b"BODY {7+}\r\nGR\xc3\x9c\xc3\x9fE", [1]),  # quoted-printable and UTF-8 decoded, caseless
    (b"BODY secret", [1]),  # base64 decoded
    (b"BODY quarterly", []),  # BODY is not the header
    (b"TEXT quarterly", [1]),
    (b"TEXT noon", [2, 3]),
    (b"NOT SEEN", [2]),
    (b"OR FLAGGED DELETED", [2, 3]),
    (b"SEEN NOT DELETED", [1]),
    (b"(OR 1 3) (NOT (UID 35))", [1]),
    (b"OR (SEEN LARGER 1000) (FLAGGED SMALLER 200)", [2, 3]),
    (b"NOT OR RECENT ANSWERED", []),
]


@pytest.mark.parametrize(("program", "expected"), CASES, ids=[c[0].decode("latin-1") for c in CASES])
def test_search(program: bytes, expected: list[int]) -> None:
    assert run(program) == expected


def test_flag_searches_never_load_the_message() -> None:
    before = LOADS
    assert run(b"OR SEEN (UID 1:* LARGER 10 NOT KEYWORD x SINCE 1-Jan-2024)") == [1, 2, 3]
    assert LOADS == before


def test_saved_result() -> None:
    key = SearchKey("UID", parse_command(b"c COPY $ x\r\n").args.sequence_set)  # type: ignore[union-attr]
    ctx = SearchContext(3, 35, saved_uids=frozenset({20}))
    assert [m.seq for m in search(key, messages(), ctx)] == [2]


def test_decode_header_value_never_raises() -> None:
    assert decode_header_value("=?utf-8?q?caf=C3=A9?=") == "café"
    assert decode_header_value("=?bogus-charset?q?x?=") == "=?bogus-charset?q?x?="
    assert decode_header_value("=?utf-8?b?!!!?=") in ("=?utf-8?b?!!!?=", "")
    assert decode_header_value("raw \udcc3\udca9") == "raw é"


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ValueError):
        matches(SearchKey("FROB"), messages()[0], CTX)


def test_sentdate_parsing_failure_is_no_match() -> None:
    m = view(1, 1, b"Date: not a date\n\nx\n", set(), 1, 10)
    assert not matches(SearchKey("SENTSINCE", date(1970, 1, 1)), m, CTX)
