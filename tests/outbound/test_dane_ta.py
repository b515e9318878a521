"""DANE-TA (TLSA usage 2, RFC 7672 §3.1.2): the chain the MX presents must lead by
signature to the anchor a validated TLSA record names, and the leaf must carry the MX
name or the next-hop domain (RFC 7672 §3.2.2).

End to end against the aiosmtpd sink on 127.0.0.23 with STARTTLS and a real chain
(leaf + intermediate + root, made with ``cryptography``), TLSA and the AD bit from the
loopback DNS; the rules themselves as a table against ``tlspolicy.dane_ta_matches``.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstack.dns import TLSARecord
from mailstack.queue import QueueStore
from mailstack.smtp.tlspolicy import dane_ta_matches, usable_tlsa
from tests.dnsserver import TestDNS
from tests.outbound.conftest import Remote, make_config
from tests.outbound.test_transport_security import MSG, maillog, run_queue

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@dataclass
class Cert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def spki(self) -> bytes:
        return self.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make(cn: str, issuer: Cert | None = None, *, ca: bool = False, names: tuple[str, ...] = (),
         not_after: datetime.datetime | None = None) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer.cert.subject if issuer else subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(NOW - DAY)
         .not_valid_after(not_after or NOW + 30 * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return Cert(b.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki() -> dict[str, Cert]:
    root = make("test root", ca=True)
    inter = make("test intermediate", root, ca=True)
    return {"root": root, "inter": inter, "leaf": make("mx.remote.test", inter, names=("mx.remote.test",))}


def ta(c: Cert, selector: int = 1, mtype: int = 1) -> TLSARecord:
    blob = c.der if selector == 0 else c.spki
    data = blob if mtype == 0 else hashlib.sha256(blob).digest() if mtype == 1 else hashlib.sha512(blob).digest()
    return TLSARecord(2, selector, mtype, data)


NAMES = ("mx.remote.test", "remote.test")


def test_a_chain_to_the_anchor_matches(pki: dict[str, Cert]) -> None:
    root, inter, leaf = pki["root"], pki["inter"], pki["leaf"]
    chain = [leaf.der, inter.der, root.der]
    assert usable_tlsa([ta(root)]) == [ta(root)]  # DANE-TA is usable now
    assert dane_ta_matches([ta(root)], chain, NAMES)  # the root as anchor
    assert dane_ta_matches([ta(inter, 0, 2)], chain[:2], NAMES)  # the intermediate, root not sent
    assert dane_ta_matches([ta(root, 0, 0)], chain[:2], NAMES)  # a full "2 0 0" anchor need not be sent


def test_what_must_not_match(pki: dict[str, Cert]) -> None:
    root, inter, leaf = pki["root"], pki["inter"], pki["leaf"]
    chain = [leaf.der, inter.der, root.der]
    other = make("other root", ca=True)
    assert not dane_ta_matches([ta(other)], chain, NAMES)  # no such anchor in the chain
    assert not dane_ta_matches([ta(root)], chain[:2], NAMES)  # hashed anchor not presented
    assert not dane_ta_matches([ta(root)], chain, ("elsewhere.test",))  # RFC 7672 §3.2.2: name
    assert not dane_ta_matches([TLSARecord(3, 1, 1, hashlib.sha256(root.spki).digest())], chain, NAMES)
    # a leaf that the intermediate did not sign, the real chain's anchor appended
    forged = make("mx.remote.test", make("x", ca=True), names=("mx.remote.test",))
    assert not dane_ta_matches([ta(root)], [forged.der, inter.der, root.der], NAMES)
    # an expired leaf under the anchor
    old = make("mx.remote.test", inter, names=("mx.remote.test",), not_after=NOW - DAY / 2)
    assert not dane_ta_matches([ta(root)], [old.der, inter.der, root.der], NAMES)
    # an end-entity certificate posing as the intermediate
    ee = make("not a ca", root)
    under_ee = make("mx.remote.test", ee, names=("mx.remote.test",))
    assert not dane_ta_matches([ta(root)], [under_ee.der, ee.der, root.der], NAMES)
    assert not dane_ta_matches([ta(root)], [b"garbage"], NAMES)
    assert not dane_ta_matches([ta(root)], [], NAMES)


@pytest.mark.parametrize("san,ok", [
    (("*.remote.test",), True),  # RFC 6125 §6.4.3: one whole left-most label
    (("remote.test",), True),  # the next-hop domain is a reference identifier too
    (("*.mx.remote.test",), False),  # stands for one label more, not none
    (("m*.remote.test",), False),  # a partial-label wildcard is not honoured
    (("MX.Remote.Test.",), True),
])
def test_leaf_names(pki: dict[str, Cert], san: tuple[str, ...], ok: bool) -> None:
    leaf = make("cn.is.ignored.test", pki["inter"], names=san)
    assert dane_ta_matches([ta(pki["root"])], [leaf.der, pki["inter"].der, pki["root"].der], NAMES) is ok


# ---------------------------------------------------------------------------
# end to end


def restart_with_chain(remote: Remote, tmp: Path, chain: list[Cert]) -> None:
    (tmp / "mx-chain.pem").write_bytes(b"".join(c.pem() for c in chain))
    (tmp / "mx-chain.key").write_bytes(chain[0].key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "mx-chain.pem", tmp / "mx-chain.key")
    remote.stop()
    remote.start(tls_context=ctx)


@pytest.mark.parametrize("leaf_name,delivered", [("mx.remote.test", True), ("wrong.remote-name.test", False)])
def test_dane_ta_end_to_end(tmp_path: Path, dns: TestDNS, remote: Remote, pki: dict[str, Cert],
                            caplog: pytest.LogCaptureFixture, leaf_name: str, delivered: bool) -> None:
    caplog.set_level("INFO", logger="mailstack.maillog")
    leaf = make(leaf_name, pki["inter"], names=(leaf_name,))
    restart_with_chain(remote, tmp_path, [leaf, pki["inter"], pki["root"]])
    cfg = make_config(tmp_path, dns, remote.port, dns={"trusted_resolvers": [dns.address]})
    name = f"_{remote.port}._tcp.mx.remote.test"
    dns.add(name, "TLSA", f"2 1 1 {hashlib.sha256(pki['root'].spki).hexdigest()}")
    dns.secure.add(name)
    store = QueueStore(cfg.queue.dir)
    qid = store.enqueue("alice@example.test", ["x@remote.test"], MSG)
    run_queue(cfg)
    line = maillog(caplog)[-1]
    assert "tls=dane" in line
    if delivered:
        assert len(remote.messages) == 1 and remote.messages[0].tls and "event=delivered" in line
    else:
        assert remote.messages == [] and "event=deferred" in line
        assert "matches no DANE TLSA record" in str(store.load(qid)[0].extra.get("last_error"))
