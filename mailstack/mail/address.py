"""Mail addresses: parsing, normalisation and the lookup key.

What a parsed `Address` guarantees (the invariants every other package relies on):

- `domain` is lower-case ASCII: IDNA labels are converted to their A-label form with
  UTS #46 processing and IDNA 2008 rules (`bücher.example` -> `xn--bcher-kva.example`,
  `faß.de` -> `xn--fa-hia.de`), each label 1..63 octets, the whole at most 255 octets
  (RFC 5321 §4.5.3.1.2), letters, digits and inner hyphens only (RFC 5321 §4.1.2
  `Domain`). A trailing dot is refused. An address literal (`[192.0.2.1]`,
  `[IPv6:2001:db8::1]`) is refused unless `allow_literal=True`; a directory never
  stores one (a mailbox lives in a named domain).
- `local` is the local part as given, without the quotes and backslashes of a quoted
  string (`"a b"@x` has local `a b`); `str()` quotes it again when it is not a dot-atom.
  UTF-8 is allowed (RFC 6531 §3.3, RFC 6532 §3.2), control characters are not. At most
  64 octets in UTF-8 (RFC 5321 §4.5.3.1.1) and not empty.
- The whole `local@domain` is at most 254 octets (the 256-octet path of RFC 5321
  §4.5.3.1.3 less its angle brackets).
- `key` (`local.casefold() + "@" + domain`) is what lookups compare: the local part is
  kept as given but matched case-insensitively, as Dovecot and Postfix do by default.

Only the standard library and the `idna` package; no I/O.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass

import idna

__all__ = [
    "Address",
    "AddressError",
    "MAX_ADDRESS_OCTETS",
    "MAX_DOMAIN_OCTETS",
    "MAX_LABEL_OCTETS",
    "MAX_LOCAL_OCTETS",
    "domain_to_unicode",
    "is_dot_atom",
    "normalize_domain",
    "parse_address",
    "split_tag",
]

MAX_LOCAL_OCTETS = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN_OCTETS = 255  # RFC 5321 §4.5.3.1.2
MAX_LABEL_OCTETS = 63  # RFC 1035 §2.3.4
MAX_ADDRESS_OCTETS = 254  # RFC 5321 §4.5.3.1.3: path of 256 octets includes "<" and ">"

# RFC 5322 §3.2.3 atext, without the ALPHA / DIGIT that str.isalnum() covers for ASCII.
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class AddressError(ValueError):
    """A malformed address or domain; `str()` is one line that says what is wrong."""


@dataclass(frozen=True, slots=True)
class Address:
    """A normalised mail address: `local` as given (unquoted), `domain` lower-case A-label."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{quote_local(self.local)}@{self.domain}"

    @property
    def key(self) -> str:
        """The lookup key: local part case-folded, domain as stored (already normalised)."""
        return f"{self.local.casefold()}@{self.domain}"

    @property
    def local_key(self) -> str:
        """The case-folded local part, as compared by lookups."""
        return self.local.casefold()

    @property
    def is_dot_atom(self) -> bool:
        """True when the local part needs no quoting (and so is safe as a Maildir name)."""
        return is_dot_atom(self.local)

    @property
    def is_ascii(self) -> bool:
        """False when delivering to this address needs SMTPUTF8 (RFC 6531)."""
        return self.local.isascii() and self.domain.isascii()


def _is_atext(ch: str) -> bool:
    if ch.isascii():
        return (ch.isalnum()) or ch in _ATEXT_SPECIALS
    # RFC 6532 §3.2: UTF8-non-ascii is allowed in atext; we refuse controls, separators,
    # unpaired surrogates and unassigned code points, which no sane mailbox name holds.
    return unicodedata.category(ch) not in {"Cc", "Cs", "Cn", "Zs", "Zl", "Zp"}


def is_dot_atom(local: str) -> bool:
    """RFC 5322 §3.2.3 dot-atom-text (with RFC 6532 UTF-8): `a.b`, never `.a`, `a.`, `a..b`."""
    if not local:
        return False
    return all(atom and all(_is_atext(ch) for ch in atom) for atom in local.split("."))


def quote_local(local: str) -> str:
    """The local part as it is written in an address: a dot-atom as is, else a quoted string."""
    if is_dot_atom(local):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _parse_quoted(text: str) -> tuple[str, str]:
    """Parse a leading RFC 5321 §4.1.2 Quoted-string; return (content, rest after the quote)."""
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), text[i + 1 :]
        if ch == "\\":
            # RFC 5321 §4.1.2 quoted-pairSMTP = %d92 %d32-126
            if i + 1 >= len(text) or not (32 <= ord(text[i + 1]) <= 126):
                raise AddressError("bad backslash escape in quoted local part")
            out.append(text[i + 1])
            i += 2
            continue
        code = ord(ch)
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii (RFC 6531 §3.3)
        if code < 32 or code == 127 or (code > 127 and unicodedata.category(ch) in {"Cc", "Cs", "Cn"}):
            raise AddressError("control character in quoted local part")
        out.append(ch)
        i += 1
    raise AddressError("unterminated quoted local part")


def _check_local(local: str) -> None:
    if not local:
        raise AddressError("empty local part")
    if len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_OCTETS:
        raise AddressError(f"local part longer than {MAX_LOCAL_OCTETS} octets")


def _normalize_literal(text: str) -> str:
    """RFC 5321 §4.1.3 address literal, normalised: `[192.0.2.1]`, `[IPv6:2001:db8::1]`."""
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError(f"bad address literal {text!r}") from None


def normalize_domain(text: str, *, allow_literal: bool = False) -> str:
    """A domain name, lower-cased, each label in IDNA A-label form; `AddressError` if malformed.

    `allow_literal=True` also accepts an address literal (`[192.0.2.1]`) and normalises it.
    """
    if not isinstance(text, str):
        raise AddressError("domain must be a string")
    if not text:
        raise AddressError("empty domain")
    if text.startswith("[") and text.endswith("]"):
        if not allow_literal:
            raise AddressError(f"address literal {text!r} is not allowed here")
        return _normalize_literal(text)
    if text.endswith(".") or text.endswith("\u3002"):
        raise AddressError(f"domain {text!r} ends with a dot")
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in text):
        raise AddressError(f"domain {text!r} contains a space or control character")
    if text.isascii():
        ascii_domain = text.lower()
        labels = ascii_domain.split(".")
        if all(labels) and not any(label.startswith("xn--") for label in labels):
            _check_ldh(ascii_domain, labels)  # the common case, without the idna tables
            return ascii_domain
    try:
        ascii_domain = idna.encode(text, uts46=True, transitional=False).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"bad domain {text!r}: {exc}") from None
    _check_ldh(ascii_domain, ascii_domain.split("."))
    return ascii_domain


def _check_ldh(domain: str, labels: list[str]) -> None:
    # RFC 5321 §4.1.2: sub-domain = Let-dig [Ldh-str]; RFC 5891 for the A-labels.
    if len(domain) > MAX_DOMAIN_OCTETS:
        raise AddressError(f"domain longer than {MAX_DOMAIN_OCTETS} octets")
    for label in labels:
        if not label:
            raise AddressError(f"domain {domain!r} has an empty label")
        if len(label) > MAX_LABEL_OCTETS:
            raise AddressError(f"domain label longer than {MAX_LABEL_OCTETS} octets in {domain!r}")
        if not set(label) <= _LDH:
            raise AddressError(f"domain {domain!r}: label {label!r} has a character other than a-z, 0-9, '-'")
        if label.startswith("-") or label.endswith("-"):
            raise AddressError(f"domain {domain!r}: label {label!r} starts or ends with '-'")
    if labels[-1].isdigit():
        raise AddressError(f"domain {domain!r} looks like an IP address; write it as [{domain}]")


def domain_to_unicode(domain: str) -> str:
    """The U-label form of a normalised domain, for display; the input if it cannot be decoded."""
    if "xn--" not in domain:
        return domain
    try:
        return str(idna.decode(domain))
    except (idna.IDNAError, UnicodeError):
        return domain


def parse_address(text: str, *, allow_literal: bool = False) -> Address:
    """Parse `local@domain` (RFC 5321 §4.1.2 Mailbox, RFC 6531 UTF-8); raise `AddressError`.

    The local part is a dot-atom or a quoted string; surrounding whitespace is ignored,
    angle brackets and comments are not part of an address and are refused.
    """
    if not isinstance(text, str):
        raise AddressError("address must be a string")
    text = text.strip(" \t\r\n")
    if not text:
        raise AddressError("empty address")
    if text.startswith('"'):
        local, rest = _parse_quoted(text)
        if not rest.startswith("@"):
            raise AddressError(f"expected '@' after the quoted local part in {text!r}")
        domain_text = rest[1:]
    else:
        local, at, domain_text = text.rpartition("@")
        if not at:
            raise AddressError(f"address {text!r} has no '@'")
        if local and not is_dot_atom(local):
            raise AddressError(f"bad local part {local!r}: quote it or remove the special characters")
    _check_local(local)
    if not domain_text:
        raise AddressError(f"address {text!r} has no domain")
    domain = normalize_domain(domain_text, allow_literal=allow_literal)
    address = Address(local, domain)
    if len(str(address).encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise AddressError(f"address longer than {MAX_ADDRESS_OCTETS} octets")
    return address


def split_tag(local: str, sep: str = "+") -> tuple[str, str | None]:
    """Split a sub-address: `user+tag` -> (`user`, `tag`); no delimiter -> (`local`, None).

    Like Postfix's `recipient_delimiter`: each character of `sep` is a delimiter, the
    first one found splits, and a local part that starts with a delimiter is not split
    (`+tag` stays whole). `user+` gives (`user`, ``).
    """
    if not sep:
        return local, None
    for i, ch in enumerate(local):
        if ch in sep:
            if i == 0:
                return local, None
            return local[:i], local[i + 1 :]
    return local, None
