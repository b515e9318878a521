"""Who wrote this message: the one reading of the From: (and Sender:) header fields.

Every place that decides "who is this From:" uses this module, so that they cannot
disagree: submission's ownership check (``author``), DMARC's RFC5322.From domains on the
MX (``from_domains``) and the DKIM signing domain (``signing_domain``).

How a header section is read: by ``mail.headers.header_fields``, the one reader of
header fields (the empty line ends the section, folded lines are unfolded, ``From :``
with white space before the colon IS a From field, RFC 5322 §4.5.3). ``author`` reads
strictly: any malformed header line refuses the message (``HeaderError``), so a client
cannot hide a field from us that a mail reader or DKIM verifier might still see.

How a From: value is read (``parse_mailboxes``): Python's RFC 5322 parser
(``email.headerregistry`` via ``email.policy.default``), which understands comments,
quoted strings and local parts, encoded words in display names (RFC 2047: only the
display name is decoded, never the address, so ``=?utf-8?q?alice@example.test?=
<mallory@x>`` is mallory), route addresses and groups. Strictly, a value with any
defect the parser reports does not parse; a group (``team: a@x;``) is refused because
From: is a mailbox-list (§3.6.2); every address is then normalised by
``mail.address.parse_address`` (IDNA A-label domain, case-insensitive key).

Rules of ``author`` (the submission check, RFC 5322 §3.6 and §3.6.2): exactly one
From: field, holding at least one mailbox; at most one Sender: field, holding exactly
one mailbox. ``signing_domain`` is the From: domain only when ``author`` holds and the
From: has exactly one mailbox (RFC 6376 / RFC 7489 alignment is about that one domain).
``from_domains`` (DMARC on the MX, RFC 7489 §6.6.1) is lenient: every From: field is
read, defects and all, and each domain found is returned, so a second From: or a
broken one cannot dodge the policy of a domain it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import AddressHeader, BaseHeader
from email.policy import default as _policy

from mailstack.mail import headers
from mailstack.mail.addrlist import MISSING_DOMAIN, parse_address_list
from mailstack.mail.address import Address, AddressError, parse_address, quote_local
from mailstack.mail.headers import header_fields

__all__ = [
    "Author",
    "NO_FROM",
    "AuthorError",
    "HeaderError",
    "Mailbox",
    "author",
    "from_domains",
    "parse_mailboxes",
    "signing_domain",
]

NO_FROM = "message has no From: header"

# Python's RFC 5322 parser is quadratic in places (a 50 KB ``a.....@b`` took 12 s, 20,000
# addresses 5 s) and recursive in others: it only ever sees a value up to this long. A
# real From: is under 1 KB (RFC 5322 §2.1.1 asks for lines of at most 78 characters);
# 4 KB costs the parser < 0.1 s on the worst shapes measured. Longer values are refused
# by the strict reading and read only by the linear ``mail.addrlist`` by the lenient one.
MAX_PARSED_VALUE = 4096


class AuthorError(ValueError):
    """The author fields cannot be used; ``str()`` says why in one line (for a reply)."""


class HeaderError(AuthorError):
    """A header section the strict reading refuses (``mail.headers.HeaderError``)."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One mailbox of From:/Sender:: the decoded display name and the normalised address."""

    display_name: str
    address: Address

    @property
    def domain(self) -> str:
        return self.address.domain

    def __str__(self) -> str:
        return str(self.address)


@dataclass(frozen=True, slots=True)
class Author:
    """The From: mailboxes (at least one) and the Sender: mailbox, when there is one."""

    mailboxes: tuple[Mailbox, ...]
    sender: Mailbox | None = None

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.domain for m in self.mailboxes))


def _normalise(local: str, domain: str) -> Address:
    if not local or not domain:
        raise AddressError("empty local part or domain")
    return parse_address(f"{quote_local(local)}@{domain}")


def parse_mailboxes(value: str, field: str = "From") -> tuple[Mailbox, ...]:
    """A mailbox-list value (RFC 5322 §3.4) -> its mailboxes; ``AuthorError`` when it
    does not parse cleanly, holds a group, holds nothing, or an address is not one
    (``mail.address.parse_address``: no address literals, IDNA-valid domains)."""
    if "\r" in value or "\n" in value or "\0" in value:
        raise AuthorError(f"{field}: header holds control characters")
    if len(value) > MAX_PARSED_VALUE:
        raise AuthorError(f"{field}: header is too long")
    try:
        header = _policy.header_factory(field, value.strip())
    except Exception:  # the parser must never let an exception reach a client
        raise AuthorError(f"{field}: header does not parse") from None
    assert isinstance(header, AddressHeader) and isinstance(header, BaseHeader)
    if header.defects:
        raise AuthorError(f"{field}: header does not parse")
    out: list[Mailbox] = []
    for group in header.groups:
        if group.display_name is not None:  # RFC 5322 §3.6.2: From is a mailbox-list
            raise AuthorError(f"{field}: group syntax is not allowed")
        for a in group.addresses:
            try:
                out.append(Mailbox(a.display_name, _normalise(a.username, a.domain)))
            except AddressError:
                raise AuthorError(f"{field}: header holds an invalid address") from None
    if not out:
        raise AuthorError(f"{field}: header holds no address")
    return tuple(out)


def author(message: bytes) -> Author:
    """The author of ``message``, read strictly (see module docstring); ``AuthorError``."""
    try:
        fields = header_fields(message, strict=True)
    except headers.HeaderError as e:
        raise HeaderError(str(e)) from None
    froms = [f for f in fields if f.key == "from"]
    senders = [f for f in fields if f.key == "sender"]
    if not froms:
        raise AuthorError(NO_FROM)
    if len(froms) > 1:  # RFC 5322 §3.6: exactly one From:
        raise AuthorError("message has several From: headers")
    if len(senders) > 1:  # RFC 5322 §3.6: at most one Sender:
        raise AuthorError("message has several Sender: headers")
    mailboxes = parse_mailboxes(froms[0].value, "From")
    sender = None
    if senders:
        found = parse_mailboxes(senders[0].value, "Sender")
        if len(found) != 1:  # RFC 5322 §3.6.2: Sender is one mailbox
            raise AuthorError("Sender: must hold exactly one address")
        sender = found[0]
    return Author(mailboxes, sender)


def signing_domain(message: bytes) -> str | None:
    """The domain to DKIM-sign for: the single From: mailbox's, or None."""
    try:
        a = author(message)
    except AuthorError:
        return None
    return a.mailboxes[0].domain if len(a.mailboxes) == 1 else None


def from_domains(message: bytes) -> list[str]:
    """The distinct domains shown by every From: field, in order, lower-case A-labels.

    Lenient, for DMARC on mail from elsewhere: malformed header lines are skipped and a
    defective value still yields the domains found in it. Every value is read by the
    linear ``mail.addrlist`` (which never raises, on any input, of any length) and, when
    it is short enough to be cheap (``MAX_PARSED_VALUE``), also by the RFC 5322 parser, so
    no reading of a broken field can hide a domain from the policy check. A domain that
    is not a valid name is left out.
    """
    out: dict[str, None] = {}
    for f in header_fields(message, strict=False):
        if f.key != "from":
            continue
        value = f.value.replace("\0", "")
        candidates: list[str] = []
        if len(value) <= MAX_PARSED_VALUE:
            try:
                header = _policy.header_factory("From", value.strip())
                assert isinstance(header, AddressHeader) and isinstance(header, BaseHeader)
                candidates.extend(a.domain for a in header.addresses if a.domain)
            except Exception:  # defects and all: addrlist reads it below
                pass
        candidates.extend(a.host for a in parse_address_list(value)
                          if a.host is not None and a.host != MISSING_DOMAIN)
        for dom in candidates:
            try:
                out[parse_address(f"x@{dom.strip().rstrip('.')}").domain] = None
            except AddressError:
                continue
    return list(out)
