"""IMAP URLs of APPEND CATENATE (``imap.catenate.parse_url``) over strangers' text: only
``BadUrl`` ever escapes, quickly, whatever the %-escapes, numbers and sections."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.catenate import BadUrl, badurl_code, parse_url
from tests.hostile.bounds import SETTINGS, assert_size, bounded

_pieces = st.sampled_from(["/", ";UID=", ";uidvalidity=", ";SECTION=", ";PARTIAL=", "INBOX", "1", "0", ".", "%",
                           "%2", "%FF", "%20", "HEADER.FIELDS", "(", ")", "MIME", "imap://", "@", ":", "?",
                           "mx.example.test", "9" * 30, "[", "]", "\r\n", "\x00"])
urls = st.lists(_pieces, max_size=20).map("".join)


def _parse(url: str) -> None:
    try:
        parse_url(url, user="alice@example.test", hostname="mx.example.test")
    except BadUrl:
        pass


@SETTINGS
@given(st.one_of(st.text(), urls))
def test_any_url(url: str) -> None:
    bounded(_parse, url)
    assert_size(len(badurl_code(url)), len(url), 1, slack=8)


def test_long_urls() -> None:
    bounded(_parse, "/" + "%41" * 100_000 + "/;UID=1")
    bounded(_parse, "/INBOX/;UID=1/;SECTION=" + "1." * 50_000 + "1")
    bounded(_parse, "/INBOX" + "/;UID=1" * 50_000)
    bounded(_parse, "/INBOX/;UID=1/;SECTION=HEADER.FIELDS%20(" + "a%20" * 30_000 + ")")
