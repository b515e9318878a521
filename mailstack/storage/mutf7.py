"""Modified UTF-7 (RFC 3501 §5.1.3): how IMAP folder names are stored on disk.

Dovecot 2.3 keeps Maildir++ folder directory names in modified UTF-7, so we do too.

Invariants:
- `decode(encode(s)) == s` for every str without lone surrogates.
- `encode` output is canonical: printable ASCII (0x20-0x7e) stands for itself, `&` is
  `&-`, every other run of characters is one `&<base64 of UTF-16BE>-` block with `,`
  for `/` and no padding.
- `decode` refuses anything that `encode` could not have produced (bad base64,
  non-zero pad bits, an unterminated shift, raw non-ASCII or control bytes, a shift
  that encodes printable ASCII), raising `ValueError`.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["encode", "decode"]


def _is_direct(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def _b64(run: str) -> str:
    raw = run.encode("utf-16-be")  # raises UnicodeEncodeError for lone surrogates
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """Encode a Unicode folder name into modified UTF-7."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _is_direct(ch):
            if run:
                out.append("&" + _b64("".join(run)) + "-")
                run.clear()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append("&" + _b64("".join(run)) + "-")
    try:
        return "".join(out)
    except UnicodeEncodeError as exc:  # pragma: no cover - raised inside _b64
        raise ValueError(str(exc)) from None


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _unb64(chunk: str) -> str:
    if not chunk or any(c not in _B64_ALPHABET for c in chunk):
        raise ValueError(f"invalid modified base64: {chunk!r}")
    if len(chunk) % 4 == 1:
        raise ValueError(f"truncated modified base64: {chunk!r}")
    padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
    if len(raw) % 2:
        raise ValueError(f"odd UTF-16 length in {chunk!r}")
    # RFC 3501 §5.1.3 / RFC 2152: the unused bits of the last base64 character must be 0.
    if base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") != chunk:
        raise ValueError(f"non-canonical modified base64: {chunk!r}")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise ValueError(str(exc)) from None
    if any(_is_direct(c) for c in text):
        raise ValueError(f"modified base64 encodes printable ASCII: {chunk!r}")
    return text


def decode(encoded: str) -> str:
    """Decode a modified UTF-7 folder name; ValueError if it is not valid."""
    out: list[str] = []
    i = 0
    n = len(encoded)
    while i < n:
        ch = encoded[i]
        if not _is_direct(ch):
            raise ValueError(f"character {ch!r} not allowed in modified UTF-7")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = encoded.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated '&' shift in modified UTF-7")
        if end == i + 1:
            out.append("&")
        else:
            out.append(_unb64(encoded[i + 1 : end]))
        i = end + 1
    return "".join(out)
