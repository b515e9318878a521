"""A small authoritative DNS server on loopback for tests (dnslib, UDP and TCP).

Records are kept in a dict and may be changed while it runs (``add``/``remove``/``clear``).
It answers A, AAAA, MX, TXT, CNAME, SRV and TLSA (and ANY of those), and gets the negative
answers right, which dnslib's stock ``ZoneResolver`` does not:

- a name that has records of some *other* type answers NOERROR with an empty answer
  section (NODATA, RFC 2308 §2.2);
- a name with no records at all, but with names below it, is an "empty non-terminal"
  and also answers NODATA (RFC 8020 §2), e.g. ``_domainkey.example.test`` when only
  ``sel._domainkey.example.test`` exists;
- every other name answers NXDOMAIN (RCODE 3);
- a CNAME is followed within the zone (RFC 1034 §3.6.2) unless CNAME itself is asked.

Long TXT records (a 2048-bit DKIM key) are split into 255-byte strings; a UDP answer
that does not fit 512 bytes is sent truncated (TC) so the client retries over TCP.

A name in ``secure`` gets its answers with the AD bit set (RFC 4035 §3.2.3), as a
validating resolver would for a DNSSEC-signed zone (for DANE tests); other answers never
carry it.

Usage::

    with TestDNS() as dns:
        dns.add("example.test", "MX", "10 mx.example.test")
        dns.add("mx.example.test", "A", "127.0.0.23")
        resolver = DNSPythonResolver([dns.address])
"""

from __future__ import annotations

import threading
from collections import defaultdict
from types import TracebackType

from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, SRV, TLSA, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

TTL = 60
_TYPES = ("A", "AAAA", "MX", "TXT", "CNAME", "SRV", "TLSA")


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _rdata(rtype: str, value: str) -> object:
    if rtype == "A":
        return A(value)
    if rtype == "AAAA":
        return AAAA(value)
    if rtype == "MX":
        pref, host = value.split(None, 1)
        return MX(host if host != "." else ".", int(pref))
    if rtype == "TXT":
        data = value.encode()
        return TXT([data[i:i + 255] for i in range(0, len(data), 255)] or [b""])
    if rtype == "CNAME":
        return CNAME(value)
    if rtype == "SRV":
        prio, weight, port, target = value.split()
        return SRV(int(prio), int(weight), int(port), target)
    if rtype == "TLSA":  # "3 1 1 <hex>"
        usage, selector, mtype, hexdata = value.split()
        return TLSA(int(usage), int(selector), int(mtype), bytes.fromhex(hexdata))
    raise ValueError(f"unsupported type {rtype}")


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, owner: "TestDNS") -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        reply.header.aa = 1
        qname = _norm(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        with self.owner.lock:
            records = {k: {t: list(vs) for t, vs in v.items()} for k, v in self.owner.records.items()}
            fail = self.owner.servfail
            secure = qname in self.owner.secure
            ttls = dict(self.owner.ttls)
            self.owner.queries.append((qname, qtype))
        if qname in fail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        reply.header.ad = 1 if secure else 0  # dnslib's reply() copies the query's AD bit
        name = qname
        for _ in range(8):  # CNAME chain, bounded
            here = records.get(name, {})
            if qtype != "CNAME" and "CNAME" in here:
                target = here["CNAME"][0]
                reply.add_answer(RR(DNSLabel(name), QTYPE.CNAME, rdata=_rdata("CNAME", target), ttl=ttls.get(name, TTL)))
                name = _norm(target)
                continue
            break
        here = records.get(name, {})
        wanted = _TYPES if qtype == "ANY" else (qtype,)
        found = False
        for rtype in wanted:
            for value in here.get(rtype, []):
                reply.add_answer(RR(DNSLabel(name), getattr(QTYPE, rtype), rdata=_rdata(rtype, value),
                                    ttl=ttls.get(name, TTL)))
                found = True
        if found or here or reply.rr:
            return reply  # data, or NODATA for an existing name
        suffix = "." + name
        if any(n.endswith(suffix) for n in records):
            return reply  # empty non-terminal: NODATA (RFC 8020 §2)
        reply.header.rcode = RCODE.NXDOMAIN
        return reply


class TestDNS:
    """UDP and TCP on the same loopback port; ``address`` is "127.0.0.1:PORT"."""

    __test__ = False  # not a pytest test class

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, dict[str, list[str]]] = defaultdict(dict)
        self.servfail: set[str] = set()
        self.secure: set[str] = set()  # names answered with the AD bit
        self.ttls: dict[str, int] = {}  # name -> TTL of its records (default TTL)
        self.queries: list[tuple[str, str]] = []  # (name, type) of every question, in order
        resolver = _Resolver(self)
        logger = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)
        if port == 0:
            port = _free_udp_tcp_port(host)
        self.host, self.port = host, port
        self._udp = DNSServer(resolver, address=host, port=port, logger=logger)
        self._tcp = DNSServer(resolver, address=host, port=port, tcp=True, logger=logger)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def add(self, name: str, rtype: str, value: str) -> None:
        rtype = rtype.upper()
        if rtype not in _TYPES:
            raise ValueError(rtype)
        with self.lock:
            self.records[_norm(name)].setdefault(rtype, []).append(value)

    def remove(self, name: str, rtype: str | None = None) -> None:
        with self.lock:
            if rtype is None:
                self.records.pop(_norm(name), None)
            else:
                self.records.get(_norm(name), {}).pop(rtype.upper(), None)
                if not self.records.get(_norm(name), True):
                    self.records.pop(_norm(name), None)

    def clear(self) -> None:
        with self.lock:
            self.records.clear()
            self.servfail.clear()
            self.secure.clear()
            self.ttls.clear()
            self.queries.clear()

    def start(self) -> "TestDNS":
        self._udp.start_thread()
        self._tcp.start_thread()
        return self

    def stop(self) -> None:
        for s in (self._udp, self._tcp):
            s.server.shutdown()
            s.server.server_close()

    def __enter__(self) -> "TestDNS":
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _free_udp_tcp_port(host: str) -> int:
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for the test DNS")
