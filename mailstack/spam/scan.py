"""The MX's spam scan: one call that always comes back with a ``policy.Decision``.

``Scanner.scan(message, request, auth=verdict)``: rspamd's verdict turned into what the MX
does; rspamd down, slow or answering garbage becomes ``[spam] fail_mode`` (deliver
unscanned with a header and a warning in the log, or ``451 4.7.1``). It never raises.

Our own SPF/DKIM/DMARC results (``mailstack.mail.authcheck``) go to rspamd in the
``Settings`` header of the scan: its ``SPF_CHECK``/``DKIM_CHECK``/``DMARC_CHECK`` rules are
switched off for that message (no second round of DNS lookups, no second opinion that could
differ from the ``Authentication-Results:`` we wrote) and the symbols those rules would have
set are inserted instead (``R_SPF_ALLOW``, ``R_DKIM_REJECT``, ``DMARC_POLICY_QUARANTINE``,
...), so rspamd's scores for them still count.
"""

from __future__ import annotations

import logging
from typing import Any

from mailstack.mail.authcheck import AuthVerdict
from mailstack.spam import policy
from mailstack.spam.rspamd import RspamdClient, ScanError, ScanRequest

__all__ = ["Scanner", "auth_settings"]

log = logging.getLogger(__name__)

# Our results -> the symbols of rspamd's spf, dkim and dmarc modules
SPF_SYMBOLS = {
    "pass": "R_SPF_ALLOW", "fail": "R_SPF_FAIL", "softfail": "R_SPF_SOFTFAIL", "neutral": "R_SPF_NEUTRAL",
    "none": "R_SPF_NA", "temperror": "R_SPF_DNSFAIL", "permerror": "R_SPF_PERMFAIL",
}
DKIM_SYMBOLS = {
    "pass": "R_DKIM_ALLOW", "fail": "R_DKIM_REJECT", "temperror": "R_DKIM_TEMPFAIL", "permerror": "R_DKIM_PERMFAIL",
}
DMARC_FAIL_SYMBOLS = {"reject": "DMARC_POLICY_REJECT", "quarantine": "DMARC_POLICY_QUARANTINE",
                      "none": "DMARC_POLICY_SOFTFAIL"}
DMARC_SYMBOLS = {"pass": "DMARC_POLICY_ALLOW", "none": "DMARC_NA", "temperror": "DMARC_DNSFAIL",
                 "permerror": "DMARC_BAD_POLICY"}
OWN_CHECKS = ("SPF_CHECK", "DKIM_CHECK", "DMARC_CHECK")


def auth_settings(verdict: AuthVerdict | None) -> dict[str, Any] | None:
    """The ``Settings`` object that hands rspamd our SPF/DKIM/DMARC results (None: none ran)."""
    if verdict is None or verdict.spf is None:
        return None
    symbols = [SPF_SYMBOLS.get(verdict.spf.result, "R_SPF_NA")]
    dkim = {s.result for s in verdict.dkim}
    if "pass" in dkim:
        symbols.append("R_DKIM_ALLOW")
    elif not dkim:
        symbols.append("R_DKIM_NA")
    else:
        symbols += sorted({DKIM_SYMBOLS[r] for r in dkim if r in DKIM_SYMBOLS}) or ["R_DKIM_NA"]
    dmarc = verdict.dmarc
    if dmarc is not None:
        if dmarc.result == "fail":
            symbols.append(DMARC_FAIL_SYMBOLS.get(dmarc.policy or "none", "DMARC_POLICY_SOFTFAIL"))
        else:
            symbols.append(DMARC_SYMBOLS.get(dmarc.result, "DMARC_NA"))
    return {"symbols_disabled": list(OWN_CHECKS), "symbols": symbols}


class Scanner:
    """rspamd for the MX: ``scan`` -> ``policy.Decision``; ``close()`` when the MX stops."""

    def __init__(self, client: RspamdClient, *, fail_mode: str = "accept") -> None:
        self.client = client
        self.defer_on_failure = fail_mode == "defer"

    async def scan(self, message: bytes, request: ScanRequest, auth: AuthVerdict | None = None) -> policy.Decision:
        settings = auth_settings(auth)
        if settings is not None:
            request = ScanRequest(**{**request.__dict__, "settings": settings})
        try:
            result = await self.client.check(message, request)
        except ScanError as e:
            what = "451 4.7.1" if self.defer_on_failure else "delivered unscanned"
            log.warning("spam: no verdict for %s from %s (%s): %s", request.queue_id, request.client_ip, e, what)
            return policy.unscanned(str(e), self.defer_on_failure)
        except Exception as e:  # a bug here must not lose or refuse mail: same as rspamd failing
            log.exception("spam: scan of %s failed", request.queue_id)
            return policy.unscanned(f"internal error: {type(e).__name__}", self.defer_on_failure)
        return policy.decide(result, request.queue_id)

    async def close(self) -> None:
        await self.client.close()
