"""Mail we forward to a remote address: the SRS envelope sender and the ARC seal.

``Forwarder`` is what the forward path (``delivery.LocalDelivery`` queueing an alias's
remote targets) and the MX (reading SRS bounce addresses) share:

- ``envelope_sender(sender, domain)``: the sender rewritten with SRS (``mail.srs``) into
  ``domain``, the forwarding (alias) domain, so that the remote side's SPF check sees us.
  Left as it is: the null sender ``<>`` (a bounce is never bounced, RFC 5321 §4.5.5) and a
  sender in one of our own domains (our SPF record already covers this host, and its
  bounces should reach that user directly, as postsrsd's ``SRS_EXCLUDE_DOMAINS`` does for
  the local domain). An SRS0 sender of another domain becomes SRS1 (``mail.srs``).
- ``reverse(address)``: the original address of an SRS address of ours, or ``SRSError``.
- ``seal(message, domain)``: the message with an ARC set on top (RFC 8617 §5.1), made
  by dkimpy's ``arc_sign`` with ``domain``'s RSA DKIM key (dkimpy seals with rsa-sha256
  only) over the ``Authentication-Results`` our MX wrote (authserv-id = our hostname).
  A chain that arrived is continued: the MX's A-R carries ``arc=pass|fail``
  (``mail.arc``), which becomes our seal's ``cv=`` (RFC 8617 §5.1.1). Nothing to seal with
  (no RSA key for the domain: logged once per domain; no A-R of ours: the client was not
  checked, e.g. ``[checks] ignore_networks``) means the message goes on unsealed:
  forwarding never fails for want of a seal.

The secret: ``<dkim_dir>/srs.secret`` (``[queue] dkim_dir``, beside the DKIM keys, so a
backup holds both), postsrsd's format: one secret per line, the first signs, all verify
(rotation: put a new line first, drop the old one after ``srs.MAX_AGE_DAYS`` days). Made on
first use: 32 random base64 characters, 0600, written to a temp file and linked into place,
so two processes starting at once end up with the same secret.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets as secrets_mod
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dkim as dkimpy  # type: ignore[import-untyped]

from mailstack.config import Config
from mailstack.mail import dkim as dkim_mod
from mailstack.mail.srs import SRS, SRSError, is_srs
from mailstack.storage.safeio import fsync_dir, make_dirs, write_durable

__all__ = ["Forwarder", "SRSError", "SECRET_NAME", "load_secret"]

log = logging.getLogger(__name__)

SECRET_NAME = "srs.secret"


def load_secret(keys_dir: Path) -> list[bytes]:
    """The SRS secrets in ``<keys_dir>/srs.secret``, making the file on first use."""
    path = keys_dir / SECRET_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        make_dirs(keys_dir, 0o700)
        tmp = keys_dir / f".{SECRET_NAME}.{os.getpid()}.{secrets_mod.token_hex(4)}"
        write_durable(tmp, base64.b64encode(secrets_mod.token_bytes(24)) + b"\n", mode=0o600)
        try:
            os.link(tmp, path)  # never replaces a secret another process made meanwhile
            fsync_dir(keys_dir)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        data = path.read_bytes()
    found = [line.strip() for line in data.splitlines() if line.strip()]
    if not found:
        raise OSError(f"{path}: holds no secret")
    return found


@dataclass
class Forwarder:
    """SRS and ARC for forwarded mail; ``is_local`` says whether a domain is ours."""

    keys_dir: Path
    hostname: str  # our authserv-id (RFC 8601 §2.5) and nothing else
    is_local: Callable[[str], bool]
    srs_enabled: bool = True
    _srs: SRS | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _no_key: set[str] = field(default_factory=set, init=False, repr=False)

    @classmethod
    def from_config(cls, config: Config, is_local: Callable[[str], bool]) -> Forwarder:
        """``[queue] dkim_dir`` and ``srs``, our hostname; ``is_local``: the directory's."""
        return cls(config.queue.dkim_dir, config.hostname, is_local, srs_enabled=config.queue.srs)

    @property
    def srs(self) -> SRS:
        with self._lock:
            if self._srs is None:
                self._srs = SRS(load_secret(self.keys_dir))
            return self._srs

    def envelope_sender(self, sender: str, domain: str) -> str:
        """The reverse-path for a forward through ``domain`` (see the module docstring)."""
        if not self.srs_enabled or not sender or "@" not in sender:
            return sender
        sender_domain = sender.rpartition("@")[2].rstrip(".").lower()
        try:
            if self.is_local(sender_domain):
                return sender
        except Exception:  # directory down: rewriting is the safe side (it still reverses)
            log.warning("srs: cannot tell whether %s is local; rewriting", sender_domain)
        try:
            return self.srs.forward(sender, domain.lower())
        except (SRSError, OSError) as e:
            log.error("srs: cannot rewrite %s: %s; forwarding with the original sender", sender, e)
            return sender

    def is_srs_address(self, address: str) -> bool:
        local, at, domain = address.rpartition("@")
        return bool(at) and is_srs(local)

    def reverse(self, address: str) -> str:
        """The original address of ``address`` (SRS0/SRS1 of ours); SRSError if forged or stale."""
        try:
            return self.srs.reverse(address)
        except OSError as e:
            raise SRSError(f"no SRS secret: {e}") from None

    def seal(self, message: bytes, domain: str) -> bytes:
        """``message`` (CRLF) with an ARC set on top when we can make one, else unchanged."""
        keys = [k for k in dkim_mod.load_keys(self.keys_dir, domain) if k.algorithm == "rsa"]
        if not keys:
            if domain not in self._no_key:
                self._no_key.add(domain)
                log.info("arc: no RSA DKIM key for %s; forwarded mail goes out without an ARC seal", domain)
            return message
        key = keys[0]
        try:
            lines = dkimpy.arc_sign(message, key.selector.encode(), key.domain.encode(), key.private,
                                    self.hostname.encode(), linesep=b"\r\n")
        except Exception as e:  # dkimpy raises several kinds on odd messages; never lose the forward
            log.warning("arc: cannot seal for %s: %s", domain, e)
            return message
        if not lines:
            log.debug("arc: nothing to seal for %s (no Authentication-Results of ours)", domain)
            return message
        return b"".join(lines) + message
