"""LIST/LSUB pattern matching (imap/listmatch): RFC 3501 §6.3.8 wildcards, without regexes."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.imap.listmatch import compile_pattern

# (reference, pattern, name, matches?)  -- RFC 3501 §6.3.8 and the INBOX rule of §5.1
TABLE = [
    ("", "*", "INBOX", True), ("", "*", "a.b.c", True), ("", "%", "a", True), ("", "%", "a.b", False),
    ("", "a.%", "a.b", True), ("", "a.%", "a.b.c", False), ("", "a.*", "a.b.c", True), ("", "a*", "a", True),
    ("", "%.%", "a.b", True), ("", "%%%%", "abc", True), ("", "a%*%b", "a.x.b", True), ("", "a%b", "a.b", False),
    ("a.", "%", "a.b", True), ("a.", "%", "b", False), ("", "inbox", "INBOX", True), ("", "InBoX.%", "INBOX.x", True),
    ("", "inboxes", "INBOX", False), ("", "", "", True), ("", "", "a", False), ("", "a", "", False),
    ("", "A" + "%" * 50 + "y", "A" + "a" * 200, False), ("", "A" + "%" * 50 + "y", "Aay", True),
    ("", "*a*b*c", "xaybzc", True), ("", "*a*b*c", "xaybzcd", False), ("", "%", "", True),
]


def test_table() -> None:
    for reference, pattern, name, expected in TABLE:
        assert compile_pattern(reference, pattern).match(name) is expected, (reference, pattern, name)


def _regex(pattern: str) -> re.Pattern[str]:
    """The old translation, fine as an oracle on short inputs."""
    return re.compile("".join(".*" if c == "*" else "[^.]*" if c == "%" else re.escape(c) for c in pattern) + r"\Z",
                      re.DOTALL)


@settings(max_examples=400, deadline=None)
@given(st.text("ab.%*", max_size=10), st.text("ab.*%", max_size=10))
def test_same_answers_as_the_regex(pattern: str, name: str) -> None:
    assert compile_pattern("", pattern).match(name) == bool(_regex(pattern).match(name))
