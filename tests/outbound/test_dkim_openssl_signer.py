"""The OpenSSL DKIM RSA signer is a drop-in for dkimpy's own (pure Python) one.

mailstack.mail.dkim replaces dkimpy's ``RSASSA_PKCS1_v1_5_sign`` with one on OpenSSL
(``cryptography``). RSASSA-PKCS1-v1_5 is deterministic, so both must give the very same
bytes for the same key and digest (sha256 and sha1), and mail signed through dkimpy with
the replacement in place must still verify. No timing is measured here: the speed of
outbound signing is measured by ``benchmarks/smtp_outbound.py``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dkim as dkimpy
import dkim.crypto as dkim_crypto
import pytest

from mailstack.mail import dkim


@pytest.mark.parametrize("hash_name", ["sha256", "sha1"])
def test_openssl_signer_equals_dkimpy(tmp_path: Path, hash_name: str) -> None:
    dkim.generate_key(tmp_path, "example.test", "s1")
    pk = dkim_crypto.parse_pem_private_key(next(tmp_path.rglob("*.key")).read_bytes())
    for text in (b"", b"hello", b"x" * 5000):
        h1, h2 = hashlib.new(hash_name, text), hashlib.new(hash_name, text)
        assert dkim.openssl_rsa_sign(h1, pk) == bytes(dkim_crypto.RSASSA_PKCS1_v1_5_sign(h2, pk))


def test_dkimpy_signs_through_openssl_and_verifies(tmp_path: Path) -> None:
    assert dkimpy.RSASSA_PKCS1_v1_5_sign is dkim.openssl_rsa_sign
    key = dkim.generate_key(tmp_path, "example.test", "s1")
    pem = next(tmp_path.rglob("*.key")).read_bytes()
    msg = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: x\r\n\r\nbody\r\n"
    sig = dkimpy.sign(msg, b"s1", b"example.test", pem, include_headers=[b"from", b"to", b"subject"])
    record = dkim.txt_record(key).encode()
    assert dkimpy.verify(sig + msg, dnsfunc=lambda name, timeout=5: record)
