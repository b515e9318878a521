"""Hypothesis: no input makes the trust code raise; stripping never touches the body."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.dns import MXRecord, MXResult, NXDomain, SRVRecord
from mailstack.mail.authresults import ResInfo, authserv_id_of, format_header, strip_forged
from mailstack.mail.dmarc import parse_record
from mailstack.mail.spf import check


class FakeResolver:
    """Every name has the same SPF record; a few names have addresses and an MX."""

    def __init__(self, record: str) -> None:
        self.record = record

    async def txt(self, name: str) -> list[str]:
        if name.startswith("nx"):
            raise NXDomain(name)
        return [self.record]

    async def addresses(self, host: str) -> list[str]:
        return ["192.0.2.1", "2001:db8::1"] if len(host) % 2 else []

    async def mx(self, domain: str) -> MXResult:
        return MXResult(domain, (MXRecord(10, "mx." + domain),))

    async def srv(self, name: str) -> list[SRVRecord]:
        return []

    async def cname(self, name: str) -> list[str]:
        return []


terms = st.sampled_from(["a", "mx", "ptr", "all", "-all", "~all", "include:", "exists:", "redirect=", "ip4:",
                         "ip6:", "exp=", "a:", "mx:", "/24", "//64", "%{i}", "%{ir}", "%{l1r-}", "%{d2}",
                         "%%", "%_", "%", "nx.test", "x.test", "192.0.2.0/24", "::1", " ", "=", ":", "v=spf1"])


@settings(max_examples=300, deadline=None)
@given(st.lists(terms, max_size=12).map("".join), st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:1.2.3.4"]))
def test_spf_never_raises(body: str, ip: str) -> None:
    r = asyncio.run(check(FakeResolver("v=spf1 " + body), ip, "user@x.test", "helo.test"))
    assert r.result in ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_dmarc_record_never_raises(text: str) -> None:
    parse_record("v=DMARC1; " + text)
    parse_record(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_authserv_id_never_raises(text: str) -> None:
    authserv_id_of(text)


header_lines = st.sampled_from([
    b"Authentication-Results: mx.example.test; none\r\n", b"Authentication-Results: other.test; spf=pass\r\n",
    b"authentication-results:(c)mx.example.test;\r\n\tdkim=pass\r\n", b"Subject: x\r\n", b"\tcontinued\r\n",
    b"X: y\n", b"Authentication-Results: \"mx.example.test\"; none\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(header_lines, max_size=10), st.binary(max_size=100))
def test_strip_keeps_body_and_removes_all_ours(head: list[bytes], body: bytes) -> None:
    msg = b"".join(head) + b"\r\n" + body
    out, removed = strip_forged(msg, "mx.example.test")
    assert out.endswith(b"\r\n" + body)
    assert (removed == 0) == (out == msg)
    again, n = strip_forged(out, "mx.example.test")
    assert (again, n) == (out, 0)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_format_header_is_one_field(value: str, comment: str) -> None:
    h = format_header("mx.example.test", [ResInfo("spf", "pass", (("smtp.mailfrom", value),), comment=comment)])
    lines = h.split(b"\r\n")
    assert lines[-1] == b"" and all(line.startswith(b"\t") for line in lines[1:-1])
    assert b"\n" not in h.replace(b"\r\n", b"") and b"\r" not in h.replace(b"\r\n", b"")
    assert strip_forged(h + b"\r\nbody", "mx.example.test") == (b"\r\nbody", 1)
