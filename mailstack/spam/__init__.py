"""Spam filtering with rspamd (its own daemon): scanning on the MX, learning from Junk moves.

- ``rspamd``: the HTTP client (``/checkv2``, ``/learnspam``, ``/learnham``, ``/ping``);
- ``policy``: rspamd's verdict -> what the MX does and the ``X-Spam-*`` headers (pure);
- ``scan``: the MX's one call, ``Scanner.scan`` -> ``Decision``, never raising (rspamd
  down, slow or answering garbage -> ``[spam] fail_mode``);
- ``learn``: the durable on-disk queue of messages moved into or out of Junk over IMAP and
  the task that teaches them to rspamd's controller.

``reachable(config)`` answers "is the configured rspamd up?" for ``mailstack status``.
"""

from __future__ import annotations

from mailstack.config import Config
from mailstack.spam.learn import Learning, note_copy
from mailstack.spam.rspamd import RspamdClient, ping
from mailstack.spam.scan import Scanner

__all__ = ["Learning", "RspamdClient", "Scanner", "note_copy", "ping", "reachable", "scanner_from_config"]


async def reachable(config: Config, timeout: float = 2.0) -> bool | None:
    """Is the rspamd of ``config`` (``[spam] rspamd_url``) answering ``/ping``?
    None when no rspamd is configured (nothing to check)."""
    url = config.spam.rspamd_url
    if not url:
        return None
    return await ping(url, timeout)


def scanner_from_config(config: Config) -> Scanner | None:
    """The MX's scanner, or None when ``[spam] rspamd_url`` is empty."""
    spam = config.spam
    if not spam.rspamd_url:
        return None
    return Scanner(RspamdClient(url=spam.rspamd_url, timeout=spam.timeout), fail_mode=spam.fail_mode)
