"""Authentication-Results (RFC 8601): formatting, the authserv-id, stripping forged fields."""

from __future__ import annotations

import authres  # type: ignore[import-untyped]
import pytest

from mailstack.mail.authresults import ResInfo, authserv_id_of, format_header, strip_forged


def test_no_result() -> None:
    h = format_header("mx.example.test", [])
    assert h == b"Authentication-Results: mx.example.test; none\r\n"  # RFC 8601 §2.2 no-result
    assert authres.AuthenticationResultsHeader.parse(h.decode().strip()).results == []


@pytest.mark.parametrize(("value", "written"), [
    ("alice@remote.test", "alice@remote.test"),
    ("remote.test", "remote.test"),
    ("a b@remote.test", '"a b"@remote.test'),
    ("ab/cd+ef", '"ab/cd+ef"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("line\r\nInjected: yes", '"line??Injected: yes"'),
])
def test_pvalue(value: str, written: str) -> None:
    h = format_header("mx.example.test", [ResInfo("spf", "pass", (("smtp.mailfrom", value),))])
    assert h.decode().endswith(f"spf=pass smtp.mailfrom={written}\r\n")
    assert h.count(b"\r\n") == 2


def test_comment_and_reason_cannot_break_out() -> None:
    h = format_header("mx.example.test", [ResInfo("dkim", "fail", reason='bad "x"\n', comment="a (b) c")])
    assert h == b'Authentication-Results: mx.example.test;\r\n\tdkim=fail (a [b] c) reason="bad \\"x\\"?"\r\n'
    parsed = authres.AuthenticationResultsHeader.parse(h.decode().replace("\r\n", "\n").strip())
    assert parsed.results[0].reason.startswith("bad ")  # (authres keeps the backslashes)


@pytest.mark.parametrize(("value", "sid"), [
    (" mx.example.test; spf=pass", "mx.example.test"),
    ("MX.EXAMPLE.TEST.;spf=pass", "mx.example.test"),
    (" (our (nested) comment) mx.example.test 1; none", "mx.example.test"),
    (' "mx.example.test"; none', "mx.example.test"),
    (" other.test; none", "other.test"),
    ("", ""),
])
def test_authserv_id(value: str, sid: str) -> None:
    assert authserv_id_of(value) == sid


def test_strip_keeps_everything_else_byte_for_byte() -> None:
    msg = (b"Received: from a\r\n\tby b\r\n"
           b"authentication-results : mx.example.test;\r\n\tspf=pass\r\n"
           b"Subject: x\r\n"
           b"Authentication-Results: elsewhere.test; none\r\n"
           b"\r\n"
           b"Authentication-Results: mx.example.test; in the body stays\r\n")
    out, n = strip_forged(msg, "mx.example.test")
    assert n == 1
    assert out == msg.replace(b"authentication-results : mx.example.test;\r\n\tspf=pass\r\n", b"")


def test_strip_lf_only_and_no_body() -> None:
    msg = b"Authentication-Results: mx.example.test; none\nSubject: x\n"
    assert strip_forged(msg, "mx.example.test") == (b"Subject: x\n", 1)
    assert strip_forged(b"Subject: x\r\n\r\n", "mx.example.test") == (b"Subject: x\r\n\r\n", 0)
