"""DNS records and trace headers from strangers: SPF (mail/spf), DMARC, DKIM tags, Authentication-Results."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from mailstack.dns import MXRecord, MXResult, NXDomain, SRVRecord
from mailstack.mail import dmarc, spf
from mailstack.mail.authcheck import _sig_tags, from_domains
from mailstack.mail.authresults import authserv_id_of, strip_forged
from tests.hostile.bounds import SETTINGS, assert_size, bounded


class _Zone:
    """An in-memory resolver (the mock allowed for internet DNS): every TXT lookup gets ``record``."""

    def __init__(self, record: str) -> None:
        self.record = record
        self.lookups = 0

    async def txt(self, name: str) -> list[str]:
        self.lookups += 1
        return [self.record]

    async def addresses(self, host: str) -> list[str]:
        self.lookups += 1
        return ["192.0.2.1"]

    async def mx(self, domain: str) -> MXResult:
        self.lookups += 1
        return MXResult(domain, (MXRecord(10, "mx." + domain),))

    async def srv(self, name: str) -> list[SRVRecord]:
        raise NXDomain(name)

    async def cname(self, name: str) -> list[str]:
        raise NXDomain(name)


def _spf(record: str, sender: str = "user@example.test") -> str:
    zone = _Zone(record)
    result = asyncio.run(spf.check(zone, "192.0.2.9", sender, "helo.example.test"))  # type: ignore[arg-type]
    assert zone.lookups <= 4 * (spf.MAX_DNS_TERMS + 2)
    return result.result


TERMS = ["v=spf1", " ", "include:", "a", "mx", "ptr", "exists:", "ip4:", "ip6:", "all", "-all", "~", "?", "+",
         "redirect=", "exp=", "%{s}", "%{d}", "%{ir}", "%{l1r-}", "%{o" + "9" * 5000 + "}", "%%", "%_", "%",
         "/24", "//64", "192.0.2.0", "example.test", ".", "a" * 63, ":", "=", "{", "}"]
spf_records = st.lists(st.sampled_from(TERMS), max_size=40).map(lambda ts: "v=spf1 " + "".join(ts))


@SETTINGS
@given(st.one_of(st.text(max_size=500).map(lambda t: "v=spf1 " + t), spf_records))
def test_spf_records(record: str) -> None:
    bounded(_spf, record)


def test_spf_macro_of_many_labels_is_linear() -> None:
    """Truncating the expansion to 253 octets re-joined all labels per label: quadratic."""
    bounded(_spf, "v=spf1 exists:" + "%{d}." * 30_000 + " -all")  # was ~15 s
    bounded(_spf, "v=spf1 include:" + "a." * 30_000 + "example.test -all")
    bounded(_spf, "v=spf1 exists:%{d" + "9" * 5000 + "} -all")  # int() raised ValueError


@SETTINGS
@given(st.text(max_size=2000))
def test_dmarc_records(text: str) -> None:
    bounded(dmarc.parse_record, "v=DMARC1; " + text)
    bounded(dmarc.parse_record, text)


@SETTINGS
@given(st.binary(max_size=2000))
def test_dkim_signature_tags(raw: bytes) -> None:
    tags = bounded(_sig_tags, raw)
    assert sum(len(k) + len(v) for k, v in tags.items()) <= len(raw)


HEADER_BITS = [b"Authentication-Results: ", b"mx.example.test", b"; spf=pass", b"(", b")", b"\\", b"\"", b"\r\n",
               b"\n", b" ", b"\t", b"From: a@b\r\n", b"\r\n\r\n", b"x"]
heads = st.lists(st.sampled_from(HEADER_BITS), max_size=50).map(b"".join)


@SETTINGS
@given(st.one_of(st.binary(max_size=3000), heads))
def test_authentication_results_stripping(message: bytes) -> None:
    out, removed = bounded(strip_forged, message, "mx.example.test")
    assert len(out) <= len(message) and removed >= 0
    bounded(authserv_id_of, message.decode("utf-8", "replace"))
    domains = bounded(from_domains, message)
    assert_size(sum(map(len, domains)), len(message), 1)


def test_authentication_results_amplified() -> None:
    for bit in (b"(" * 50_000, b"\\" * 50_000, b"\"" * 50_000, b"(\\" * 50_000):
        bounded(strip_forged, b"Authentication-Results: " + bit + b"\r\n\r\nbody", "mx.example.test")
        bounded(authserv_id_of, bit.decode())
