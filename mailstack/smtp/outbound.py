"""The outbound SMTP client: MX selection and delivery to a remote MX or a smarthost.

``deliver_domain(route, jobs)`` delivers one or more queued messages whose recipients
share a destination (one domain, or everything when a smarthost is configured) over as
few connections as it can: one connection, one transaction per message carrying all of
its recipients of that domain (RFC 5321 §3.3), ``RSET`` between messages (pipelined
with the next ``MAIL``/``RCPT`` group when the server offers PIPELINING, RFC 2920 §3.1).

Session reuse (Postfix's connection cache): when ``Route.sessions`` is set, a session
that ended cleanly is parked there (``smtp.sessioncache``) instead of closed, keyed by
MX host, address, port and the TLS requirement it was opened under (``_session_key``),
and the next delivery to that key starts with ``RSET`` on it instead of a new
connection, TLS handshake and EHLO. A session is not parked after ``Route.reuse_limit``
messages or ``Route.reuse_time`` seconds, after a ``421`` (RFC 5321 §3.8: the server is
closing), nor after any failure of the connection; a parked session that turns out
dead (its ``RSET``/``MAIL`` fails before the message went out) is dropped and the
message is tried once more on a fresh connection to the same address, so a drop can
neither lose nor repeat a message.

Routing (RFC 5321 §5.1): MX records in preference order, equal preferences shuffled; no
MX record -> the domain's own A/AAAA ("implicit MX"); a null MX (RFC 7505 §3) or a domain
that does not exist fails at once and permanently (``5.1.10`` / ``5.1.2``); a DNS failure
is temporary. Each MX host's addresses are tried in turn until one answers; a server
that fails before the transaction (connection refused, 4xx greeting, 4xx MAIL) passes
the message on to the next address, as RFC 5321 §5.1 asks.

TLS: opportunistic STARTTLS (RFC 3207, RFC 7435) with the unverifying client context
from ``mailstack.net``; when the handshake fails the same host is retried in plaintext
once (as Postfix does at ``smtp_tls_security_level = may``) -- but only where no policy
asks for TLS. A DNSSEC-validated TLSA RRset for ``_25._tcp.<mx>`` (DANE, RFC 7672) or an
MTA-STS policy in ``enforce`` mode (RFC 8461) makes TLS mandatory and authenticated:
DANE checks the certificate against the TLSA records, MTA-STS checks it against
``[queue] tls_ca_file`` and the MX name, and only MX hosts the policy lists are used.
What to do is decided in ``mailstack.smtp.tlspolicy``; each outcome carries the word for
the mail log (``tls=none|opportunistic|mta-sts|dane``). A job marked ``tls_optional``
(the sender wrote ``TLS-Required: No``, RFC 8689 §5) goes out as if neither existed:
opportunistic TLS, plaintext allowed. A smarthost (``[relay]``)
is different: it gets credentials, so TLS (STARTTLS or implicit) is required there and
its certificate is verified unless ``[relay] verify_tls = false``.

Invariants:
- per-recipient results: every recipient of every job ends with exactly one outcome
  (sent, temporary, permanent) and the reply that caused it; nothing raises out of
  ``deliver_domain`` for a network or protocol problem;
- data goes out dot-stuffed (RFC 5321 §4.5.2) with CRLF line ends, ending in CRLF.CRLF;
- a message that needs SMTPUTF8 is not sent to a server that lacks it (permanent
  ``5.6.7``, RFC 6531 §3.4); one bigger than an advertised SIZE fails ``5.3.4``
  (RFC 1870 §6);
- timeouts follow RFC 5321 §4.5.3.2 (greeting and commands 5 min, DATA end 10 min),
  scaled by ``[queue] command_timeout``.
"""

from __future__ import annotations

import _ssl  # ENCODING_DER, for the certificates of an unverified chain (Connection.peer_chain)
import asyncio
import base64
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailstack.dns import DNSError, DNSTemporaryError, NXDomain, Resolver, TLSAResolver, TLSARecord
from mailstack.mail.dsnrequest import DSNRequest, dsn_mail_params, dsn_rcpt_params
from mailstack.replies import Reply
from mailstack.smtp.mtasts import StsCache
from mailstack.smtp.sessioncache import SessionCache
from mailstack.smtp.tlspolicy import Requirement, StsPolicy, dane_ta_matches, decide, tlsa_matches, usable_tlsa
from mailstack.smtp.tlsrpt import Attempt, TLSResultLog

__all__ = [
    "Outcome",
    "RecipientOutcome",
    "Job",
    "Route",
    "RelaySettings",
    "deliver_domain",
    "dot_stuff",
]

log = logging.getLogger(__name__)


class Outcome(Enum):
    SENT = "sent"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class RecipientOutcome:
    """One recipient's result: the remote server's reply, or one we made up (no
    ``remote_mta``, or the host that failed before answering for the recipient)."""

    recipient: str
    reply: Reply
    remote_mta: str | None = None
    dsn_passed: bool = False  # the next hop offers DSN and got our NOTIFY/ORCPT (RFC 3461 §6.2.2)
    tls: str = ""  # none | opportunistic | mta-sts | dane ("" = no connection got that far)

    @property
    def outcome(self) -> Outcome:
        if self.reply.is_ok:
            return Outcome.SENT
        return Outcome.TEMPORARY if self.reply.is_temporary else Outcome.PERMANENT


@dataclass(frozen=True)
class Job:
    """One message to send to some of its recipients (all of one destination)."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    data: bytes  # CRLF line ends
    smtputf8: bool = False
    dsn: DSNRequest | None = None  # the sender's RFC 3461 request, passed on where DSN is offered
    requiretls: bool = False  # RFC 8689: only over authenticated TLS to a server that offers REQUIRETLS
    tls_optional: bool = False  # RFC 8689 §5 "TLS-Required: No": MTA-STS/DANE ignored, opportunistic TLS


@dataclass(frozen=True)
class RelaySettings:
    host: str
    port: int = 587
    tls: str = "starttls"  # "starttls" | "implicit" | "none"
    username: str = ""
    password: str = ""
    verify_tls: bool = True


@dataclass(frozen=True)
class Route:
    """How to reach one destination."""

    helo: str
    resolver: Resolver
    port: int = 25
    client_tls: ssl.SSLContext | None = None
    relay: RelaySettings | None = None
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    sts: StsCache | None = None  # MTA-STS policies (RFC 8461); None = not looked up
    verify_tls: ssl.SSLContext | None = None  # PKIX + host name check, for MTA-STS MX hosts
    tlsa: TLSAResolver | None = None  # DANE TLSA lookups (RFC 7672); None = no DANE
    tls_results: TLSResultLog | None = None  # TLS-RPT (RFC 8460) results; None = not recorded
    sessions: SessionCache[Connection] | None = None  # idle sessions kept for reuse; None = QUIT after each batch
    reuse_limit: int = 100  # messages per session, then QUIT and a new connection (0 = no limit)
    reuse_time: float = 300.0  # seconds a session may be used, then QUIT (Postfix smtp_connection_reuse_time_limit)


class _Fail(Exception):
    """This server cannot take the message now: try the next address."""

    def __init__(self, reply: Reply, next_host: bool = True, tls: str = "") -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.next_host = next_host
        self.tls = tls  # the policy that refused the server (mta-sts, dane), for the mail log


class _TLSFailed(Exception):
    pass


def _local(code: int, text: str) -> Reply:
    """A reply we make up: ``text`` starts with its enhanced code."""
    return Reply.parse(code, text)


def dot_stuff(data: bytes) -> bytes:
    """CRLF line ends, leading dots doubled, ends in CRLF (RFC 5321 §4.5.2)."""
    data = re.sub(rb"\r?\n", b"\r\n", data)
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _needs_8bit(data: bytes) -> bool:
    return not data.isascii()  # in C: a Python loop over the bytes cost ~0.7 ms per message


# ---------------------------------------------------------------------------
# one connection


class Connection:
    """A minimal, strict SMTP client session over asyncio streams."""

    def __init__(self, host: str, address: str, port: int, route: Route) -> None:
        self.host = host  # the MX name (for logs and Remote-MTA)
        self.address = address
        self.port = port
        self.route = route
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.tls_mode = "none"  # the mail log's tls= word
        self.transactions = 0  # MAIL transactions begun on this session
        self.opened_at = time.monotonic()
        self.closing = False  # the server said 421 (RFC 5321 §3.8) or the stream is out of step
        self.cache_key: Hashable | None = None  # set by _connect when sessions are cached

    def idle_usable(self) -> bool:
        """Open, not at EOF, nothing unread (an idle server may have sent 421 and closed)."""
        if self.writer is None or self.reader is None or self.closing or self.writer.is_closing():
            return False
        if self.reader.at_eof() or self.reader.exception() is not None:
            return False
        # StreamReader has no public "bytes buffered"; anything there is unasked-for
        return not getattr(self.reader, "_buffer", b"")

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None

    @property
    def remote_mta(self) -> str:
        return f"{self.host} [{self.address}]:{self.port}" if self.port != 25 else f"{self.host} [{self.address}]"

    async def _read_lines(self, timeout: float | None = None) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and the text of each line."""
        assert self.reader is not None
        lines: list[str] = []
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), timeout or self.route.command_timeout)
            except asyncio.TimeoutError:
                raise _Fail(_local(451, f"4.4.2 timeout waiting for {self.host}")) from None
            except (ConnectionError, OSError, asyncio.LimitOverrunError, ValueError) as e:
                raise _Fail(_local(451, f"4.4.2 connection to {self.host} lost: {e}")) from None
            if not raw:
                raise _Fail(_local(451, f"4.4.2 {self.host} closed the connection"))
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            m = re.match(r"^([2-5]\d\d)([ -]?)(.*)$", line)
            if not m:
                raise _Fail(_local(451, f"4.5.0 {self.host} sent a malformed reply"))
            lines.append(m.group(3))
            if m.group(2) != "-":
                if m.group(1) == "421":  # RFC 5321 §3.8: the server is closing the channel
                    self.closing = True
                return int(m.group(1)), lines
            if len(lines) > 200:
                raise _Fail(_local(451, f"4.5.0 {self.host} sent too long a reply"))

    async def _read_reply(self, timeout: float | None = None) -> Reply:
        code, lines = await self._read_lines(timeout)
        return Reply.parse(code, " ".join(t.strip() for t in lines).strip()[:1000])

    async def _send(self, line: str) -> None:
        assert self.writer is not None
        try:
            self.writer.write(line.encode("utf-8") + b"\r\n")
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise _Fail(_local(451, f"4.4.2 connection to {self.host} lost: {e}")) from None

    async def command(self, line: str, timeout: float | None = None) -> Reply:
        await self._send(line)
        return await self._read_reply(timeout)

    async def open(self, *, implicit_tls: ssl.SSLContext | None = None) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.address, self.port, ssl=implicit_tls,
                                        server_hostname=self.host if implicit_tls else None),
                self.route.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise _Fail(_local(451, f"4.4.1 connect to {self.host}[{self.address}]:{self.port}: timed out")) from None
        except ssl.SSLError as e:
            raise _Fail(_local(451, f"4.7.5 TLS with {self.host}: {e.reason or e}")) from None
        except OSError as e:
            reason = (os.strerror(e.errno) if e.errno else str(e)).lower()
            raise _Fail(_local(451, f"4.4.1 connect to {self.host}[{self.address}]:{self.port}: {reason}")) from None
        self.tls = implicit_tls is not None
        greeting = await self._read_reply()
        if greeting.code != 220:  # RFC 5321 §3.1: 554 = "no service here"
            await self.close()
            raise _Fail(greeting)

    async def ehlo_ext(self) -> None:
        """EHLO and parse the extension keywords (RFC 5321 §4.1.1.1); HELO if EHLO is refused."""
        await self._send(f"EHLO {self.route.helo}")
        code, lines = await self._read_lines()
        if code == 250:
            exts: dict[str, str] = {}
            for text in lines[1:]:
                kw, _, params = text.strip().partition(" ")
                exts[kw.upper()] = params
            self.extensions = exts
            return
        if 500 <= code < 600:  # RFC 5321 §3.2: fall back to HELO
            reply = await self.command(f"HELO {self.route.helo}")
            if reply.code == 250:
                self.extensions = {}
                return
            raise _Fail(reply)
        raise _Fail(Reply.parse(code, " ".join(lines)))

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str | None) -> None:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise _TLSFailed(str(reply))
        assert self.writer is not None
        try:
            await asyncio.wait_for(self.writer.start_tls(ctx, server_hostname=server_hostname),
                                   self.route.connect_timeout)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as e:
            raise _TLSFailed(str(e) or type(e).__name__) from None
        self.tls = True
        self.tls_mode = "opportunistic"
        await self.ehlo_ext()  # RFC 3207 §4.2: forget what was said before TLS

    def peer_certificate(self) -> tuple[bytes, bytes] | None:
        """The server's leaf certificate and its SubjectPublicKeyInfo, both DER."""
        if self.writer is None:
            return None
        obj = self.writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        if not der:
            return None
        try:
            spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        except ValueError:
            return None
        return der, spki

    def peer_chain(self) -> list[bytes]:
        """The chain the server presented, leaf first, DER, unverified (for DANE-TA,
        RFC 7672 §3.1.2). Python 3.13 has ``get_unverified_chain()``; 3.10-3.12 only
        the same method on the private ``_sslobj``; [] when neither exists."""
        obj = self.writer.get_extra_info("ssl_object") if self.writer is not None else None
        get = getattr(obj, "get_unverified_chain", None) or getattr(getattr(obj, "_sslobj", None),
                                                                    "get_unverified_chain", None)
        if get is None:
            return []
        return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in get() or []]

    async def auth(self, username: str, password: str) -> None:
        mechs = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechs or not mechs:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechs:
            reply = await self.command("AUTH LOGIN")
            if reply.code == 334:
                reply = await self.command(base64.b64encode(username.encode()).decode())
            if reply.code == 334:
                reply = await self.command(base64.b64encode(password.encode()).decode())
        else:
            raise _Fail(_local(451, f"4.7.0 {self.host} offers no usable AUTH mechanism"), next_host=False)
        if reply.code != 235:
            # a refused login is our configuration problem: keep the mail queued
            raise _Fail(_local(451, f"4.7.0 relay {self.host} refused our login: {reply}"), next_host=False)

    async def transaction(self, job: Job, recipients: Sequence[str], *, reset: bool = False) -> list[RecipientOutcome]:
        """[RSET,] MAIL, RCPT..., DATA for one message; per-recipient outcomes.

        ``reset``: this session carried a transaction before, so it starts with ``RSET``
        (RFC 5321 §4.1.1.5), in the same PIPELINING group as MAIL and RCPT when offered
        (RFC 2920 §3.1). Raises _Fail when the server refused the whole transaction at
        RSET or MAIL (4xx: try the next host) or when the connection broke before the end
        of DATA.
        """
        self.transactions += 1
        params = []
        size = len(job.data)
        if "SIZE" in self.extensions:
            limit = self.extensions["SIZE"].strip()
            if limit.isdigit() and int(limit) and size > int(limit):
                r = _local(552, f"5.3.4 message too big for {self.host} (SIZE {limit})")
                return [RecipientOutcome(rc, r, self.remote_mta) for rc in recipients]
            params.append(f"SIZE={size}")
        if job.smtputf8:
            if "SMTPUTF8" not in self.extensions:
                r = _local(553, f"5.6.7 {self.host} does not support SMTPUTF8 (RFC 6531)")
                return [RecipientOutcome(rc, r, self.remote_mta) for rc in recipients]
            params.append("SMTPUTF8")
        if job.requiretls:
            if "REQUIRETLS" not in self.extensions:  # RFC 8689 §4.2.1 (5), §5
                r = _local(550, f"5.7.30 {self.host} does not support REQUIRETLS (RFC 8689)")
                return [RecipientOutcome(rc, r, self.remote_mta) for rc in recipients]
            params.append("REQUIRETLS")
        if "8BITMIME" in self.extensions and _needs_8bit(job.data):
            params.append("BODY=8BITMIME")
        dsn = job.dsn if "DSN" in self.extensions and job.dsn else None
        params += dsn_mail_params(dsn)
        mail = f"MAIL FROM:<{job.sender}>" + "".join(" " + p for p in params)
        pipelining = "PIPELINING" in self.extensions
        if reset and not pipelining:
            rset = await self.command("RSET")
            if rset.code != 250:
                raise _Fail(rset)
        if pipelining:  # RFC 2920 §3.1: [RSET,] MAIL and RCPTs in one group
            assert self.writer is not None
            lines = (["RSET"] if reset else []) + [mail] + [f"RCPT TO:<{r}>{dsn_rcpt_params(dsn, r)}" for r in recipients]
            try:
                self.writer.write("".join(line + "\r\n" for line in lines).encode("utf-8"))
                await self.writer.drain()
            except (ConnectionError, OSError) as e:
                raise _Fail(_local(451, f"4.4.2 connection to {self.host} lost: {e}")) from None
            if reset:
                rset = await self._read_reply()
                if rset.code != 250:  # the replies to the rest of the group are not read: end the session
                    self.closing = True
                    raise _Fail(rset)
            mail_reply = await self._read_reply()
            rcpt_replies = [await self._read_reply() for _ in recipients]
        else:
            mail_reply = await self.command(mail)
            rcpt_replies = []
            if mail_reply.code == 250:
                for rc in recipients:
                    rcpt_replies.append(await self.command(f"RCPT TO:<{rc}>{dsn_rcpt_params(dsn, rc)}"))
        if mail_reply.code != 250:
            if pipelining and not self.closing:
                await self.command("RSET")
            if mail_reply.code >= 500:
                return [RecipientOutcome(rc, mail_reply, self.remote_mta) for rc in recipients]
            raise _Fail(mail_reply)
        results: dict[str, RecipientOutcome] = {}
        accepted: list[str] = []
        for rc, reply in zip(recipients, rcpt_replies):
            if reply.code in (250, 251):
                accepted.append(rc)
            else:
                results[rc] = RecipientOutcome(rc, reply, self.remote_mta)
        if not accepted:
            await self.command("RSET")
            return [results[rc] for rc in recipients]
        reply = await self.command("DATA")
        if reply.code != 354:
            for rc in accepted:
                results[rc] = RecipientOutcome(rc, reply, self.remote_mta)
            return [results[rc] for rc in recipients]
        assert self.writer is not None
        try:
            self.writer.write(dot_stuff(job.data) + b".\r\n")
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise _Fail(_local(451, f"4.4.2 connection to {self.host} lost during DATA: {e}"), next_host=False) from None
        try:
            # RFC 5321 §4.5.3.2.6: wait 10 minutes for the final reply
            final = await self._read_reply(timeout=max(self.route.command_timeout * 2, 1.0))
        except _Fail as f:
            raise _Fail(f.reply, next_host=False) from None
        for rc in accepted:
            results[rc] = RecipientOutcome(rc, final, self.remote_mta, dsn_passed=dsn is not None)
        return [results[rc] for rc in recipients]

    async def reset(self) -> bool:
        try:
            return (await self.command("RSET")).code == 250
        except _Fail:
            return False

    async def quit(self) -> None:
        if self.writer is None:
            return
        try:
            await asyncio.wait_for(self.command("QUIT"), 5.0)
        except (_Fail, asyncio.TimeoutError):
            pass
        await self.close()

    async def close(self) -> None:
        if self.writer is None:
            return
        w, self.writer = self.writer, None
        try:
            w.close()
            await asyncio.wait_for(w.wait_closed(), 2.0)
        except (OSError, ConnectionError, asyncio.TimeoutError, ssl.SSLError):
            pass


# ---------------------------------------------------------------------------
# routing


@dataclass
class _Target:
    host: str
    addresses: list[str] = field(default_factory=list)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


async def _targets(domain: str, route: Route) -> list[_Target] | Reply:
    """The hosts to try, in order, or the reply that ends it (null MX, NXDOMAIN, DNS down)."""
    if route.relay is not None:
        host = route.relay.host
        return [_Target(host, [host])]  # resolved by the OS resolver at connect time
    if domain.startswith("[") and domain.endswith("]"):  # address literal (RFC 5321 §4.1.3)
        lit = domain[1:-1]
        lit = lit[5:] if lit.lower().startswith("ipv6:") else lit
        return [_Target(domain, [lit])] if _is_ip(lit) else _local(550, "5.1.2 bad address literal")
    try:
        mx = await route.resolver.mx(domain)
    except NXDomain:
        return _local(550, f"5.1.2 domain {domain} does not exist (DNS NXDOMAIN)")
    except DNSError as e:
        return _local(451, f"4.4.3 DNS lookup of MX for {domain} failed: {e}")
    if mx.null_mx:  # RFC 7505 §3
        return _local(556, f"5.1.10 domain {domain} does not accept mail (null MX, RFC 7505)")
    targets: list[_Target] = []
    temp_error: str | None = None
    for rec in mx.records:
        try:
            addrs = [rec.host] if _is_ip(rec.host) else await route.resolver.addresses(rec.host)
        except NXDomain:
            addrs = []
        except DNSTemporaryError as e:
            temp_error = str(e)
            addrs = []
        if addrs:
            targets.append(_Target(rec.host, addrs))
    if not targets:
        if temp_error:
            return _local(451, f"4.4.3 cannot resolve the MX hosts of {domain}: {temp_error}")
        if mx.implicit:
            return _local(550, f"5.1.2 domain {domain} has no MX and no address record")
        return _local(451, f"4.4.4 no address for any MX host of {domain}")  # may be fixed soon
    return targets


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _requirement(target: _Target, route: Route, policy: StsPolicy | None,
                       domain: str = "") -> tuple[Requirement, list[TLSARecord], list[TLSARecord]]:
    """What this MX host asks for: DANE (validated TLSA records) first, then MTA-STS."""
    if route.tlsa is not None and not _is_ip(target.host):
        try:
            answer = await route.tlsa.tlsa(f"_{route.port}._tcp.{target.host}")  # RFC 7672 §2.2.1
        except DNSError as e:
            if route.tls_results is not None and domain and isinstance(e, DNSTemporaryError):
                # RFC 8460 §4.3.2.1: our validating resolver gave no valid answer
                route.tls_results.record(Attempt(domain, "tlsa", (), target.host, "", "dnssec-invalid", str(e)))
            # RFC 7672 §2.2: a failed TLSA lookup for a *secure* MX host (its address records
            # DNSSEC-validated) may be an attacker hiding the records: that host is skipped,
            # as Postfix does. For a host not known secure it counts as no TLSA (unsigned
            # zones whose servers fail unknown types are common).
            if isinstance(e, DNSTemporaryError) and await route.tlsa.address_secure(target.host):
                log.info("outbound: TLSA lookup for secure MX %s failed (%s): host skipped", target.host, e)
                raise _Fail(_local(451, f"4.7.5 DANE: TLSA lookup for {target.host} failed ({e})"),
                            tls="dane") from None
            log.info("outbound: TLSA lookup for %s failed (%s); no DANE", target.host, e)
        else:
            if answer.secure and answer.records:
                usable = usable_tlsa(answer.records)
                return (Requirement.DANE if usable else Requirement.DANE_UNAUTHENTICATED), usable, list(answer.records)
    if policy is not None and policy.mode == "enforce":
        return Requirement.STS_ENFORCE, [], []
    if policy is not None and policy.mode == "testing":
        return Requirement.STS_TESTING, [], []
    return Requirement.NONE, [], []


def _result_type(req: Requirement, offered: bool, tls_ok: bool, verified: bool, allowed: bool, error: str) -> str:
    """The RFC 8460 §4.3 result-type of one attempt ("" = success)."""
    dane = req in (Requirement.DANE, Requirement.DANE_UNAUTHENTICATED)
    if not dane and not allowed:
        return "validation-failure"  # MX not in the policy
    if not offered:
        return "starttls-not-supported"
    if dane and req is Requirement.DANE_UNAUTHENTICATED:
        return "tlsa-invalid"  # RFC 8460 §4.3.2.1: a validated RRset, none of it usable
    if dane:
        return "" if tls_ok and verified else "validation-failure"
    if tls_ok and verified:
        return ""
    if "mismatch" in error:
        return "certificate-host-mismatch"
    if "expired" in error:
        return "certificate-expired"
    return "certificate-not-trusted" if "certificate" in error else "validation-failure"


def _record(route: Route, domain: str, target: _Target, address: str, req: Requirement,
            policy: StsPolicy | None, tlsa: Sequence[TLSARecord], result: str) -> None:
    if route.tls_results is None or req is Requirement.NONE:
        return
    if req in (Requirement.DANE, Requirement.DANE_UNAUTHENTICATED):
        strings = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in tlsa)
        route.tls_results.record(Attempt(domain, "tlsa", strings, target.host, address, result))
    elif policy is not None:
        strings = ("version: STSv1", f"mode: {policy.mode}", *(f"mx: {m}" for m in policy.mx),
                   f"max_age: {policy.max_age}")
        route.tls_results.record(Attempt(domain, "sts", strings, target.host, address, result))


_Needs = tuple[Requirement, list[TLSARecord], list[TLSARecord]]


async def _open_secure(target: _Target, address: str, route: Route, policy: StsPolicy | None,
                       requiretls: bool = False, domain: str = "", needs: _Needs | None = None) -> Connection:
    """A connection to a remote MX with the TLS its policy asks for, or ``_Fail``.

    ``requiretls`` (RFC 8689 §4.2.1): the MX host must be vouched for by DANE or by an
    MTA-STS policy that lists it (any mode but ``none``), and its certificate must pass
    that check; with neither, the message fails permanently (``5.7.10``), since retrying
    cannot help until the domain publishes one. ``needs``: ``_requirement``'s answer when
    the caller has it already (one TLSA lookup, one TLS-RPT record per connection).
    """
    req, tlsa, all_tlsa = needs if needs is not None else await _requirement(target, route, policy, domain)
    if requiretls:
        if req is Requirement.STS_TESTING and policy is not None and policy.allows(target.host):
            req = Requirement.STS_ENFORCE
        elif req is not Requirement.DANE and req is not Requirement.STS_ENFORCE:
            raise _Fail(_local(550, f"5.7.10 REQUIRETLS: no DNSSEC-validated TLSA record or MTA-STS policy "
                                    f"authenticates {target.host}"), tls="none")
    if req is Requirement.NONE:
        return await _open(target, address, route)
    port = route.port
    conn = Connection(target.host, address, port, route)
    await conn.open()
    await conn.ehlo_ext()
    offered = "STARTTLS" in conn.extensions
    tls_ok = verified = False
    error = ""
    if offered:
        dane = req in (Requirement.DANE, Requirement.DANE_UNAUTHENTICATED)
        ctx = (route.client_tls or _unverified()) if dane else (route.verify_tls or ssl.create_default_context())
        try:
            await conn.starttls(ctx, target.host)
            tls_ok = True
            if dane:
                cert = conn.peer_certificate()
                verified = cert is not None and (tlsa_matches(tlsa, *cert)  # DANE-EE, or DANE-TA:
                                                 or dane_ta_matches(tlsa, conn.peer_chain(), (target.host, domain)))
            else:
                verified = True  # the context checked the chain and the name (RFC 8461 §4.2)
        except _TLSFailed as e:
            error = str(e)
    host_allowed = policy is None or policy.allows(target.host)
    decision = decide(req, starttls_offered=offered, tls_ok=tls_ok, verified=verified, host=target.host,
                      host_allowed=host_allowed)
    _record(route, domain, target, address, req, policy, all_tlsa,
            _result_type(req, offered, tls_ok, verified, host_allowed, error))
    if not decision.deliver:
        await (conn.quit() if tls_ok else conn.close())
        raise _Fail(_local(451, decision.reason + (f" ({error})" if error else "")), tls=decision.tls)
    if decision.reason:  # MTA-STS testing: report, then deliver as without a policy
        log.warning("outbound: %s%s", decision.reason, f" ({error})" if error else "")
        if not tls_ok or not verified:
            if tls_ok:
                await conn.quit()
            else:
                await conn.close()
            return await _open(target, address, route)
    conn.tls_mode = decision.tls if req is not Requirement.STS_TESTING else "opportunistic"
    return conn


async def _open(target: _Target, address: str, route: Route) -> Connection:
    """Connect, EHLO, STARTTLS (and AUTH for a relay)."""
    relay = route.relay
    port = relay.port if relay else route.port
    if relay is not None:
        verify = ssl.create_default_context()
        if not relay.verify_tls:
            verify.check_hostname = False
            verify.verify_mode = ssl.CERT_NONE
        conn = Connection(target.host, address, port, route)
        await conn.open(implicit_tls=verify if relay.tls == "implicit" else None)
        await conn.ehlo_ext()
        if relay.tls == "starttls":
            if "STARTTLS" not in conn.extensions:
                await conn.quit()
                raise _Fail(_local(451, f"4.7.0 relay {target.host} does not offer STARTTLS"), next_host=False)
            try:
                await conn.starttls(verify, target.host)
            except _TLSFailed as e:
                await conn.close()
                raise _Fail(_local(451, f"4.7.5 STARTTLS with relay {target.host} failed: {e}"), next_host=False) from None
        if relay.username:
            await conn.auth(relay.username, relay.password)
        return conn
    conn = Connection(target.host, address, port, route)
    await conn.open()
    await conn.ehlo_ext()
    if route.client_tls is not None and "STARTTLS" in conn.extensions:
        try:
            await conn.starttls(route.client_tls, target.host)
        except _TLSFailed as e:
            log.info("outbound: STARTTLS with %s failed (%s); retrying in plaintext", conn.remote_mta, e)
            await conn.close()
            conn = Connection(target.host, address, port, route)
            await conn.open()
            await conn.ehlo_ext()
    return conn


def _session_key(target: _Target, address: str, route: Route, requiretls: bool,
                 tls_optional: bool = False, needs: _Needs | None = None) -> Hashable:
    """What a parked session must match to carry this delivery: the same server and the
    same TLS requirement (a session made under a weaker policy never serves a stronger one)."""
    if route.relay is not None:
        r = route.relay
        return ("relay", r.host, r.port, r.tls, r.username, requiretls)
    if tls_optional:  # RFC 8689 §5: opportunistic whatever the policy; never shared with policy mail
        return ("mx", target.host.lower(), address, route.port, "tls-optional", requiretls)
    assert needs is not None
    return ("mx", target.host.lower(), address, route.port, needs[0].value, requiretls)


async def _connect(target: _Target, address: str, route: Route, policy: StsPolicy | None,
                   requiretls: bool, domain: str, *, fresh: bool = False,
                   tls_optional: bool = False) -> Connection:
    """A parked session for this server and TLS requirement, else a new connection."""
    key: Hashable | None = None
    secure = route.relay is None and not tls_optional
    needs = await _requirement(target, route, policy, domain) if secure else None
    if route.sessions is not None:
        key = _session_key(target, address, route, requiretls, tls_optional, needs)
        if not fresh:
            cached = route.sessions.take(key)
            if cached is not None:
                return cached
    conn = (await _open(target, address, route) if route.relay is not None or tls_optional
            else await _open_secure(target, address, route, policy, requiretls, domain, needs))
    conn.cache_key = key
    return conn


async def _send(conn: Connection, pending: list[Job], results: dict[str, list[RecipientOutcome]],
                route: Route) -> _Fail | None:
    """Send jobs from ``pending`` over ``conn`` until none is left, the session is used up
    (``reuse_limit``, ``reuse_time``) or the server closes (421); the ``_Fail`` that
    ended it, if one did. Jobs sent (or lost mid-DATA) leave ``pending``."""
    while pending and not _used_up(conn, route):
        job = pending[0]
        try:
            outcome = await conn.transaction(job, job.recipients, reset=conn.transactions > 0)
        except _Fail as f:
            if not f.next_host:
                # broken mid-DATA: the message may or may not have arrived; retry later
                results[job.queue_id] = [RecipientOutcome(r, f.reply, conn.remote_mta) for r in job.recipients]
                pending.pop(0)
            return f
        results[job.queue_id] = [replace(ro, tls=conn.tls_mode) for ro in outcome]
        pending.pop(0)
    return None


def _used_up(conn: Connection, route: Route) -> bool:
    if conn.closing or conn.writer is None:
        return True
    if route.reuse_limit and conn.transactions >= route.reuse_limit:
        return True
    return conn.transactions > 0 and time.monotonic() - conn.opened_at >= route.reuse_time


async def _release(conn: Connection, route: Route) -> None:
    """Park a session that ended cleanly for the next message, or QUIT it."""
    if route.sessions is None or conn.cache_key is None or _used_up(conn, route) or not conn.idle_usable():
        await conn.quit()
        return
    route.sessions.put(conn.cache_key, conn)


async def deliver_domain(domain: str, jobs: Sequence[Job], route: Route) -> dict[str, list[RecipientOutcome]]:
    """Deliver ``jobs`` (recipients all at ``domain``); results per queue id, per recipient.

    Messages that ask for REQUIRETLS go over connections of their own (their TLS
    requirements are stricter), after the others."""
    results: dict[str, list[RecipientOutcome]] = {}
    plain = [j for j in jobs if not j.requiretls and not j.tls_optional]
    optional = [j for j in jobs if j.tls_optional and not j.requiretls]  # RFC 8689 §5: REQUIRETLS wins
    strict = [j for j in jobs if j.requiretls]
    if plain:
        results.update(await _deliver_group(domain, plain, route, requiretls=False))
    if optional:
        results.update(await _deliver_group(domain, optional, route, requiretls=False, tls_optional=True))
    if strict:
        results.update(await _deliver_group(domain, strict, route, requiretls=True))
    return results


async def _deliver_group(domain: str, jobs: Sequence[Job], route: Route, *, requiretls: bool,
                         tls_optional: bool = False) -> dict[str, list[RecipientOutcome]]:
    results: dict[str, list[RecipientOutcome]] = {}
    targets = await _targets(domain, route)
    if isinstance(targets, Reply):
        for job in jobs:
            results[job.queue_id] = [RecipientOutcome(r, targets) for r in job.recipients]
        return results
    relay = route.relay
    if requiretls and relay is not None and (relay.tls == "none" or not relay.verify_tls):  # RFC 8689 §4.2.1
        reply = _local(550, f"5.7.10 REQUIRETLS: relay {relay.host} is not used with verified TLS")
        return {job.queue_id: [RecipientOutcome(r, reply) for r in job.recipients] for job in jobs}
    policy: StsPolicy | None = None
    if route.sts is not None and route.relay is None and not domain.startswith("[") and not tls_optional:
        policy = await route.sts.policy(domain)
        if policy is not None and policy.mode == "enforce":
            allowed = [t for t in targets if policy.allows(t.host)]  # RFC 8461 §4.1
            if not allowed:
                names = ", ".join(t.host for t in targets)
                reply = _local(451, f"4.7.5 no MX host of {domain} ({names}) is allowed by its MTA-STS policy")
                log.warning("outbound: %s", reply)
                for job in jobs:
                    results[job.queue_id] = [RecipientOutcome(r, reply, tls="mta-sts") for r in job.recipients]
                return results
            targets = allowed
    pending = list(jobs)
    last_error: Reply = _local(451, f"4.4.1 no MX host of {domain} answered")
    last_mta: str | None = None
    last_tls = ""
    for target in targets:
        for address in target.addresses:
            if not pending:
                return results
            fresh = False  # True once a reused session failed: the retry gets a new connection
            give_up = False
            while pending:
                try:
                    conn = await _connect(target, address, route, policy, requiretls, domain, fresh=fresh,
                                          tls_optional=tls_optional)
                except _Fail as f:
                    last_error, last_mta, last_tls = f.reply, f"{target.host} [{address}]", f.tls
                    log.info("outbound: %s [%s]: %s", target.host, address, f.reply)
                    give_up = not f.next_host
                    break
                before = len(pending)
                try:
                    failure = await _send(conn, pending, results, route)
                except BaseException:  # cancelled (shutdown) or a bug: the socket must not outlive it
                    conn.abort()
                    raise
                if failure is None:
                    await _release(conn, route)
                    if len(pending) == before:
                        break  # no progress (cannot happen): do not loop
                    continue  # the session hit its reuse limit or was closed by a 421: a new one for the rest
                await conn.quit()
                last_error, last_mta, last_tls = failure.reply, conn.remote_mta, conn.tls_mode
                if failure.next_host and conn.transactions > 1 and (len(pending) < before or not fresh):
                    # a reused session failed before the message went out (dropped while
                    # idle, 421, RSET refused): the same server again, on a new connection
                    # (once, or again after the new one carried a message: never a loop)
                    log.info("outbound: reused session to %s failed (%s); reconnecting", conn.remote_mta, failure.reply)
                    if route.sessions is not None and conn.cache_key is not None:
                        route.sessions.discard(conn.cache_key)
                    fresh = True
                    continue
                break  # next address for what is left
            if give_up:
                break
        if not pending:
            break
        if route.relay is not None:
            break
    for job in pending:
        results[job.queue_id] = [RecipientOutcome(r, last_error, last_mta, tls=last_tls) for r in job.recipients]
    return results
