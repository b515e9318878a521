"""Header sections from strangers: mail.headers, the one reader of header fields.

Every helper ends, is linear and never raises on arbitrary bytes (only the strict
reading's ``HeaderError``); the raw fields rebuild the header section byte for byte, and
the edits change nothing but what they add or remove.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.mail import headers as H
from tests.hostile.bounds import SETTINGS, assert_size, bounded


def _all(message: bytes) -> None:
    """Every helper on ``message``, with the invariants that hold for any input."""
    end, body = bounded(H.header_end, message)
    assert 0 <= end <= body <= len(message)
    assert body - end <= 2 and message[end:body] in (b"", b"\n", b"\r\n")
    head, rest = bounded(H.split_message, message)
    assert head == message[:end] and rest == message[body:]
    block = bounded(H.header_block, message, 1000)
    assert len(block) <= 1000 and message.startswith(block)
    raws = bounded(lambda m: list(H.raw_fields(m)), message)
    assert b"".join(r.raw for r in raws) == head  # every byte in exactly one field
    lenient = bounded(lambda m: H.header_fields(m, strict=False), message)
    assert_size(sum(len(f.name) + len(f.value.encode("utf-8", "surrogatepass")) for f in lenient), len(head), 3)
    assert len(lenient) <= len(raws)
    try:
        strict = bounded(H.header_fields, message)
    except H.HeaderError as e:
        assert "\n" not in str(e) and len(str(e)) < 200
    else:
        assert strict == lenient
    bounded(H.has_field, message, "From")
    assert bounded(H.remove_fields, message, lambda f: False) == (message, 0)
    out, n = bounded(H.remove_fields, message, lambda f: True)
    assert n == len(lenient) and out.endswith(message[end:])
    assert H.header_fields(out, strict=False) == [] or end == 0
    added = bounded(H.insert_fields, message, b"X-Added: 1\r\n")
    assert len(added) <= len(message) + 14 and added.endswith(b"X-Added: 1\r\n" + message[end:])


@SETTINGS
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(message: bytes) -> None:
    _all(message)


# near-valid header sections: real field syntax with specials, folding, both line ends
PIECES = [b"From", b"Received", b"DKIM-Signature", b"Subject", b"X-A", b":", b" :", b"\t:", b" ", b"\t",
          b"\r\n", b"\n", b"\r", b"\r\n ", b"\n\t", b"\x00", b"\xff", b"\xc3\xa9", b"a@b", b"<", b">", b"(", b")",
          b'"', b"=?utf-8?q?x?=", b";", b",", b"\r\n\r\n", b"\n\n"]
sections = st.lists(st.sampled_from(PIECES), max_size=80).map(b"".join)


@SETTINGS
@given(sections, st.binary(max_size=200))
def test_grammar_shaped(section: bytes, body: bytes) -> None:
    _all(section)
    _all(section + b"\r\n\r\n" + body)


def test_amplified() -> None:
    """Tens of KB of one hostile shape: every helper stays linear (a quadratic join or
    rescan per line shows up as a hang here)."""
    for message in (
        b"Subject: x\r\n" + b" folded\r\n" * 50_000 + b"\r\nbody",  # one field of 50,000 lines
        b"A: b\r\n" * 50_000 + b"\r\n",  # 50,000 fields
        b"\r" * 200_000,  # no line end at all
        b"Bogus line\r\n" * 50_000,  # malformed, no empty line
        b" continues nothing\r\n" * 50_000,
        b"X" * 200_000 + b":",  # one endless name
        b"\n" * 200_000,  # all empty lines
        b"A: b\r\r\r\n" * 30_000,
        b"From" + b" " * 200_000 + b":",  # obs white space before the colon, endless
    ):
        _all(message)
