"""Recipient resolution and local delivery: shared by the MX (in-process) and the LMTP MDA.

Two halves:

- ``Resolver`` (synchronous, pure over the directory; call it with ``asyncio.to_thread``):
  one envelope recipient -> a ``Resolution`` (local ``Mailbox``es and remote forward
  targets) or a ``Reply`` saying why not. Order of lookups, first hit wins:
  exact alias, exact user, ``base`` alias/user of ``base+tag`` (folder ``tag``), the
  ``@domain`` catch-all. Aliases expand recursively (depth ``MAX_ALIAS_DEPTH``, at most
  ``MAX_EXPANSION`` results); an alias naming itself or an address already expanded is
  taken as the user of that name, never expanded again (no loop). Unknown or disabled
  local targets of an alias are dropped (logged); if nothing is left the recipient is
  unknown. The domain must be local, otherwise ``NOT_LOCAL``.
- ``LocalDelivery``: writes one message into many mailboxes, prepending per mailbox
  ``Return-Path:`` and ``Delivered-To:`` (the caller has already added its
  ``Received:``), each through ``Maildir.deliver`` (tmp/, fsync, rename into new/,
  fsync new/) in a worker thread; returns one ``RecipientResult`` per envelope
  recipient (ok / temporary / permanent, with the reply to give). Remote forwards go
  into the queue with an SRS envelope sender and an ARC seal of the alias's domain when
  a ``mail.forward.Forwarder`` is given (``[queue] srs``; see there for the exceptions),
  and keep the sender's DSN request (``dsn``: RET, ENVID, the alias's NOTIFY and ORCPT,
  RFC 3461 §5.2.7) and REQUIRETLS (``requiretls``, RFC 8689 §4.2: the requirement holds
  to the final destination) in their queue envelope.

Invariants:
- a recipient is ``ok`` only when every one of its mailboxes holds the message on disk,
  or the deliveries that failed temporarily (and all remote forwards) are durably in the
  queue; anything else is a 4xx or 5xx for that recipient;
- mail loops: more ``Received:`` headers than the limit, or a ``Delivered-To:`` equal to
  the mailbox (or forwarding alias) address, is a permanent ``554 5.4.6`` (RFC 5321 §6.3);
- the quota is checked before the write; over quota is ``452 4.2.2`` (temporary, as the
  user may make room).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mailstack.mail import headers
from mailstack.mail.dsnrequest import DSNRequest
from mailstack.mail.address import Address, AddressError, parse_address, split_tag
from mailstack import replies as R
from mailstack.replies import Reply
from mailstack.sieve import delivery as sieve_run

if TYPE_CHECKING:
    from mailstack.mail.forward import Forwarder
    from mailstack.queue import QueueStore

__all__ = [
    "Mailbox",
    "Resolution",
    "Resolver",
    "ResolveError",
    "Outcome",
    "RecipientResult",
    "LocalDelivery",
    "DirectoryLike",
    "NOT_LOCAL",
    "count_received",
    "delivered_to_values",
]

log = logging.getLogger(__name__)

MAX_ALIAS_DEPTH = 10  # Postfix virtual_alias_recursion_limit
MAX_EXPANSION = 1000  # Postfix virtual_alias_expansion_limit
TAG_SEPARATOR = "+"

NOT_LOCAL = Reply(554, "5.7.1", "Relay access denied")
ALIAS_LOOP = Reply(554, "5.4.6", "Alias expansion loop or too deep")
TOO_MANY_TARGETS = Reply(554, "5.4.6", "Alias expands to too many recipients")


class DirectoryLike(Protocol):
    """The part of ``mailstack.directory.Directory`` that delivery needs (synchronous)."""

    def is_local_domain(self, domain: str) -> bool: ...

    def get_user(self, address: str | Address) -> Any: ...

    def get_alias(self, source: str | Address) -> Any: ...


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One local Maildir++ to deliver into; ``folder`` None is INBOX."""

    domain: str
    local: str
    folder: str | None = None
    quota_bytes: int | None = None

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class Resolution:
    """Where one envelope recipient goes."""

    recipient: str
    mailboxes: tuple[Mailbox, ...] = ()
    forwards: tuple[str, ...] = ()
    via_alias: bool = False
    srs_bounce: bool = False  # an SRS address of ours, read back (mail.forward): queued here, never to an MDA


class ResolveError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Outcome(Enum):
    OK = "ok"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    reply: Reply
    mailboxes: tuple[str, ...] = ()
    queued: str | None = None

    @property
    def outcome(self) -> Outcome:
        if self.reply.is_ok:
            return Outcome.OK
        return Outcome.TEMPORARY if self.reply.is_temporary else Outcome.PERMANENT


# ---------------------------------------------------------------------------
# resolution


def _is_unavailable(e: BaseException) -> bool:
    return type(e).__name__ == "DirectoryUnavailable" or any(
        c.__name__ == "DirectoryUnavailable" for c in type(e).__mro__
    )


class Resolver:
    """Envelope recipient -> Resolution, over a (synchronous) directory.

    Answers (a Resolution, or a permanent refusal) are cached for ``cache_ttl`` seconds
    per recipient (case-folded), like Postfix's proxymap: a directory lookup costs
    0.5-0.7 ms of CPU and a hot MX asks for the same recipients all the time. A change
    in the directory (new user, disabled user) is seen within ``cache_ttl``. Temporary
    failures are never cached. ``cache_ttl = 0`` turns the cache off.
    """

    def __init__(self, directory: DirectoryLike, tag_separator: str = TAG_SEPARATOR, *,
                 cache_ttl: float = 5.0, cache_size: int = 10000) -> None:
        self.directory = directory
        self.sep = tag_separator
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._cache: dict[str, tuple[float, Resolution | Reply]] = {}
        self._lock = threading.Lock()

    def cached(self, recipient: str) -> Resolution | None:
        """The cached answer, without touching the directory: None = not cached;
        raises ResolveError for a cached refusal. Safe to call on the event loop."""
        if self.cache_ttl <= 0:
            return None
        hit = self._cache.get(recipient.casefold())
        if hit is None or hit[0] < time.monotonic():
            return None
        if isinstance(hit[1], Reply):
            raise ResolveError(hit[1])
        return hit[1]

    def _remember(self, recipient: str, answer: Resolution | Reply) -> None:
        if self.cache_ttl <= 0:
            return
        with self._lock:
            if len(self._cache) >= self.cache_size:
                now = time.monotonic()
                for k in [k for k, v in self._cache.items() if v[0] < now] or list(self._cache)[: self.cache_size // 2]:
                    self._cache.pop(k, None)
            self._cache[recipient.casefold()] = (time.monotonic() + self.cache_ttl, answer)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def resolve(self, recipient: str) -> Resolution:
        """Raises ResolveError with the reply for a recipient we will not take."""
        try:
            res = self._resolve(recipient)
        except ResolveError as e:
            if e.reply.is_permanent:
                self._remember(recipient, e.reply)
            raise
        self._remember(recipient, res)
        return res

    async def resolve_async(self, recipient: str) -> Resolution:
        """resolve() from the event loop: a cache hit costs no thread hop."""
        hit = self.cached(recipient)
        if hit is not None:
            return hit
        return await asyncio.to_thread(self.resolve, recipient)

    def _resolve(self, recipient: str) -> Resolution:
        try:
            addr = parse_address(recipient)
        except AddressError as e:
            raise ResolveError(R.BAD_ADDRESS.with_text(f"Malformed address: {e}")) from None
        try:
            if not self.directory.is_local_domain(addr.domain):
                raise ResolveError(NOT_LOCAL)
            mailboxes: list[Mailbox] = []
            forwards: list[str] = []
            via_alias = self._expand(addr, 0, set(), mailboxes, forwards, top=True)
        except ResolveError:
            raise
        except Exception as e:
            if _is_unavailable(e):
                raise ResolveError(R.DIRECTORY_DOWN) from None
            log.exception("directory lookup failed for %r", recipient)
            raise ResolveError(R.DIRECTORY_DOWN) from None
        if not mailboxes and not forwards:
            raise ResolveError(R.UNKNOWN_USER)
        # one copy per mailbox/folder and per forward target
        seen_mb: dict[tuple[str, str, str | None], Mailbox] = {}
        for mb in mailboxes:
            seen_mb.setdefault((mb.domain, mb.local.casefold(), mb.folder), mb)
        fwd = tuple(dict.fromkeys(forwards))
        return Resolution(recipient, tuple(seen_mb.values()), fwd, via_alias)

    def _user_mailbox(self, addr: Address, folder: str | None, *, strict: bool) -> Mailbox | None:
        user = self.directory.get_user(addr)
        if user is None:
            return None
        if not user.enabled:
            if strict:
                raise ResolveError(R.USER_DISABLED)
            log.warning("alias target %s is disabled; skipped", addr)
            return None
        return Mailbox(user.domain, user.local, folder, user.quota_bytes)

    def _expand(
        self,
        addr: Address,
        depth: int,
        seen: set[str],
        mailboxes: list[Mailbox],
        forwards: list[str],
        *,
        top: bool,
    ) -> bool:
        """Append the destinations of addr; True when an alias was used."""
        if depth > MAX_ALIAS_DEPTH:
            raise ResolveError(ALIAS_LOOP)
        if len(mailboxes) + len(forwards) > MAX_EXPANSION:
            raise ResolveError(TOO_MANY_TARGETS)
        key = addr.key
        if key in seen:
            # an alias that names itself (or an address met before): its user, no more
            mb = self._user_mailbox(addr, None, strict=False)
            if mb is not None:
                mailboxes.append(mb)
            return False
        seen.add(key)
        d = self.directory
        alias = d.get_alias(addr)
        if alias is not None:
            self._expand_targets(alias.targets, depth, seen, mailboxes, forwards)
            return True
        mb = self._user_mailbox(addr, None, strict=top)
        if mb is not None:
            mailboxes.append(mb)
            return False
        base, tag = split_tag(addr.local, self.sep)
        if tag is not None and base != addr.local:
            base_addr = Address(base, addr.domain)
            alias = d.get_alias(base_addr)
            if alias is not None and base_addr.key not in seen:
                seen.add(base_addr.key)
                self._expand_targets(alias.targets, depth, seen, mailboxes, forwards)
                return True
            mb = self._user_mailbox(base_addr, tag or None, strict=top)
            if mb is not None:
                mailboxes.append(mb)
                return False
        catch_all = d.get_alias(f"@{addr.domain}")
        if catch_all is not None:
            self._expand_targets(catch_all.targets, depth, seen, mailboxes, forwards)
            return True
        return False

    def _expand_targets(
        self, targets: Sequence[str], depth: int, seen: set[str], mailboxes: list[Mailbox], forwards: list[str]
    ) -> None:
        for target in targets:
            try:
                t = parse_address(target)
            except AddressError:
                log.warning("alias target %r is not an address; skipped", target)
                continue
            if self.directory.is_local_domain(t.domain):
                before = len(mailboxes) + len(forwards)
                self._expand(t, depth + 1, seen, mailboxes, forwards, top=False)
                if len(mailboxes) + len(forwards) == before:
                    log.warning("alias target %s does not exist; skipped", t)
            else:
                forwards.append(str(t))


# ---------------------------------------------------------------------------
# header checks (the header section is read by mail.headers, the one reader)


def count_received(block: bytes) -> int:
    """How many ``Received:`` fields the header section holds (RFC 5321 §6.3 loop check)."""
    return sum(1 for f in headers.header_fields(block, strict=False) if f.key == "received")


def delivered_to_values(block: bytes) -> set[str]:
    """Case-folded addresses of every Delivered-To: header (RFC 9228)."""
    return {f.value.strip().strip("<>").casefold() for f in headers.header_fields(block, strict=False)
            if f.key == "delivered-to"}


# ---------------------------------------------------------------------------
# delivery


MaildirOpener = Callable[[Path, str, str], Any]

# Maildir writes block in fsync. More threads than asyncio's default pool (cores + 4)
# let concurrent deliveries share journal commits (group commit) instead of queueing.
_WRITERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="mailstack-deliver")


def _default_opener(root: Path, domain: str, local: str) -> Any:
    from mailstack.storage import Maildir

    return Maildir.for_user(root, domain, local)


@dataclass
class LocalDelivery:
    """Writes messages into local Maildirs (and remote forwards into the queue)."""

    maildir_root: Path
    hostname: str
    max_received: int = 50
    queue: QueueStore | None = None
    open_maildir: MaildirOpener = field(default=_default_opener)
    # SRS sender and ARC seal for remote forwards (mail.forward); None: sent on as received
    forwarder: Forwarder | None = None
    sieve_global_dir: Path | None = None  # where Sieve ``include :global`` scripts live (None: none)

    # -- RCPT-time check ------------------------------------------------------------

    def quota_ok_sync(self, resolution: Resolution, size: int) -> bool:
        """False when any mailbox of the recipient is over quota with ``size`` more bytes."""
        for mb in resolution.mailboxes:
            if not mb.quota_bytes:
                continue
            md = self.open_maildir(self.maildir_root, mb.domain, mb.local)
            if not md.quota_check(size, mb.quota_bytes):
                return False
        return True

    async def quota_ok(self, resolution: Resolution, size: int) -> bool:
        if not any(mb.quota_bytes for mb in resolution.mailboxes):
            return True
        return await asyncio.get_running_loop().run_in_executor(_WRITERS, self.quota_ok_sync, resolution, size)

    # -- DATA-time delivery -----------------------------------------------------------

    async def deliver(
        self,
        sender: str,
        resolutions: Sequence[Resolution],
        data: bytes,
        *,
        queue_id: str | None = None,
        client: str | None = None,
        smtputf8: bool = False,
        dsn: DSNRequest | None = None,
        requiretls: bool = False,
    ) -> list[RecipientResult]:
        """Deliver ``data`` (CRLF, our Received: on top) for each resolved recipient;
        ``dsn`` and ``requiretls``: the envelope's, kept on what is queued (forwards)."""
        call = functools.partial(self.deliver_sync, sender, resolutions, data, queue_id=queue_id, client=client,
                                 smtputf8=smtputf8, dsn=dsn, requiretls=requiretls)
        return await asyncio.get_running_loop().run_in_executor(_WRITERS, call)

    def deliver_sync(
        self,
        sender: str,
        resolutions: Sequence[Resolution],
        data: bytes,
        *,
        queue_id: str | None = None,
        client: str | None = None,
        smtputf8: bool = False,
        dsn: DSNRequest | None = None,
        requiretls: bool = False,
    ) -> list[RecipientResult]:
        block = headers.header_block(data)
        if count_received(block) > self.max_received:  # RFC 5321 §6.3
            return [RecipientResult(r.recipient, R.LOOP.with_text("Mail loop detected: too many Received: headers"))
                    for r in resolutions]
        seen_delivered = delivered_to_values(block)
        return_path = headers.field("Return-Path", f"<{sender}>")
        done: dict[tuple[str, str, str | None], Reply] = {}  # one write per mailbox even if named twice
        results: list[RecipientResult] = []
        for res in resolutions:
            results.append(self._deliver_one(sender, res, data, return_path, seen_delivered, done,
                                             queue_id=queue_id, client=client, smtputf8=smtputf8,
                                             dsn=dsn, requiretls=requiretls))
        return results

    def _deliver_one(
        self,
        sender: str,
        res: Resolution,
        data: bytes,
        return_path: bytes,
        seen_delivered: set[str],
        done: dict[tuple[str, str, str | None], Reply],
        *,
        queue_id: str | None,
        client: str | None,
        smtputf8: bool,
        dsn: DSNRequest | None = None,
        requiretls: bool = False,
    ) -> RecipientResult:
        oks: list[str] = []
        temp_failed: list[Mailbox] = []
        perm: Reply | None = None
        temp: Reply | None = None
        if res.via_alias and res.recipient.casefold() in seen_delivered and res.forwards:
            return RecipientResult(res.recipient, R.LOOP)
        for mb in res.mailboxes:
            key = (mb.domain, mb.local.casefold(), mb.folder)
            reply = done.get(key)
            if reply is None:
                reply = self._write(mb, data, return_path, seen_delivered, sender=sender, rcpt=res.recipient)
                done[key] = reply
            if reply.is_ok:
                oks.append(mb.address)
            elif reply.is_temporary:
                temp_failed.append(mb)
                temp = temp or reply
            else:
                perm = perm or reply
        queued: str | None = None
        to_queue = list(res.forwards)
        if temp_failed and (oks or res.forwards):
            # part of an alias expansion failed for now: queue those, keep the rest
            to_queue.extend(mb.address for mb in temp_failed)
            temp_failed = []
        if to_queue:
            if self.queue is None:
                return RecipientResult(res.recipient, R.LOCAL_ERROR.with_text("Cannot forward now, try again later"))
            prefix = headers.field("Delivered-To", res.recipient)
            message, envelope_sender = prefix + data, sender
            extra: dict[str, Any] = {"orig_rcpt": res.recipient, "orig_id": queue_id}
            if dsn:  # RFC 3461 §5.2.7: the alias passes the sender's request on
                extra["dsn"] = dsn.for_forward(res.recipient, to_queue).to_extra()
            if requiretls:  # RFC 8689 §4.2: REQUIRETLS holds for every onward hop
                extra["requiretls"] = True
            if res.forwards and self.forwarder is not None:
                # a remote forward: SRS sender of the alias's domain, ARC seal with its key
                domain = res.recipient.rpartition("@")[2]
                envelope_sender = self.forwarder.envelope_sender(sender, domain)
                message = self.forwarder.seal(message, domain)
                if envelope_sender != sender:
                    extra["orig_sender"] = sender
            try:
                queued = self.queue.enqueue(envelope_sender, to_queue, message, smtputf8=smtputf8, client=client,
                                            reason="forward", extra=extra)
            except OSError:
                log.exception("cannot queue forward for %s", res.recipient)
                return RecipientResult(res.recipient, R.LOCAL_ERROR)
        if oks or queued:
            text = "Delivered" if not queued else f"Accepted, forwarded as {queued}"
            return RecipientResult(res.recipient, Reply(250, "2.0.0", text), tuple(oks), queued)
        if temp is not None:
            return RecipientResult(res.recipient, temp)
        return RecipientResult(res.recipient, perm or R.UNKNOWN_USER)

    def _write(self, mb: Mailbox, data: bytes, return_path: bytes, seen_delivered: set[str], *,
               sender: str = "", rcpt: str = "") -> Reply:
        from mailstack.storage import FolderNotFound, StorageError, UnsafeName

        if mb.address.casefold() in seen_delivered:  # RFC 9228 §4: a repeated Delivered-To is a loop
            return R.LOOP.with_text(f"Mail loop detected: already delivered to {mb.address}")
        delivered_to = headers.field("Delivered-To", mb.address)
        body = return_path + delivered_to + data
        try:
            md = self.open_maildir(self.maildir_root, mb.domain, mb.local)
            if mb.quota_bytes and not md.quota_check(len(body), mb.quota_bytes):
                return R.OVER_QUOTA
            folder = mb.folder
            if folder is not None and not md.has_folder(folder):
                folder = None  # +tag: into the folder only when it exists
            script = sieve_run.scripts_for(md.root)
            if script is not None:  # Sieve decides (the auto-reply, then the user's script; implicit keep -> folder)
                return sieve_run.execute(self, md, mb, script, body, folder, sender=sender,
                                         rcpt=rcpt or mb.address)
            try:
                md.deliver(body, folder)
            except FolderNotFound:
                md.deliver(body, None)
        except UnsafeName as e:
            log.error("mailbox %s: %s", mb.address, e)
            return Reply(550, "5.1.1", "Recipient mailbox name not usable")
        except (StorageError, OSError) as e:
            log.error("delivery to %s failed: %s", mb.address, e)
            return R.LOCAL_ERROR.with_text("Local delivery failed, try again later")
        return R.OK
