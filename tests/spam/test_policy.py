"""rspamd's answer and what the MX makes of it, bytes in / bytes out (no I/O), plus
``mailstack.spam.reachable`` for ``mailstack status`` against the real rspamd."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.config import Config, config_from_dict
from mailstack.mail.headers import header_fields
from mailstack.spam import reachable
from mailstack.spam.policy import Disposition, decide, unscanned
from mailstack.spam.rspamd import ScanError, ScanResult, parse_check_reply
from tests.helpers import free_port
from tests.spam.rspamd_peer import Rspamd

MSG = b"From: a@example.org\r\nSubject: Hi\r\nX-Spam-Status: No\r\nx-rspamd-score: -5\r\n\r\nbody\r\nX-Spam: Yes\r\n"


def result(action: str, **kw: object) -> ScanResult:
    return ScanResult(action=action, score=kw.pop("score", 7.5), required_score=15.0, **kw)  # type: ignore[arg-type]


# action -> (disposition, code, status)
TABLE = [
    ("reject", Disposition.REJECT, 550, "5.7.1"),
    ("soft reject", Disposition.DEFER, 451, "4.7.1"),
    ("greylist", Disposition.DEFER, 451, "4.7.1"),
    ("add header", Disposition.JUNK, 250, "2.0.0"),
    ("rewrite subject", Disposition.JUNK, 250, "2.0.0"),
    ("quarantine", Disposition.JUNK, 250, "2.0.0"),  # never thrown away: Junk
    ("discard", Disposition.JUNK, 250, "2.0.0"),  # likewise
    ("no action", Disposition.INBOX, 250, "2.0.0"),
    ("some custom action", Disposition.INBOX, 250, "2.0.0"),
]


@pytest.mark.parametrize("action,disposition,code,status", TABLE)
def test_the_verdict_table(action: str, disposition: Disposition, code: int, status: str) -> None:
    d = decide(result(action))
    assert (d.disposition, d.code, d.status) == (disposition, code, status)


def test_reject_text_is_rspamds_printable_and_bounded() -> None:
    d = decide(result("reject", message="Spam\r\n250 ok \x00" + "x" * 500))
    assert d.text.startswith("Spam250 ok ") and len(d.text) == 200
    assert decide(result("reject")).text == "Spam message rejected"


def test_headers_in_the_body_are_kept_and_forged_ones_in_the_header_removed() -> None:
    out = decide(result("add header", symbols=(("A", 1.0), ("B", 6.5)))).apply(MSG)
    fields = {f.name.lower(): f.value.strip() for f in header_fields(out)}
    assert fields["x-spam"] == "Yes" and fields["x-spam-status"] == "Yes, score=7.50 required=15.00"
    assert fields["x-rspamd-symbols"] == "B(6.50), A(1.00)"  # the highest scores first
    assert "x-rspamd-score" not in fields
    assert out.endswith(b"\r\n\r\nbody\r\nX-Spam: Yes\r\n")  # the body is untouched


def test_long_symbol_lists_are_folded_under_78_characters() -> None:
    symbols = tuple((f"SYMBOL_NUMBER_{i}", float(i)) for i in range(80))
    out = decide(result("no action", symbols=symbols)).fields
    lines = out.split(b"\r\n")
    assert all(len(line) <= 78 for line in lines)
    value = next(f.value for f in header_fields(out + b"\r\n") if f.name == "X-Rspamd-Symbols")
    assert value.count("(") == 50  # MAX_SYMBOLS


def test_rewrite_subject_replaces_the_subject_encoded_when_not_ascii() -> None:
    out = decide(result("rewrite subject", subject="***SPAM*** Grüße")).apply(MSG)
    subjects = [f.value.strip() for f in header_fields(out) if f.name.lower() == "subject"]
    assert subjects == ["=?utf-8?b?KioqU1BBTSoqKiBHcsO8w59l?="]


def test_milter_headers_from_rspamd_are_used_as_given() -> None:
    body = json.dumps({"action": "add header", "score": 9, "required_score": 15,
                       "milter": {"add_headers": {"X-Spam-Status": {"value": "Yes, score=9", "order": 0},
                                                  "X-Spamd-Bar": "+++++++++"},
                                  "remove_headers": {"X-Spam-Level": 0}}}).encode()
    d = decide(parse_check_reply(body))
    out = d.apply(b"X-Spam-Level: ***\r\nSubject: s\r\n\r\nb\r\n")
    fields = [(f.name, f.value.strip()) for f in header_fields(out)]
    assert ("X-Spam-Status", "Yes, score=9") in fields and ("X-Spamd-Bar", "+++++++++") in fields
    assert [n for n, _ in fields].count("X-Spam-Status") == 1 and "X-Spam-Level" not in dict(fields)


def test_unscanned_says_why_or_defers() -> None:
    d = unscanned("rspamd timed out after 5 s", defer=False)
    assert d.disposition is Disposition.INBOX and d.fields == b"X-Spam-Scanned: no (rspamd timed out after 5 s)\r\n"
    d = unscanned("x", defer=True)
    assert (d.disposition, d.code, d.status) == (Disposition.DEFER, 451, "4.7.1")


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b"{}", b'{"action": 5, "score": 1}', b'{"action": "reject"}',
    b'{"action": "reject", "score": "high"}', b'{"action": "reject", "score": NaN}',
    b'{"action": "", "score": 1}', b"[" * 100000, b"\xff\xfe",
])
def test_garbage_from_rspamd_is_a_scan_error(body: bytes) -> None:
    with pytest.raises(ScanError):
        parse_check_reply(body)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=15), c, max_size=5),
                    max_leaves=30))
def test_any_json_is_a_verdict_or_a_scan_error(doc: object) -> None:
    try:
        body = json.dumps(doc).encode()
    except ValueError:
        return
    try:
        r = parse_check_reply(body)
    except ScanError:
        return
    decide(r, "Q1").apply(MSG)  # and what we make of it never raises either


def test_reachable_for_mailstack_status(rspamd: Rspamd) -> None:
    def cfg(url: str) -> Config:
        return config_from_dict({"hostname": "mx.example.test", "spam": {"rspamd_url": url}}, None)

    assert asyncio.run(reachable(cfg(rspamd.url))) is True
    assert asyncio.run(reachable(cfg(f"http://127.0.0.1:{free_port()}"), timeout=1)) is False
    assert asyncio.run(reachable(cfg(""))) is None  # not configured: nothing to report
