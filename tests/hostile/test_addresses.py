"""Address lists (mail/addrlist, IMAP ENVELOPE; DKIM/DMARC From: domains) against any header."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.message import Envelope
from mailstack.imap.responses import render_envelope
from mailstack.mail import author as author_mod
from mailstack.mail.addrlist import MAX_ADDRESSES, parse_address_list
from mailstack.mail.dkim import from_addresses, from_domain
from tests.hostile.bounds import SETTINGS, assert_size, bounded

SPECIALS = '()<>@,;:\\".[] \t\r\n'
atoms = st.text("abcxyz019-_+=?", min_size=1, max_size=8)
pieces = st.one_of(atoms, st.sampled_from(list(SPECIALS)), st.just("=?utf-8?q?a?="), st.just("example.test"))
# near-valid: address-list syntax with specials thrown in anywhere
address_lists = st.lists(pieces, max_size=60).map("".join)


def _check(value: str) -> None:
    addrs = bounded(parse_address_list, value)
    assert len(addrs) <= MAX_ADDRESSES + 1  # + the closing group marker
    rendered = render_envelope(Envelope(to=tuple(addrs)))
    assert_size(len(rendered), len(value.encode("utf-8", "surrogatepass")), 32)


@SETTINGS
@given(st.text())
def test_any_text(value: str) -> None:
    _check(value)


@SETTINGS
@given(address_lists)
def test_near_valid_lists(value: str) -> None:
    _check(value)


@SETTINGS
@given(address_lists, st.integers(1, 2000))
def test_amplified(pattern: str, times: int) -> None:
    """A pattern repeated to tens of KB still parses in well under the deadline."""
    _check((pattern or ")") * times)


@SETTINGS
@given(st.binary(max_size=2000))
def test_from_header_any_bytes(raw: bytes) -> None:
    message = b"From: " + raw + b"\r\nSubject: x\r\n\r\nbody\r\n"
    addrs = bounded(from_addresses, message)
    assert sum(len(a) for a in addrs) <= 2 * len(raw) + 64
    bounded(from_domain, message)


def test_stray_close_paren_issue_10() -> None:
    """The issue's reproduction, and other members of its class: a ")" that opens nothing."""
    assert [(a.mailbox, a.host) for a in bounded(parse_address_list, "bob@example.test)")] == [
        ("bob", "example.test")]
    for value in (")", "))))", "a)b", "<bob@example.test>)", '"Bob")<b@x>', "g:)a@b;", "(c))a@b",
                  "a@b,)", ")" * 100_000):
        _check(value)


def test_deep_comments_and_groups_do_not_recurse() -> None:
    """email.utils.getaddresses raised RecursionError on these; From: domains must not."""
    for head in (b"(" * 5000 + b"a@b.example", b"a:" * 5000 + b"a@b.example", b"<" * 5000):
        bounded(from_domain, b"From: " + head + b"\r\n\r\n")
    assert from_domain(b"From: Carol (c(o(m)m)ent) <carol@Example.ORG>\r\n\r\n") == "example.org"


def test_address_count_is_capped() -> None:
    addrs = bounded(parse_address_list, "a@b," * (MAX_ADDRESSES + 5000))
    assert len(addrs) == MAX_ADDRESSES
    grouped = bounded(parse_address_list, "g: " + "a@b," * (MAX_ADDRESSES + 10))
    assert grouped[-1].mailbox is None and grouped[-1].host is None  # the group is still closed


# mail.author reads From: for submission's ownership check, DMARC and DKIM signing. Python's
# RFC 5322 parser behind it is quadratic or recursive on these shapes (12 s for the 50 KB
# dotted one, RecursionError for the parentheses): each must be answered within the bound.
AUTHOR_SHAPES = {
    "parentheses": "(" * 5000 + "a@b.test",
    "groups": "a:" * 5000 + "a@b.test",
    "many addresses": "a@b.test," * 20000,
    "dots": "a" + "." * 50000 + "@b.test",
    "long phrase": "x " * 50000 + "<a@b.test>",
    "nested comments": "(" * 900 + ")" * 900 + " a@b.test",
    "quoted pairs": '"' + '\\"' * 50000 + '" <a@b.test>',
}


@pytest.mark.parametrize("value", list(AUTHOR_SHAPES.values()), ids=list(AUTHOR_SHAPES))
def test_author_readings_are_bounded(value: str) -> None:
    message = b"From: " + value.encode() + b"\r\nSubject: x\r\n\r\nbody\r\n"
    bounded(author_mod.from_domains, message, seconds=1.0)
    bounded(author_mod.signing_domain, message, seconds=1.0)
    with contextlib.suppress(author_mod.AuthorError):
        bounded(author_mod.author, message, seconds=1.0)


@SETTINGS
@given(address_lists, st.integers(1, 3000))
def test_author_amplified(pattern: str, times: int) -> None:
    message = b"From: " + ((pattern or ")") * times).encode("utf-8", "surrogatepass") + b"\r\n\r\nx\r\n"
    domains = bounded(author_mod.from_domains, message, seconds=1.0)
    assert sum(len(d) for d in domains) <= 2 * len(message)
    with contextlib.suppress(author_mod.AuthorError):
        bounded(author_mod.author, message, seconds=1.0)
