"""Outbound transport-security policy: MTA-STS (RFC 8461) and DANE (RFC 7672), without I/O.

The outbound client asks three questions here, and does the I/O itself:

- what do the ``_mta-sts`` TXT record and the policy file say (``parse_sts_record``,
  ``parse_sts_policy``), and which MX hosts may be used (``StsPolicy.allows``);
- which TLSA records are usable and does the server's certificate match one of them
  (``usable_tlsa``; DANE-EE ``tlsa_matches`` on the leaf, DANE-TA ``dane_ta_matches`` on
  the chain the server presented, checked here by signature and name with
  ``cryptography``, since Python's ``ssl`` cannot verify against a TLSA anchor);
- given the policy and what happened on the wire (STARTTLS offered? certificate valid?),
  deliver or defer (``decide``), and which word the mail log gets
  (``tls=none|opportunistic|mta-sts|dane``).

Invariants:
- plaintext is chosen only when no policy asks for TLS (RFC 8461 §5, RFC 7672 §2.2);
- DANE wins over MTA-STS when both exist (RFC 8461 §2: "senders who implement DANE
  SHOULD use it ... in preference to MTA-STS");
- an MTA-STS policy in ``testing`` mode never stops a delivery (RFC 8461 §5), it is only
  logged; ``none`` is as if there were no policy;
- a policy that does not parse is no policy (RFC 8461 §3.2: "senders ... MUST treat it as
  if no policy were present"), never an error that holds mail;
- a message whose sender wrote ``TLS-Required: No`` (``tls_required_no``, RFC 8689 §5)
  goes out as if no policy existed (opportunistic TLS) -- unless it also carries
  REQUIRETLS, which wins (RFC 8689 §5: the header field "MUST be ignored" then).
  We honour the field only on mail of our authenticated submission users (the choice:
  on the MX it is a stranger's request to weaken our checks, so it is kept in the
  message for the next hop and otherwise ignored).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from mailstack.dns import TLSARecord as TLSA
from mailstack.mail.headers import raw_fields

__all__ = [
    "StsPolicy",
    "StsError",
    "parse_sts_record",
    "parse_sts_policy",
    "TLSA",
    "usable_tlsa",
    "tlsa_matches",
    "dane_ta_matches",
    "Requirement",
    "Decision",
    "decide",
    "MAX_POLICY_SIZE",
    "MAX_STS_AGE",
    "tls_required_no",
]

MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 §3.3: senders may refuse a larger policy body
MAX_STS_AGE = 31557600  # RFC 8461 §3.2: max_age is at most 31557600 s (about a year)
MAX_CHAIN = 10  # certificates of a presented chain looked at for DANE-TA (real chains: 2-4)


class StsError(ValueError):
    """The record or policy does not parse: treat as no policy (RFC 8461 §3.2)."""


@dataclass(frozen=True)
class StsPolicy:
    mode: str  # "enforce" | "testing" | "none"
    mx: tuple[str, ...]  # patterns, lower case: "mx.example.com" or "*.example.com"
    max_age: int
    id: str = ""

    def allows(self, host: str) -> bool:
        """RFC 8461 §4.1: an MX host matches a pattern exactly, or a "*." pattern matches
        exactly one leftmost label."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_sts_record(records: Sequence[str]) -> str | None:
    """The policy id of the ``_mta-sts.<domain>`` TXT records, or None (no usable record).

    RFC 8461 §3.1: records not starting with ``v=STSv1`` are ignored; more than one
    STSv1 record means no policy.
    """
    found = [r for r in records if r.replace(" ", "").startswith("v=STSv1;") or r.strip() == "v=STSv1"]
    if len(found) != 1:
        return None
    fields = {}
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    ident = fields.get("id", "")
    if not (1 <= len(ident) <= 32 and ident.isalnum() and ident.isascii()):
        return None
    return ident


def parse_sts_policy(text: str, ident: str = "") -> StsPolicy:
    """RFC 8461 §3.2: ``key: value`` lines (CRLF or LF); version, mode, max_age required,
    ``mx`` required (one or more) unless mode is ``none``."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise StsError(f"policy line without ':': {line[:60]!r}")
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise StsError("policy version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise StsError(f"policy mode {mode!r} is not enforce, testing or none")
    age = (fields.get("max_age") or [""])[0]
    if not age.isdigit() or len(age) > 10:
        raise StsError(f"policy max_age {age!r} is not a number")
    mx = tuple(m.lower().rstrip(".") for m in fields.get("mx", []) if m)
    if not mx and mode != "none":
        raise StsError("policy names no mx")
    return StsPolicy(mode, mx, min(int(age), MAX_STS_AGE), ident)


def tls_required_no(message: bytes) -> bool:
    """Does the header section carry ``TLS-Required: No`` (RFC 8689 §5; the value is
    case-insensitive, white space around it ignored)? Any other value means nothing."""
    return any(f.key == "tls-required" and f.value.strip().lower() == b"no" for f in raw_fields(message))


# ---------------------------------------------------------------------------
# DANE


def usable_tlsa(records: Sequence[TLSA]) -> list[TLSA]:
    """RFC 7672 §3.1: for SMTP only DANE-TA(2) and DANE-EE(3) are usable; selector 0/1,
    matching type 0/1/2. An RRset of only unusable records still makes TLS mandatory
    (RFC 7672 §2.2)."""
    return [r for r in records if r.usage in (2, 3) and r.selector in (0, 1) and r.mtype in (0, 1, 2)]


def _matches(r: TLSA, cert_der: bytes, spki_der: bytes) -> bool:
    """RFC 6698 §2.1: the certificate (selector 0) or its SubjectPublicKeyInfo (1), whole
    (matching type 0), SHA-256 (1) or SHA-512 (2)."""
    blob = cert_der if r.selector == 0 else spki_der
    if r.mtype == 1:
        blob = hashlib.sha256(blob).digest()
    elif r.mtype == 2:
        blob = hashlib.sha512(blob).digest()
    return blob == r.data


def tlsa_matches(records: Sequence[TLSA], cert_der: bytes, spki_der: bytes) -> bool:
    """RFC 7672 §3.1.1: a DANE-EE record matches the leaf certificate; the name and dates
    in the certificate are not checked."""
    return any(_matches(r, cert_der, spki_der) for r in usable_tlsa(records) if r.usage == 3)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _name_matches(pattern: str, name: str) -> bool:
    """RFC 7672 §3.2.3 (RFC 6125 §6.4.3): case-insensitive; ``*`` only as the whole
    left-most label, standing for exactly one label."""
    pattern, name = pattern.rstrip(".").lower(), name.rstrip(".").lower()
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:] and "*" not in rest
    return "*" not in pattern and pattern == name


def _cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS-ID names of a certificate, else its CN (RFC 7672 §3.2.3)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return names
    except x509.ExtensionNotFound:
        pass
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _is_ca(cert: x509.Certificate, *, required: bool) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return not required


def dane_ta_matches(records: Sequence[TLSA], chain_der: Sequence[bytes], names: Sequence[str],
                    now: datetime.datetime | None = None) -> bool:
    """RFC 7672 §3.1.2: does the chain the server presented (leaf first, DER) lead by
    signature to a trust anchor that a DANE-TA record names, with the leaf valid for one
    of ``names`` (the MX host and the next-hop domain, RFC 7672 §3.2.2)?

    The trust anchor must be in the presented chain (RFC 7672 §3.1.2: servers "MUST"
    send it), or be the whole certificate of a ``2 0 0`` record. Below the anchor each
    certificate must be issued by the next (issuer name and signature), the issuers must
    be CAs (basicConstraints; an anchor without the extension is taken, as old roots
    lack it) and every certificate below the anchor must be within its dates now; the
    anchor's own dates are not checked (it is trusted by DNSSEC, not by its validity).
    Anything that does not parse is no match."""
    ta = [r for r in usable_tlsa(records) if r.usage == 2]
    if not ta or not chain_der:
        return False
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der[:MAX_CHAIN]]
        extra = [x509.load_der_x509_certificate(r.data) for r in ta if r.selector == 0 and r.mtype == 0]
    except ValueError:
        return False
    leaf = chain[0]
    if not any(_name_matches(p, n) for p in _cert_names(leaf) for n in names if n):
        return False
    candidates = chain[1:] + extra  # the anchor: an issuer in the chain, or a full 2 0 0 record
    for anchor in candidates:
        der = anchor.public_bytes(serialization.Encoding.DER)
        if not any(_matches(r, der, _spki(anchor)) for r in ta):
            continue
        path = chain[: chain.index(anchor)] if anchor in chain else chain
        if _path_ok(path, anchor, now):
            return True
    return False


def _path_ok(path: Sequence[x509.Certificate], anchor: x509.Certificate, now: datetime.datetime) -> bool:
    """``path`` (leaf first) is issued link by link and ends in one issued by ``anchor``."""
    issuers = list(path[1:]) + [anchor]
    for cert, issuer in zip(path, issuers):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return False
        if not _is_ca(issuer, required=issuer is not anchor):
            return False
        try:
            cert.verify_directly_issued_by(issuer)  # issuer name and signature
        except (ValueError, TypeError, InvalidSignature):
            return False
    return True


# ---------------------------------------------------------------------------
# the decision


class Requirement(Enum):
    NONE = "none"  # opportunistic TLS, plaintext allowed
    STS_TESTING = "mta-sts-testing"  # verify, report, deliver anyway
    STS_ENFORCE = "mta-sts"  # verified TLS to an allowed MX, or no delivery
    DANE = "dane"  # TLS with a certificate matching a DNSSEC-validated TLSA record
    DANE_UNAUTHENTICATED = "dane-tls"  # validated TLSA RRset, none usable: TLS still required


@dataclass(frozen=True)
class Decision:
    deliver: bool
    tls: str  # the mail log's tls= word: none | opportunistic | mta-sts | dane
    reason: str = ""  # why not (the defer reply text), or what testing mode saw


def decide(req: Requirement, *, starttls_offered: bool, tls_ok: bool, verified: bool,
           host: str, host_allowed: bool = True) -> Decision:
    """Deliver or defer on one connection, once STARTTLS was tried (or not offered).

    ``tls_ok``: the handshake succeeded; ``verified``: the certificate passed the check
    this requirement asks for (PKIX + name for MTA-STS, a TLSA match for DANE).
    """
    if req is Requirement.STS_ENFORCE:
        if not host_allowed:  # RFC 8461 §4.1
            return Decision(False, "mta-sts", f"4.7.5 MX {host} is not listed in the MTA-STS policy")
        if not starttls_offered:  # RFC 8461 §4.2
            return Decision(False, "mta-sts", f"4.7.5 {host} does not offer STARTTLS, MTA-STS policy requires it")
        if not (tls_ok and verified):
            return Decision(False, "mta-sts", f"4.7.5 certificate of {host} not valid for MTA-STS")
        return Decision(True, "mta-sts")
    if req in (Requirement.DANE, Requirement.DANE_UNAUTHENTICATED):
        if not starttls_offered:  # RFC 7672 §2.2
            return Decision(False, "dane", f"4.7.5 {host} does not offer STARTTLS, DANE TLSA records require it")
        if not tls_ok:
            return Decision(False, "dane", f"4.7.5 TLS with {host} failed, DANE TLSA records require it")
        if req is Requirement.DANE and not verified:  # RFC 7672 §3.1
            return Decision(False, "dane", f"4.7.5 certificate of {host} matches no DANE TLSA record")
        return Decision(True, "dane")
    if req is Requirement.STS_TESTING and not (host_allowed and starttls_offered and tls_ok and verified):
        # RFC 8461 §5: testing mode reports failures and delivers anyway
        reason = f"MTA-STS testing: {host} would fail the policy"
        return Decision(True, "opportunistic" if tls_ok else "none", reason)
    return Decision(True, "opportunistic" if tls_ok else "none")
