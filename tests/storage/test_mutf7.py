"""Modified UTF-7 (RFC 3501 §5.1.3) for folder names on disk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.storage import mutf7

# (Unicode name, modified UTF-7) — RFC 3501 §5.1.3 example and Dovecot-created names.
KNOWN = [
    ("INBOX", "INBOX"),
    ("&", "&-"),
    ("Tom & Jerry", "Tom &- Jerry"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
    ("😀", "&2D3eAA-"),
    ("a\u00e9b\u00e9", "a&AOk-b&AOk-"),
]


@pytest.mark.parametrize(("text", "encoded"), KNOWN)
def test_known_values(text: str, encoded: str) -> None:
    assert mutf7.encode(text) == encoded
    assert mutf7.decode(encoded) == text


# Inputs no encoder could have produced: refused.
BAD = [
    "&",  # unterminated shift
    "&AOk",  # unterminated shift
    "&A-",  # truncated base64
    "&AOl-",  # non-zero padding bits
    "&AGE-",  # base64 of printable ASCII 'a'
    "&AO/-",  # '/' instead of ','
    "&AOk=-",  # padding
    "caf\u00e9",  # raw non-ASCII
    "a\tb",  # control character
    "&2D0-",  # lone high surrogate
]


@pytest.mark.parametrize("encoded", BAD)
def test_invalid_refused(encoded: str) -> None:
    with pytest.raises(ValueError):
        mutf7.decode(encoded)


names = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(names)
def test_round_trip(text: str) -> None:
    encoded = mutf7.encode(text)
    assert encoded.isascii()
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert mutf7.decode(encoded) == text


@given(names)
def test_encoding_is_canonical(text: str) -> None:
    encoded = mutf7.encode(text)
    assert mutf7.encode(mutf7.decode(encoded)) == encoded
