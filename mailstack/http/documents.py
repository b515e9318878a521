"""What the HTTP service serves, without any I/O: client autoconfiguration and MTA-STS.

- ``endpoints(config)``: our client-facing services as clients should see them: IMAP,
  POP3 and submission, each with its public port (the first non-loopback TCP listener,
  else the first one) and socket type (``tls_listen`` = implicit TLS, "SSL";
  ``listen`` = "STARTTLS"), implicit TLS first (RFC 8314 §3: it is preferred).
- ``thunderbird_config(...)``: Thunderbird's ``config-v1.1.xml`` (the format of
  https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat): every
  ``incomingServer``/``outgoingServer`` with hostname, port, socketType, authentication
  (``password-cleartext``: always under TLS) and ``%EMAILADDRESS%`` as the user name.
- ``parse_autodiscover_request(body)`` / ``autodiscover_response(...)``: Outlook's POX
  Autodiscover ([MS-OXDSCLI] §2.2.3/§2.2.4): an ``Account`` of type ``email`` with one
  ``Protocol`` per type (IMAP, POP3, SMTP; the preferred endpoint of each), the login
  name being the full address. The request is parsed by ``defusedxml`` with DTDs,
  entity declarations and external references forbidden outright: a DOCTYPE in any
  encoding the parser understands (UTF-8, UTF-16, UTF-32, ...) is refused before any
  entity could be declared, so nothing is ever expanded or fetched.
- ``mta_sts_policy(...)``: the policy file of RFC 8461 §3.2 (CRLF lines).

ManageSieve is not in these documents: neither format has an element for it (Thunderbird
refuses an ``incomingServer`` type it does not know), so clients that manage Sieve scripts
(Thunderbird's Sieve add-on, KMail, Roundcube) find it by the ``_sieve._tcp`` SRV record
(RFC 5804 §1.8) that ``mailstack dns records`` prints, and port 4190.

Invariants: all text placed in XML goes through ElementTree (escaped); nothing here
consults the directory: whether a domain is ours is the server's question.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml
import defusedxml.ElementTree as SafeET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Endpoint",
    "endpoints",
    "thunderbird_config",
    "AutodiscoverError",
    "parse_autodiscover_request",
    "autodiscover_response",
    "autodiscover_error",
    "mta_sts_policy",
    "REQUEST_NS",
    "RESPONSE_NS",
    "OUTLOOK_NS",
]

REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

Protocol = Literal["imap", "pop3", "smtp"]
SocketType = Literal["SSL", "STARTTLS"]


@dataclass(frozen=True)
class Endpoint:
    protocol: Protocol
    hostname: str
    port: int
    socket_type: SocketType


def _public_port(addresses: Sequence[Any]) -> int | None:
    tcp = [a for a in addresses if a.kind == "tcp"]
    if not tcp:
        return None
    public = [a for a in tcp if not a.is_loopback]
    return int((public or tcp)[0].port)


def endpoints(config: Any, hostname: str | None = None) -> list[Endpoint]:
    """IMAP, POP3, then SMTP submission; implicit TLS before STARTTLS within each."""
    host = (hostname or config.hostname).rstrip(".").lower()
    out: list[Endpoint] = []
    for protocol, section in (("imap", config.imap), ("pop3", config.pop3), ("smtp", config.submission)):
        for addresses, socket_type in ((section.tls_listen, "SSL"), (section.listen, "STARTTLS")):
            port = _public_port(addresses)
            if port is not None:
                out.append(Endpoint(protocol, host, port, socket_type))  # type: ignore[arg-type]
    return out


def _xml(root: ET.Element) -> bytes:
    ET.indent(root, "  ")
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def thunderbird_config(domains: Sequence[str], provider_id: str, points: Sequence[Endpoint],
                       display_name: str | None = None) -> bytes:
    """``clientConfig`` version 1.1 for ``domains`` (the first is the one asked about)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=provider_id)
    for d in domains:
        _sub(provider, "domain", d)
    _sub(provider, "displayName", display_name or (domains[0] if domains else provider_id))
    _sub(provider, "displayShortName", (domains[0] if domains else provider_id).split(".")[0])
    for kind in ("incoming", "outgoing"):
        for p in points:
            if (p.protocol == "smtp") != (kind == "outgoing"):
                continue
            server = _sub(provider, f"{kind}Server", type=p.protocol)
            _sub(server, "hostname", p.hostname)
            _sub(server, "port", str(p.port))
            _sub(server, "socketType", p.socket_type)
            _sub(server, "authentication", "password-cleartext")
            _sub(server, "username", "%EMAILADDRESS%")
    return _xml(root)


class AutodiscoverError(ValueError):
    """A request body that is not a POX Autodiscover request."""


@dataclass(frozen=True)
class AutodiscoverRequest:
    email: str
    schema: str


def parse_autodiscover_request(body: bytes) -> AutodiscoverRequest:
    """``EMailAddress`` and ``AcceptableResponseSchema`` of [MS-OXDSCLI] §2.2.3."""
    # A byte search for "<!DOCTYPE" misses it in UTF-16/UTF-32: let the parser refuse
    # the DTD itself, whatever the encoding (billion laughs, XXE).
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException:
        raise AutodiscoverError("DTDs and entities are not accepted") from None
    except ET.ParseError as e:
        raise AutodiscoverError(f"not XML: {e}") from None
    except (ValueError, LookupError) as e:  # an encoding expat cannot read (UTF-16LE without BOM, x-foo)
        raise AutodiscoverError(f"not XML: {e}") from None

    def local(tag: str) -> str:
        return tag.rpartition("}")[2]

    if local(root.tag) != "Autodiscover":
        raise AutodiscoverError("not an Autodiscover request")
    email = schema = ""
    for el in root.iter():
        if local(el.tag) == "EMailAddress":
            email = (el.text or "").strip()
        elif local(el.tag) == "AcceptableResponseSchema":
            schema = (el.text or "").strip()
    if not email:
        raise AutodiscoverError("no EMailAddress")
    return AutodiscoverRequest(email, schema)


def autodiscover_response(email: str, points: Sequence[Endpoint], display_name: str | None = None) -> bytes:
    """The POX response ([MS-OXDSCLI] §2.2.4) with one Protocol per type."""
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = _sub(root, "Response", xmlns=OUTLOOK_NS)
    if display_name:
        user = _sub(response, "User")
        _sub(user, "DisplayName", display_name)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    seen: set[str] = set()
    for p in points:
        if p.protocol in seen:
            continue  # Outlook takes one Protocol per Type: the preferred (implicit TLS) one
        seen.add(p.protocol)
        proto = _sub(account, "Protocol")
        _sub(proto, "Type", p.protocol.upper())
        _sub(proto, "Server", p.hostname)
        _sub(proto, "Port", str(p.port))
        _sub(proto, "DomainRequired", "off")
        _sub(proto, "LoginName", email)
        _sub(proto, "SPA", "off")
        _sub(proto, "SSL", "on")
        _sub(proto, "Encryption", "SSL" if p.socket_type == "SSL" else "TLS")
        _sub(proto, "AuthRequired", "on")
        if p.protocol == "smtp":
            _sub(proto, "UsePOPAuth", "off")
            _sub(proto, "SMTPLast", "off")
    return _xml(root)


def autodiscover_error(code: int, message: str) -> bytes:
    """An ``Error`` response ([MS-OXDSCLI] §2.2.4.1.1.1), e.g. 600 Invalid Request."""
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = _sub(root, "Response")
    error = _sub(response, "Error", Id="0", Time="00:00:00.0000000")
    _sub(error, "ErrorCode", str(code))
    _sub(error, "Message", message)
    _sub(error, "DebugData", "")
    return _xml(root)


def mta_sts_policy(mode: str, mx_hosts: Sequence[str], max_age: int) -> bytes:
    """RFC 8461 §3.2: ``version``, ``mode``, one ``mx`` per host, ``max_age``."""
    lines = ["version: STSv1", f"mode: {mode}"]
    lines.extend(f"mx: {h.rstrip('.').lower()}" for h in mx_hosts)
    lines.append(f"max_age: {max_age}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
