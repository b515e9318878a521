"""mail.author, bytes in / values out: the one reading of From:/Sender: (issue 10 #3).

Submission's ownership check, DMARC's From domains and the DKIM signing domain all
come from here; these tables pin what each sees. The end-to-end table of spoofs is in
tests/outbound/test_submission.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.mail import author as A
from mailstack.mail import dkim
from mailstack.mail.authcheck import from_domains as authcheck_from_domains


def msg(head: str) -> bytes:
    return head.encode("utf-8") + b"\r\nSubject: x\r\n\r\nbody\r\nFrom: in-the-body@evil.test\r\n"


# (header section, the From: addresses strictly read, or None when refused)
STRICT = [
    ("From: Alice <alice@example.test>", ["alice@example.test"]),
    ("From : Alice <alice@example.test>", ["alice@example.test"]),  # RFC 5322 §4.5.3
    ("FROM\t:alice@example.test", ["alice@example.test"]),
    ("From: ALICE@B\u00fccher.example", ["ALICE@xn--bcher-kva.example"]),
    ("From: \"alice\"@example.test", ["alice@example.test"]),
    ("From: \"a b\"@example.test", ['"a b"@example.test']),
    ("From: =?utf-8?q?alice@example.test?= <mallory@evil.test>", ["mallory@evil.test"]),
    ("From: alice@example.test (mallory@evil.test)", ["alice@example.test"]),
    ("From: Alice\r\n <alice@example.test>", ["alice@example.test"]),
    ("From: a@example.test, b@example.test", ["a@example.test", "b@example.test"]),
    ("From: <@route.test:alice@example.test>", None),  # obsolete route: a defect
    ("From: a@example.test\r\nFrom: a@example.test", None),
    ("From: a@example.test\r\nFrom : b@example.test", None),
    ("From: grp: a@example.test;", None),
    ("From: undisclosed:;", None),
    ("From: alice@example.test <mallory@evil.test>", None),
    ("From: =?utf-8?q?=3Calice@example.test=3E?=", None),
    ("From: alice@[192.0.2.1]", None),
    ("From: alice@example.test.", None),
    ("From:", None),
    ("Subject: none", None),
    ("Bogus line\r\nFrom: alice@example.test", None),
    ("From: a@example.test\r\nSender: b@example.test\r\nSender: b@example.test", None),
    ("From: a@example.test\r\nSender: b@example.test, c@example.test", None),
]


@pytest.mark.parametrize("head, expected", STRICT)
def test_author_table(head: str, expected: list[str] | None) -> None:
    if expected is None:
        with pytest.raises(A.AuthorError):
            A.author(msg(head))
        assert A.signing_domain(msg(head)) is None
    else:
        got = A.author(msg(head))
        assert [str(m.address) for m in got.mailboxes] == expected
        one = len(expected) == 1
        assert A.signing_domain(msg(head)) == (got.mailboxes[0].domain if one else None)
        assert dkim.from_domain(msg(head)) == A.signing_domain(msg(head))


def test_sender_is_read() -> None:
    a = A.author(msg("From: Sales <sales@example.test>\r\nSender: Alice <alice@example.test>"))
    assert a.sender is not None and str(a.sender.address) == "alice@example.test"


# DMARC (lenient): every domain a From: shows, however it is written
LENIENT = [
    ("From : x@paypal.test", ["paypal.test"]),
    ("From: x@evil.test\r\nFROM\t: y@paypal.test", ["evil.test", "paypal.test"]),
    ("From: x@evil.test <service@paypal.test>", ["evil.test", "paypal.test"]),
    ("From: grp: service@PayPal.test;", ["paypal.test"]),
    ("Bogus line\r\nFrom: service@paypal.test", ["paypal.test"]),
    ("From: =?utf-8?q?service@paypal.test?= <x@evil.test>", ["evil.test"]),
    ("Subject: none", []),
]


@pytest.mark.parametrize("head, domains", LENIENT)
def test_dmarc_from_domains(head: str, domains: list[str]) -> None:
    assert A.from_domains(msg(head)) == domains
    assert authcheck_from_domains(msg(head)) == domains  # DMARC uses the same function


@given(st.binary(max_size=300))
def test_never_raises_anything_but_author_error(data: bytes) -> None:
    try:
        A.author(data)
    except A.AuthorError:
        pass
    A.from_domains(data)
    A.signing_domain(data)
