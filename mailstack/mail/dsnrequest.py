"""What a sender asked for with the SMTP DSN extension (RFC 3461), without I/O.

``RET`` and ``ENVID`` come on MAIL, ``NOTIFY`` and ``ORCPT`` on each RCPT. The SMTP
layer parses them (``parse_*`` here, called by ``smtp.params``), keeps them on the
transaction, and the request travels with the message: in the queue envelope's
``extra["dsn"]`` (``to_extra``/``from_extra``), into the DSNs we send
(``queue.bounce``) and to the next hop when it offers DSN (``smtp.outbound``).

Rules, each where it is enforced:

- ``NOTIFY=NEVER`` or a comma list of ``SUCCESS``, ``FAILURE``, ``DELAY`` (RFC 3461
  §4.1; NEVER alone); absent, a failure is reported and a delay may be (§4.1: "as if
  NOTIFY=FAILURE,DELAY"), never a success;
- ``RET=FULL|HDRS`` (§4.3): FULL returns the whole message in a *failed* DSN; HDRS, or
  no RET, the header only (our default, as Postfix's). Delay and success notices carry
  the header only whatever RET says (§4.3 speaks of failures);
- ``ENVID`` (§4.4) and ``ORCPT`` (§4.2) are xtext (§4: ``+XX`` hex escapes); their
  decoded value must be printable US-ASCII (§4.2, §4.4), at most 100 octets for ENVID
  and 500 for ORCPT (the encoded lengths the RFC allows), and ORCPT is
  ``addr-type ";" xtext``; ``Original-Envelope-Id:`` and ``Original-Recipient:`` in
  the DSN carry them back (RFC 3464 §2.2.1, §2.3.1);
- a parameter given twice: the later wins (as for the other MAIL parameters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DSNRequest", "RecipientRequest", "Kind", "xtext_decode", "xtext_encode",
           "parse_notify", "parse_ret", "parse_envid", "parse_orcpt", "ENVID_MAX", "ORCPT_MAX",
           "dsn_mail_params", "dsn_rcpt_params"]

Kind = Literal["success", "failure", "delay"]
NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
ENVID_MAX = 100  # RFC 3461 §4.4
ORCPT_MAX = 500  # RFC 3461 §4.2
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_HEX = re.compile(r"\+([0-9A-F]{2})")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


def xtext_decode(text: str) -> str | None:
    """RFC 3461 §4 xtext -> its value; None when not xtext or not printable US-ASCII."""
    if not _XTEXT.match(text):
        return None
    value = _HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
    if not all(0x20 <= ord(c) < 0x7F for c in value):
        return None
    return value


def xtext_encode(value: str) -> str:
    """A value as xtext: ``+``, ``=``, controls and non-ASCII as ``+XX`` (UTF-8 octets)."""
    out = []
    for b in value.encode("utf-8"):
        out.append(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}")
    return "".join(out)


def parse_notify(value: str) -> frozenset[str] | None:
    """``NEVER`` -> empty set; ``SUCCESS,DELAY`` -> those; None when malformed (§4.1)."""
    words = [w.upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return frozenset()
    if not words or any(w not in NOTIFY_WORDS for w in words) or len(set(words)) != len(words):
        return None
    return frozenset(words)


def parse_ret(value: str) -> str | None:
    v = value.upper()
    return v if v in ("FULL", "HDRS") else None


def parse_envid(value: str) -> str | None:
    return xtext_decode(value) if len(value) <= ENVID_MAX else None


def parse_orcpt(value: str) -> str | None:
    """``rfc822;user+40example.org`` -> ``rfc822;user@example.org``; None when malformed."""
    if len(value) > ORCPT_MAX:
        return None
    addr_type, semi, rest = value.partition(";")
    if not semi or not _ADDR_TYPE.match(addr_type) or not rest:
        return None
    decoded = xtext_decode(rest)
    return None if decoded is None else f"{addr_type};{decoded}"


@dataclass(frozen=True)
class RecipientRequest:
    notify: frozenset[str] | None = None  # None: NOTIFY not given; empty: NEVER
    orcpt: str | None = None  # "addr-type;decoded value"


@dataclass(frozen=True)
class DSNRequest:
    """One message's DSN parameters; ``recipients`` by the address as given in RCPT."""

    ret: str | None = None
    envid: str | None = None
    recipients: Mapping[str, RecipientRequest] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ret or self.envid or any(
            r.notify is not None or r.orcpt for r in self.recipients.values()))

    def wants(self, recipient: str, kind: Kind) -> bool:
        """Whether a DSN of ``kind`` is due for ``recipient`` (RFC 3461 §4.1, default above)."""
        notify = self.recipients.get(recipient, RecipientRequest()).notify
        if notify is None:
            return kind != "success"
        return kind.upper() in notify

    def orcpt(self, recipient: str) -> str | None:
        return self.recipients.get(recipient, RecipientRequest()).orcpt

    def return_full(self) -> bool:
        return self.ret == "FULL"

    def for_forward(self, original: str, targets: Sequence[str]) -> DSNRequest:
        """The request for a copy of the message re-sent from ``original`` (an alias,
        or a local mailbox retried later) to ``targets`` (RFC 3461 §5.2.7.2, §5.2.7.3:
        an alias passes the sender's request on). RET and ENVID stay; each target gets
        the original recipient's NOTIFY, and its ORCPT, or ``rfc822;<original>`` when it
        had none (§4.2: the address the sender gave, so a DSN names what they wrote).

        Choice for an alias with several targets: NOTIFY stays whole (SUCCESS included),
        so the sender hears of each target itself rather than one "expanded" notice."""
        req = self.recipients.get(original, RecipientRequest())
        orcpt = req.orcpt or f"rfc822;{original}"
        return DSNRequest(self.ret, self.envid, {t: RecipientRequest(req.notify, orcpt) for t in targets})

    def to_extra(self) -> dict[str, Any]:
        """JSON for the queue envelope (``extra["dsn"]``)."""
        rcpts: dict[str, Any] = {}
        for addr, r in self.recipients.items():
            one: dict[str, Any] = {}
            if r.notify is not None:
                one["notify"] = sorted(r.notify)
            if r.orcpt:
                one["orcpt"] = r.orcpt
            if one:
                rcpts[addr] = one
        out: dict[str, Any] = {"rcpts": rcpts}
        if self.ret:
            out["ret"] = self.ret
        if self.envid:
            out["envid"] = self.envid
        return out

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> DSNRequest:
        """The request stored by ``to_extra`` in ``extra["dsn"]``; empty when there is none."""
        d = extra.get("dsn")
        if not isinstance(d, dict):
            return cls()
        rcpts: dict[str, RecipientRequest] = {}
        for addr, r in (d.get("rcpts") or {}).items():
            notify = r.get("notify")
            rcpts[str(addr)] = RecipientRequest(None if notify is None else frozenset(str(n) for n in notify),
                                                r.get("orcpt"))
        return cls(d.get("ret"), d.get("envid"), rcpts)


def dsn_mail_params(dsn: DSNRequest | None) -> list[str]:
    """RFC 3461 §4.3, §4.4: RET and ENVID for the next hop's MAIL (only when it offers DSN)."""
    if dsn is None:
        return []
    out = [f"RET={dsn.ret}"] if dsn.ret else []
    if dsn.envid:
        out.append(f"ENVID={xtext_encode(dsn.envid)}")
    return out


def dsn_rcpt_params(dsn: DSNRequest | None, rcpt: str) -> str:
    """RFC 3461 §4.1, §4.2: `` NOTIFY=... ORCPT=...`` for one RCPT ("" when none)."""
    if dsn is None:
        return ""
    req = dsn.recipients.get(rcpt)
    if req is None:
        return ""
    out = ""
    if req.notify is not None:
        out += " NOTIFY=" + (",".join(sorted(req.notify)) if req.notify else "NEVER")
    if req.orcpt:
        addr_type, _, value = req.orcpt.partition(";")
        out += f" ORCPT={addr_type};{xtext_encode(value)}"
    return out
