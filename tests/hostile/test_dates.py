"""Dates: IMAP date / date-time (imap/dates) and the Date: header SEARCH SENT* reads."""

from __future__ import annotations

from datetime import date, datetime

from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.dates import DateError, parse_date, parse_datetime
from mailstack.imap.search import MessageView, SearchContext, matches
from mailstack.imap.types import SearchKey
from tests.hostile.bounds import SETTINGS, bounded

dates = st.lists(st.sampled_from(["1", "31", " 7", "-", "Feb", "fEB", "1994", "99999", " ", ":", "+0000",
                                  "-2359", "12:00:00", "\x00", "\u0661"]), max_size=12).map("".join)


def _parse(text: str) -> None:
    for fn in (parse_date, parse_datetime):
        try:
            bounded(fn, text)
        except DateError:
            pass


@SETTINGS
@given(st.one_of(st.text(), dates))
def test_imap_dates(text: str) -> None:
    _parse(text)


def _sent_on(value: bytes) -> bool:
    view = MessageView(1, 1, frozenset(), datetime(2020, 1, 1), 10, lambda: b"Date: " + value + b"\r\n\r\nx")
    return matches(SearchKey("SENTON", date(1994, 2, 7)), view, SearchContext(1, 1))


@SETTINGS
@given(st.one_of(st.binary(max_size=500), dates.map(str.encode)))
def test_date_header(value: bytes) -> None:
    bounded(_sent_on, value)


def test_long_dates() -> None:
    _parse("1" * 100_000)
    bounded(_sent_on, b"Mon, " + b"9" * 100_000 + b" Feb 1994 21:52:25 -0800")
