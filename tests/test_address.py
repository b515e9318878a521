"""mailstack.mail.address: parsing, normalisation, limits, sub-addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.mail.address import (
    Address,
    AddressError,
    domain_to_unicode,
    is_dot_atom,
    normalize_domain,
    parse_address,
    split_tag,
)

# (input, local, domain): what a valid address normalises to.
VALID = [
    ("user@example.org", "user", "example.org"),
    ("User@EXAMPLE.Org", "User", "example.org"),  # local kept as given, domain lower-cased
    ("  user@example.org\r\n", "user", "example.org"),  # surrounding whitespace ignored
    ("first.last@example.org", "first.last", "example.org"),
    ("a+tag@example.org", "a+tag", "example.org"),
    ("!#$%&'*+-/=?^_`{|}~@example.org", "!#$%&'*+-/=?^_`{|}~", "example.org"),  # RFC 5322 atext
    ('"john doe"@example.org', "john doe", "example.org"),  # quoted string, unquoted in .local
    ('"a@b"@example.org', "a@b", "example.org"),
    ('"a\\"b"@example.org', 'a"b', "example.org"),  # RFC 5321 quoted-pairSMTP
    ('"a..b"@example.org', "a..b", "example.org"),
    ("user@bücher.example", "user", "xn--bcher-kva.example"),  # IDNA to the A-label
    ("user@BÜCHER.example", "user", "xn--bcher-kva.example"),
    ("user@xn--bcher-kva.example", "user", "xn--bcher-kva.example"),
    ("user@faß.de", "user", "xn--fa-hia.de"),  # IDNA 2008, not 2003's fass.de
    ("用户@例子.广告", "用户", "xn--fsqu00a.xn--4rr70v"),  # RFC 6531 UTF-8 local part
    ("Jörg@example.org", "Jörg", "example.org"),
    ("user@localhost", "user", "localhost"),
    ("user@a-b.example", "user", "a-b.example"),
]


@pytest.mark.parametrize(("text", "local", "domain"), VALID)
def test_valid(text: str, local: str, domain: str) -> None:
    addr = parse_address(text)
    assert (addr.local, addr.domain) == (local, domain)


# (input, why it is refused)
INVALID = [
    ("", "empty"),
    ("user", "no @"),
    ("user@", "no domain"),
    ("@example.org", "empty local part"),
    ("us er@example.org", "space in a dot-atom"),
    (".user@example.org", "leading dot"),
    ("user.@example.org", "trailing dot"),
    ("a..b@example.org", "double dot"),
    ("a@b@example.org", "@ outside quotes"),
    ('"unterminated@example.org', "unterminated quote"),
    ('"a"b@example.org', "text after the quoted string"),
    ('"a\x01b"@example.org', "control character in quotes"),
    ("a\x00b@example.org", "NUL"),
    ("<user@example.org>", "angle brackets are not part of an address"),
    ("user@example.org.", "trailing dot in the domain"),
    ("user@example..org", "empty label"),
    ("user@-example.org", "leading hyphen"),
    ("user@example-.org", "trailing hyphen"),
    ("user@exa_mple.org", "underscore"),
    ("user@exa mple.org", "space in the domain"),
    ("user@☃.example", "symbol not allowed by IDNA 2008"),
    ("user@xn--garbage.example", "bad A-label"),
    ("user@192.0.2.1", "bare IP address"),
    ("user@[192.0.2.1]", "address literal not allowed by default"),
    ("x" * 65 + "@example.org", "local part over 64 octets"),
    ("ü" * 33 + "@example.org", "local part over 64 octets in UTF-8"),
    ("user@" + "a" * 64 + ".org", "label over 63 octets"),
    ("user@" + ".".join(["a" * 63] * 4) + ".org", "domain over 255 octets"),
    ("x" * 64 + "@" + ".".join(["a" * 60] * 3) + ".example", "address over 254 octets"),
]


@pytest.mark.parametrize(("text", "why"), INVALID)
def test_invalid(text: str, why: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert "\n" not in str(info.value)


def test_limits_are_exactly_at_the_edge() -> None:
    assert parse_address("x" * 64 + "@example.org").local == "x" * 64
    assert parse_address("ü" * 32 + "@example.org").local == "ü" * 32
    assert normalize_domain("a" * 63 + ".org") == "a" * 63 + ".org"


def test_address_literals_when_allowed() -> None:
    assert parse_address("u@[192.0.2.1]", allow_literal=True).domain == "[192.0.2.1]"
    assert parse_address("u@[IPv6:2001:DB8:0::1]", allow_literal=True).domain == "[IPv6:2001:db8::1]"
    with pytest.raises(AddressError):
        parse_address("u@[300.1.1.1]", allow_literal=True)


def test_key_is_case_insensitive_in_the_local_part() -> None:
    assert parse_address("Bob@Example.org").key == parse_address("bOB@example.ORG").key == "bob@example.org"
    assert parse_address("Jörg@example.org").key == "jörg@example.org"
    assert parse_address("Straße@example.org").key == parse_address("STRASSE@example.org").key


def test_str_quotes_when_needed_and_round_trips() -> None:
    assert str(parse_address("User@Bücher.example")) == "User@xn--bcher-kva.example"
    assert str(parse_address('"john doe"@example.org')) == '"john doe"@example.org'
    assert str(parse_address('"a\\"b"@x.org')) == '"a\\"b"@x.org'
    assert str(parse_address('"plain"@x.org')) == "plain@x.org"  # same mailbox, canonical form
    assert str(Address("a", "b.org")) == "a@b.org"


def test_is_dot_atom_and_ascii() -> None:
    assert is_dot_atom("a.b+c")
    assert not is_dot_atom("a b") and not is_dot_atom("") and not is_dot_atom("a.")
    assert parse_address("a@b.org").is_ascii
    assert not parse_address("ü@b.org").is_ascii


def test_normalize_domain() -> None:
    assert normalize_domain("Bücher.Example") == "xn--bcher-kva.example"
    assert normalize_domain("ＥＸＡＭＰＬＥ．ｃｏｍ") == "example.com"  # UTS 46 mapping of full-width forms
    assert domain_to_unicode("xn--bcher-kva.example") == "bücher.example"
    assert domain_to_unicode("example.org") == "example.org"
    for bad in ("", "a..b", "exa mple.org", "[1.2.3.4]"):
        with pytest.raises(AddressError):
            normalize_domain(bad)


@pytest.mark.parametrize(
    ("local", "sep", "expected"),
    [
        ("user+tag", "+", ("user", "tag")),
        ("user+tag+more", "+", ("user", "tag+more")),  # the first delimiter splits
        ("user", "+", ("user", None)),
        ("user+", "+", ("user", "")),
        ("+tag", "+", ("+tag", None)),  # a leading delimiter does not split (Postfix)
        ("user-tag", "+-", ("user", "tag")),  # several delimiter characters
        ("user+tag", "", ("user+tag", None)),
    ],
)
def test_split_tag(local: str, sep: str, expected: tuple[str, str | None]) -> None:
    assert split_tag(local, sep) == expected


_ATEXT = st.sampled_from("abcXYZ019!#$%&'*+-/=?^_`{|}~üé中")


@given(st.lists(st.text(_ATEXT, min_size=1, max_size=8), min_size=1, max_size=4))
def test_property_dot_atoms_round_trip(atoms: list[str]) -> None:
    local = ".".join(atoms)
    if len(local.encode()) > 64:  # RFC 5321 §4.5.3.1.1: refused, not silently passed over
        with pytest.raises(AddressError):
            parse_address(f"{local}@Example.ORG")
        return
    addr = parse_address(f"{local}@Example.ORG")
    assert addr.local == local and addr.domain == "example.org"
    assert parse_address(str(addr)) == addr


@given(
    st.text(
        st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_categories=("Cc", "Cs", "Cn")),
        min_size=1,
        max_size=20,
    )
)
def test_property_quoted_local_parts_round_trip(local: str) -> None:
    addr = parse_address(f'{Address(local, "x.org")}')
    assert addr.local == local


@given(st.text(max_size=40))
def test_property_parse_never_raises_anything_else(text: str) -> None:
    try:
        addr = parse_address(text)
    except AddressError:
        return
    assert addr.domain == addr.domain.lower() and addr.domain.isascii()
    assert 0 < len(addr.local.encode()) <= 64
