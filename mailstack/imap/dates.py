"""IMAP date and date-time values (RFC 3501 §9 ``date`` and ``date-time``).

Invariants: parsing is strict about month names and field widths the grammar fixes, and
lenient only where the grammar is (a space-padded day); every ``datetime`` produced is
timezone-aware; formatting always gives the 26-character fixed form.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_INDEX = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}

# RFC 3501 §9: date-day-fixed = (SP DIGIT) / 2DIGIT; date-month; date-year = 4DIGIT;
# time = 2DIGIT ":" 2DIGIT ":" 2DIGIT; zone = ("+" / "-") 4DIGIT
_DATE_TIME = re.compile(
    r"^( \d|\d\d|\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$"
)
# RFC 3501 §9: date-text = date-day "-" date-month "-" date-year; date-day = 1*2DIGIT
_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


class DateError(ValueError):
    """A date or date-time that the RFC 3501 grammar does not allow."""


def parse_date(text: str) -> date:
    """Parse ``d-Mon-yyyy`` (search keys BEFORE/ON/SINCE/SENT*)."""
    m = _DATE.match(text)
    if not m:
        raise DateError(f"bad date: {text!r}")
    month = _MONTH_INDEX.get(m.group(2).lower())
    if month is None:
        raise DateError(f"bad month: {text!r}")
    try:
        return date(int(m.group(3)), month, int(m.group(1)))
    except ValueError as exc:
        raise DateError(f"bad date: {text!r}") from exc


def parse_datetime(text: str) -> datetime:
    """Parse ``dd-Mon-yyyy hh:mm:ss +zzzz`` (APPEND's internal date) into an aware datetime."""
    m = _DATE_TIME.match(text)
    if not m:
        raise DateError(f"bad date-time: {text!r}")
    month = _MONTH_INDEX.get(m.group(2).lower())
    if month is None:
        raise DateError(f"bad month: {text!r}")
    hours, minutes = int(m.group(8)), int(m.group(9))
    if minutes > 59:
        raise DateError(f"bad zone: {text!r}")
    offset = timedelta(hours=hours, minutes=minutes)
    if m.group(7) == "-":
        offset = -offset
    try:
        return datetime(
            int(m.group(3)), month, int(m.group(1).strip()),
            int(m.group(4)), int(m.group(5)), int(m.group(6)),
            tzinfo=timezone(offset),
        )
    except ValueError as exc:
        raise DateError(f"bad date-time: {text!r}") from exc


def format_datetime(value: datetime) -> str:
    """Render ``value`` as an RFC 3501 date-time (without the surrounding quotes).

    A naive datetime is taken as UTC.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    offset = value.utcoffset() or timedelta(0)
    total = int(offset.total_seconds()) // 60
    sign = "-" if total < 0 else "+"
    total = abs(total)
    return (
        f"{value.day:2d}-{MONTHS[value.month - 1]}-{value.year:04d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} {sign}{total // 60:02d}{total % 60:02d}"
    )


def format_date(value: date) -> str:
    """Render a search ``date`` (``1-Feb-1994``)."""
    return f"{value.day}-{MONTHS[value.month - 1]}-{value.year:04d}"
