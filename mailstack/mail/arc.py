"""ARC (RFC 8617) verification of mail arriving at the MX: the ``arc=`` result of our A-R.

``verify_arc(message, resolver)`` gives None for a message without ARC sets (nothing to
say, and no ``arc=`` result is written), else ``"pass"`` or ``"fail"``: the chain
validation status of RFC 8617 §5.2, by dkimpy's ``arc_verify`` (a key that DNS cannot
give now is a failed chain too, as §5.2 counts what cannot be validated: ``cv=`` knows
no temporary state, and an ARC result never refuses mail here). dkimpy looks
keys up synchronously, so the keys named by every ``ARC-Seal`` and
``ARC-Message-Signature`` (``s=``/``d=``, at most ``MAX_SETS`` sets, RFC 8617 §4.2.1's
instance limit) are fetched first through our async resolver, and ``arc_verify`` runs
in a thread over that answer set (no DNS from the thread).

Why here: a sealer states the chain it received in its own A-R (RFC 8617 §5.1.1, the
``cv=`` of its ARC-Seal comes from it; dkimpy's ``arc_sign`` reads it there), so mail that
arrives with a chain can be sealed again when we forward it (``mail.forward``).
"""

from __future__ import annotations

import asyncio
import logging
import re

import dkim as dkimpy  # type: ignore[import-untyped]

from mailstack.dns import DNSError, NXDomain, Resolver
from mailstack.mail import headers

__all__ = ["verify_arc", "MAX_SETS"]

log = logging.getLogger(__name__)

MAX_SETS = 50  # RFC 8617 §4.2.1: i= is 1..50
_TAG_RE = re.compile(r"(?:^|;)\s*([ds])\s*=\s*([A-Za-z0-9._-]+)")


def _key_names(message: bytes) -> list[str] | None:
    names: list[str] = []
    seals = 0
    for f in headers.header_fields(message, strict=False):
        if f.key not in ("arc-seal", "arc-message-signature"):
            continue
        seals += f.key == "arc-seal"
        tags = dict(_TAG_RE.findall(re.sub(r"\s+", "", f.value)))
        if "d" in tags and "s" in tags:
            names.append(f"{tags['s']}._domainkey.{tags['d']}".lower())
    if seals == 0:
        return None
    if seals > MAX_SETS:
        return []
    return list(dict.fromkeys(names))


async def verify_arc(message: bytes, resolver: Resolver) -> str | None:
    """The ``arc=`` result for ``message`` (see the module docstring); None: no chain."""
    if not headers.has_field(message, "ARC-Seal"):
        return None
    names = _key_names(message)
    if names is None:
        return None
    if not names:
        return "fail"
    records: dict[str, bytes] = {}

    async def fetch(name: str) -> bool:
        try:
            txts = await resolver.txt(name)
        except NXDomain:
            return True  # dkimpy then finds no key: the chain fails
        except DNSError:
            return False
        keys = [t for t in txts if "p=" in t]
        if len(keys) == 1:
            records[name] = keys[0].encode()
        return True

    if not all(await asyncio.gather(*(fetch(n) for n in names))):
        log.info("arc: a key lookup failed; chain taken as failed")
        return "fail"

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode("ascii", "replace").rstrip(".").lower(), b"")

    def run() -> str:
        try:
            cv, _results, reason = dkimpy.arc_verify(message, dnsfunc=dnsfunc)
        except Exception as e:  # dkimpy raises several kinds on hostile input
            log.info("arc: chain unreadable: %s", e)
            return "fail"
        if cv != b"pass":
            log.info("arc: chain %s: %s", cv.decode(), reason)
        return "pass" if cv == b"pass" else "fail"

    return await asyncio.to_thread(run)
