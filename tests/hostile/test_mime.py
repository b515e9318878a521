"""MIME (imap/message: ENVELOPE, BODYSTRUCTURE, BODY[section]<partial>, SEARCH text) on any message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.index import entry_from_message
from mailstack.imap.message import MAX_DEPTH, MAX_PARTS, ParsedMessage
from mailstack.imap.search import body_text_of
from mailstack.imap.types import FetchAttribute, Section
from tests.hostile.bounds import SETTINGS, assert_size, bounded

HEADERS = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: multipart/digest; boundary=\"b\"\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: text/plain; charset=utf-8\r\n",
    b"Content-Type: text/plain; charset=punycode\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"MIME-Version: 1.0\r\n",
    b"Content-Disposition: attachment; filename*0=a; filename*1*=b\r\n", b"Subject: =?utf-8?q?x?=\r\n",
    b"To: a@b, (c) <d@e>\r\n", b" folded\r\n", b"X: y\r\n",
])
LINES = st.sampled_from([b"--b\r\n", b"--b--\r\n", b"--\r\n", b"\r\n", b"body\r\n", b"=C3=A9\r\n", b"YWJj\r\n"])


@st.composite
def near_mime(draw: st.DrawFn) -> bytes:
    """Multipart-ish messages: headers and boundary lines in random order and repetition."""
    head = b"".join(draw(st.lists(HEADERS, max_size=6)))
    body = b"".join(draw(st.lists(st.one_of(HEADERS, LINES), max_size=40)))
    return b"MIME-Version: 1.0\r\n" + head + b"\r\n" + body


SECTIONS = [Section(), Section((1,)), Section((1, 1)), Section((2,), "MIME"), Section((1,), "HEADER"),
            Section(text="TEXT"), Section(text="HEADER.FIELDS", fields=("To", "Subject")),
            Section(text="HEADER.FIELDS.NOT", fields=("To",)), Section((1, 2, 1), "TEXT")]


def _everything(raw: bytes) -> int:
    """All that FETCH and SEARCH take from a message; returns the bytes produced."""
    parsed = ParsedMessage(raw)
    entry = entry_from_message(parsed)
    out = len(entry.envelope) + len(entry.body) + len(entry.bodystructure)
    for section in SECTIONS:
        for partial in (None, (0, 10), (3, 2**32 - 1), (2**32 - 1, 1)):
            data = parsed.fetch_section(FetchAttribute("BODY", section, partial))
            assert data is None or len(data) <= len(parsed.data) + 2
    out += len(body_text_of(parsed).encode("utf-8", "surrogatepass")) // 4
    return out


def _check(raw: bytes) -> None:
    produced = bounded(_everything, raw)
    assert_size(produced, len(raw), 64, 1024)


@SETTINGS
@given(st.binary(max_size=3000))
def test_any_bytes(raw: bytes) -> None:
    _check(raw)


@SETTINGS
@given(near_mime())
def test_near_valid_mime(raw: bytes) -> None:
    _check(raw)


@SETTINGS
@given(near_mime(), st.integers(1, 400))
def test_amplified(raw: bytes, times: int) -> None:
    _check(raw * times)


def nested(levels: int, kind: bytes = b"multipart/mixed") -> bytes:
    out = [b"MIME-Version: 1.0\r\n"]
    for i in range(levels):
        if kind == b"message/rfc822":
            out.append(b"Content-Type: message/rfc822\r\n\r\n")
        else:
            out.append(b"Content-Type: %s; boundary=b%d\r\n\r\n--b%d\r\n" % (kind, i, i))
    out.append(b"\r\ntext\r\n")
    return b"".join(out)


def _depth(bodystructure: bytes) -> int:
    depth = deepest = 0
    for c in bodystructure:
        depth += (c == 0x28) - (c == 0x29)
        deepest = max(deepest, depth)
    return deepest


def test_nesting_is_bounded_like_dovecot() -> None:
    for kind in (b"multipart/mixed", b"message/rfc822"):
        for levels in (MAX_DEPTH - 1, MAX_DEPTH + 1, 20_000):
            raw = nested(levels, kind)
            entry = bounded(lambda r=raw: entry_from_message(ParsedMessage(r)))
            # a multipart level is one "(", a message/rfc822 level a few: bounded either way
            assert _depth(entry.bodystructure) <= 4 * MAX_DEPTH + 10


def test_part_count_is_bounded_like_dovecot() -> None:
    raw = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
           + b"--x\r\n\r\npart\r\n" * (3 * MAX_PARTS) + b"--x--\r\n")
    parsed = bounded(ParsedMessage, raw)
    assert len(parsed.root.children) < MAX_PARTS
    last = parsed.root.children[-1]
    assert parsed.data[last.body_start:last.body_end].count(b"part") > MAX_PARTS  # the rest is kept, not lost
    _check(raw)


def test_long_folded_header_is_linear() -> None:
    """Each continuation line re-copied the whole value: quadratic in the header."""
    raw = b"Subject: a\r\n" + b" b\r\n" * 400_000 + b"\r\nbody\r\n"
    parsed = bounded(ParsedMessage, raw)
    assert len(parsed.root.get("subject") or "") == 1 + 2 * 400_000


def test_many_boundary_like_lines_and_long_boundaries() -> None:
    dashes = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--\r\n--x-\r\n" * 300_000
    _check(dashes)
    long_boundary = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=" + b"b" * 5000 + b"\r\n\r\n--" \
        + b"b" * 5000 + b"\r\n\r\nx\r\n"
    parsed = bounded(ParsedMessage, long_boundary)
    assert not parsed.root.children  # over 80 characters: no boundary, text/plain (RFC 2045 §5.2)


def test_rfc2231_section_number_of_5000_digits() -> None:
    """int() of it raised ValueError: every FETCH of the message answered NO [SERVERBUG]."""
    raw = b"MIME-Version: 1.0\r\nContent-Type: text/plain; name*" + b"9" * 5000 + b"=x\r\n\r\nbody\r\n"
    _check(raw)
