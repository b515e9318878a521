"""ENVELOPE addresses (RFC 3501 §7.4.2): the RFC 5322 address-list parser of ``mail.addrlist``.

The parser lives in ``mailstack.mail.addrlist`` because the MX needs it too (the From:
domains that DKIM/DMARC align on); this module keeps the IMAP-side name.
"""

from __future__ import annotations

from mailstack.mail.addrlist import MAX_ADDRESSES, MISSING_DOMAIN, MISSING_MAILBOX, Address, parse_address_list

__all__ = ["Address", "MAX_ADDRESSES", "MISSING_DOMAIN", "MISSING_MAILBOX", "parse_address_list"]
