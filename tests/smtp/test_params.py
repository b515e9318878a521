"""MAIL and RCPT arguments, text in / values or a named reply out (smtp/params, no I/O).

The same rules over real sockets are in tests/smtp/test_mx.py; the hostile-input
property in tests/hostile/test_smtp.py.
"""

from __future__ import annotations

import pytest

from mailstack.smtp import params as P
from mailstack.smtp import replies as R
from mailstack.smtp.params import MailArgs, RcptArgs
from mailstack.smtp.replies import Reply


# RFC 5321 §4.1.2 paths
@pytest.mark.parametrize(
    "text, expected",
    [
        ("<a@b.example>", ("a@b.example", "")),
        ("<> SIZE=10", ("", "SIZE=10")),
        ("<a@b> BODY=8BITMIME SMTPUTF8", ("a@b", "BODY=8BITMIME SMTPUTF8")),
        ('<"x>y"@b>', ('"x>y"@b', "")),
        ('<"a b"@c>', ('"a b"@c', "")),  # a quoted local part may hold a space
        ('<"a\\"b"@c>', ('"a\\"b"@c', "")),  # and a quoted-pair
        ("<@relay.example,@r2.example:u@d.example>", ("u@d.example", "")),  # RFC 5321 §C
        ("  <a@b>", ("a@b", "")),
        ("<a@b>   SIZE=1  ", ("a@b", "SIZE=1")),
        ("a@b", None),  # angle brackets required
        ("<a@b", None),
        ("<a b@c>", None),
        ("<a@b>x", None),
        ("<nodomain>", None),
        ("<a@>", None),
        ("<@relay.example>", None),  # a route to nowhere
        ("<a<b@c>", None),
        ('<"unterminated@b>', None),
        ("", None),
    ],
)
def test_parse_path(text: str, expected: tuple[str, str] | None) -> None:
    assert P.parse_path(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("SIZE=10 BODY=8BITMIME SMTPUTF8", {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": True}),
        ("size=10", {"SIZE": "10"}),  # keywords in any case, given upper-cased
        ("X-FOO=bar", {"X-FOO": "bar"}),  # RFC 5321 §4.1.2: a keyword may hold "-"
        ("SIZE=1 SIZE=2", {"SIZE": "2"}),  # the later one wins (aiosmtpd's reading)
        ("ORCPT=rfc822;a+40b", {"ORCPT": "rfc822;a+40b"}),
        ("ENVID=caf\u00e9", {"ENVID": "caf\u00e9"}),  # RFC 6531 §3.3: UTF-8 in a value
        ("SIZE=", None),  # an empty value
        ("=10", None),  # no keyword
        ("-X=1", None),  # a keyword starts with ALPHA / DIGIT
        ("S\u00cdZE=1", None),  # only ASCII letters in a keyword
        ("SIZE=1=2", None),  # "=" is not esmtp-value
        ("SIZE=\x01", None),  # nor a control
    ],
)
def test_parse_params(text: str, expected: dict[str, str | bool] | None) -> None:
    assert P.parse_params(text) == expected


LIMIT = 1000

# (argument of MAIL, extended (EHLO), expected values or reply)
MAIL: list[tuple[str | None, bool, MailArgs | Reply | str]] = [
    ("FROM:<a@example.test>", True, MailArgs("a@example.test")),
    ("from:<a@example.test>", False, MailArgs("a@example.test")),
    ("FROM: <a@example.test>", True, MailArgs("a@example.test")),  # tolerated, as Postfix
    ("FROM:<>", True, MailArgs("")),  # the null reverse-path
    ("FROM:<a@[192.0.2.1]>", True, MailArgs("a@[192.0.2.1]")),  # address literal: yes in MAIL
    ("FROM:<a@example.test> SIZE=1000 BODY=8bitmime", True, MailArgs("a@example.test", 1000, "8BITMIME")),
    ("FROM:<j\u00f6@example.test> SMTPUTF8", True, MailArgs("j\u00f6@example.test", None, "7BIT", True)),
    (None, True, P.MAIL_SYNTAX),
    ("TO:<a@example.test>", True, P.MAIL_SYNTAX),
    ("FROM:a@example.test", True, P.BAD_SENDER),
    ("FROM:<a@-bad-.test>", True, "501 5.1.7"),  # the address does not parse: why, in the text
    ("FROM:<a@example.test> SIZE=", True, R.BAD_SYNTAX),
    ("FROM:<a@example.test> SIZE=10", False, P.PARAMS_NEED_EHLO),  # RFC 5321 §4.1.1.11
    ("FROM:<a@example.test> RET=HDRS", True, Reply(555, "5.5.4", "MAIL parameter RET not supported")),
    ("FROM:<a@example.test> SIZE=1001", True, R.TOO_BIG),  # RFC 1870 §6.2: refused at MAIL
    ("FROM:<a@example.test> SIZE=12x", True, P.SIZE_NOT_NUMBER),
    ("FROM:<a@example.test> SIZE", True, P.SIZE_NOT_NUMBER),
    ("FROM:<a@example.test> SIZE=" + "9" * 21, True, P.SIZE_NOT_NUMBER),  # no int() of endless digits
    ("FROM:<a@example.test> SIZE=\u0661\u0662", True, P.SIZE_NOT_NUMBER),  # Arabic-Indic digits
    ("FROM:<a@example.test> BODY=BINARYMIME", True, P.BAD_BODY),  # RFC 3030 needs BDAT
    ("FROM:<a@example.test> BODY", True, P.BAD_BODY),
    ("FROM:<a@example.test> SMTPUTF8=yes", True, P.SMTPUTF8_VALUE),
    ("FROM:<j\u00f6@example.test>", True, P.NEEDS_SMTPUTF8),  # RFC 6531 §3.4
]


@pytest.mark.parametrize("arg, extended, expected", MAIL)
def test_parse_mail(arg: str | None, extended: bool, expected: MailArgs | Reply | str) -> None:
    got = P.parse_mail(arg, extended=extended, max_size=LIMIT)
    if isinstance(expected, str):
        assert isinstance(got, Reply) and str(got).startswith(expected)
    else:
        assert got == expected


# (argument of RCPT, SMTPUTF8 given at MAIL, expected)
RCPT: list[tuple[str | None, bool, RcptArgs | Reply]] = [
    ("TO:<b@example.test>", False, RcptArgs("b@example.test")),
    ("to: <b@example.test>", False, RcptArgs("b@example.test")),
    ("TO:<@relay.test:b@example.test>", False, RcptArgs("b@example.test")),
    ("TO:<j\u00f6@example.test>", True, RcptArgs("j\u00f6@example.test")),
    (None, False, P.RCPT_SYNTAX),
    ("FROM:<b@example.test>", False, P.RCPT_SYNTAX),
    ("TO:<>", False, P.BAD_RECIPIENT),  # the null path is for MAIL only
    ("TO:b@example.test", False, P.BAD_RECIPIENT),
    ("TO:<b@example.test> NOTIFY=NEVER", False, Reply(555, "5.5.4", "RCPT parameter NOTIFY not supported")),
    ("TO:<b@example.test> NOTIFY=", False, R.BAD_SYNTAX),
    ("TO:<j\u00f6@example.test>", False, P.NEEDS_SMTPUTF8),
]


@pytest.mark.parametrize("arg, smtputf8, expected", RCPT)
def test_parse_rcpt(arg: str | None, smtputf8: bool, expected: RcptArgs | Reply) -> None:
    assert P.parse_rcpt(arg, smtputf8=smtputf8) == expected


def test_every_refusal_is_a_named_reply_with_an_enhanced_code() -> None:
    for arg, extended, _ in MAIL:
        got = P.parse_mail(arg, extended=extended, max_size=LIMIT)
        if isinstance(got, Reply):
            assert got.code >= 500 and got.enhanced.startswith("5.")
