"""The ``queue`` service: delivers what waits in the spool, retries, bounces.

The spool is ``mailstack.queue.QueueStore`` (``[queue] dir``). This module adds
the delivery state, kept in each envelope (``QueueStore.save``, durable):

- ``attempts``, ``next_attempt`` (the store's own fields): tries so far, when to try next;
- ``extra["last_error"]``: the last temporary failure (one line), ``extra["last_attempt"]``
  (unix time), ``extra["errors"]``: ``{recipient: reply}`` per recipient still pending,
  ``extra["warned"]``: a delay warning was sent, ``extra["done"]``: recipients already
  delivered or bounced (the envelope's ``recipients`` shrinks to those still pending).

Claims: a message is worked on only under an exclusive ``flock`` on
``<dir>/.locks/<id>`` (non-blocking; a claimed message is skipped), so several runners,
in several processes or on several hosts sharing the directory, never send one twice at
once (``queue.claim``). Wake-ups (``mailstack.queue.wake``): every enqueue in this process
wakes the runners of that directory, and the mtime of ``<dir>/.wake`` (touched by every
enqueue, and by ``mailstack queue flush`` after setting every ``next_attempt`` to now)
wakes them from another process; otherwise a scan every ``[queue] scan_interval`` seconds.
A wake-up scans at once (no fixed batching delay): wakes that arrive while a scan runs
coalesce into one more scan right after it, and messages that arrive while a round is
sending share its connections anyway, since every session that ends cleanly is parked
for ``[queue] connection_cache_time`` seconds and the next round to that server takes it
(``smtp.sessioncache``, ``smtp.outbound``).

This runner stays in ``smtp/`` (not in ``mailstack.queue``): it drives the outbound SMTP
client and local delivery, both above the queue package, which it builds on.

Invariants:
- a message leaves the spool only when every recipient is delivered or bounced, and a
  recipient is marked done only after its result (a remote 2xx, a local Maildir write,
  or a bounce durably queued) — kill -9 at any point means at worst one more attempt;
- local recipients (``is_local_domain``) go to the MDA (``mailstack.delivery``), remote
  ones to their MX (``mailstack.smtp.outbound``), grouped per domain, one transaction per
  message and as few connections as possible, at most ``max_per_domain`` connections to
  one domain and ``max_connections`` in total;
- retries back off from ``retry_initial`` doubling up to ``retry_max_interval``; after
  ``max_age`` the remaining recipients bounce (RFC 5321 §4.5.4.1), a 5xx bounces at once;
- never a bounce for a null reverse-path (RFC 5321 §4.5.5); bounces and delay warnings
  are RFC 3464 DSNs sent from ``<>``, through ``queue.bounce`` (signed, logged, queued);
- one mail-log line per message and outcome (``delivered``, ``deferred``, ``bounced``);
  ``delivered`` and ``deferred`` lines say which transport security was used
  (``tls=none|opportunistic|mta-sts|dane``, ``-`` when no connection got that far).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import logging
import os
import ssl
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailstack.delivery import LocalDelivery, ResolveError
from mailstack.delivery import Resolver as RcptResolver
from mailstack.dns import DNSPythonResolver, Resolver, resolver_from_config
from mailstack.mail import dkim
from mailstack.mail.forward import Forwarder
from mailstack.mail.dsn import DSNRecipient
from mailstack.maillog import log_event
from mailstack.queue import WAKE_FILE, QueuedEnvelope, QueueStore, claim, release_claim, wake
from mailstack.mail.dsnrequest import DSNRequest
from mailstack.queue.bounce import bounce, notify_success, warn_delayed
from mailstack.service import ServiceContext, ServiceError
from mailstack.replies import Reply
from mailstack.smtp.mtasts import StsCache
from mailstack.smtp.tlsrpt import TLSResultLog, send_reports
from mailstack.smtp.outbound import Connection, Job, Outcome, RecipientOutcome, RelaySettings, Route, deliver_domain
from mailstack.smtp.sessioncache import SessionCache

if TYPE_CHECKING:
    from mailstack.config import Config

__all__ = ["QueueRunner", "start", "relay_settings"]

log = logging.getLogger(__name__)

REPORT_CHECK_INTERVAL = 300.0  # seconds between looks for a finished day of TLS-RPT results
DNS_CACHE_SIZE = 10000  # answers the runner's resolver keeps, each for its own TTL (mailstack.dns)


def relay_settings(config: Config) -> RelaySettings | None:
    """``[relay]`` as RelaySettings (None = direct MX delivery); ValueError names a bad key."""
    r = config.relay
    if not r.host:
        return None
    if r.tls not in ("starttls", "implicit", "none"):
        raise ValueError(f"[relay] tls: {r.tls!r} is not starttls, implicit or none")
    if not 0 < r.port < 65536:
        raise ValueError(f"[relay] port: {r.port} out of range")
    password = r.password
    if r.password_file:
        p = Path(r.password_file)
        if not p.is_absolute():
            p = config.base_dir / p
        try:
            password = p.read_text(encoding="utf-8").strip("\r\n")
        except OSError as e:
            raise ValueError(f"[relay] password_file: cannot read {p}: {(e.strerror or str(e)).lower()}") from None
    if r.username and r.tls == "none":
        raise ValueError("[relay] tls: credentials are never sent without TLS; use starttls or implicit")
    return RelaySettings(r.host, r.port, r.tls, r.username, password, r.verify_tls)


@dataclass
class _Work:
    env: QueuedEnvelope
    data: bytes
    results: dict[str, RecipientOutcome] = field(default_factory=dict)


class QueueRunner:
    """Delivers due messages; ``run_once`` for one pass (tests), ``start``/``stop`` as a service."""

    def __init__(
        self,
        config: Config,
        store: QueueStore,
        resolver: Resolver,
        *,
        directory: Any = None,
        client_tls: Any = None,
        relay: RelaySettings | None = None,
    ) -> None:
        self.config = config
        self.q = config.queue
        self.store = store
        self.resolver = resolver
        self.directory = directory
        self.keys_dir = dkim.keys_dir(config)  # signs our DSNs (queue.bounce)
        verify_tls = _verify_context(config)
        self.tls_results = TLSResultLog(Path(self.q.dir) / "tlsrpt") if self.q.tls_reports else None
        self.sessions: SessionCache[Connection] | None = (
            SessionCache(self.q.connection_cache_time, max_idle=max(1, self.q.max_connections))
            if self.q.connection_cache_time > 0 else None)
        self._reports_checked = 0.0
        self.route = Route(helo=config.hostname, resolver=resolver, port=self.q.smtp_port, client_tls=client_tls,
                           relay=relay, connect_timeout=self.q.connect_timeout,
                           command_timeout=self.q.command_timeout, verify_tls=verify_tls,
                           sts=StsCache(resolver, verify_tls, port=self.q.mta_sts_port,
                                        on_failure=self.tls_results.sts_failure if self.tls_results else None)
                           if self.q.mta_sts else None,
                           tlsa=resolver if isinstance(resolver, DNSPythonResolver) and config.dns.trusted_resolvers
                           else None, tls_results=self.tls_results, sessions=self.sessions,
                           reuse_limit=self.q.connection_reuse_limit)
        self._wake = asyncio.Event()
        self._stopping = False
        self._busy: set[str] = set()
        self._rounds: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._total = asyncio.Semaphore(max(1, self.q.max_connections))
        self._per_domain: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(max(1, self.q.max_per_domain)))
        self._wake_mtime = self._wake_file_mtime()
        self._survey_memo: dict[str, tuple[tuple[int, int, int], float]] = {}  # id -> (envelope stat, next_attempt)
        self._local: Any = None
        self._home: asyncio.AbstractEventLoop | None = None  # the loop start_background runs on
        wake.register(store.dir, self)

    # -- service ---------------------------------------------------------------------

    name = "queue"

    def wake(self) -> None:
        """Scan soon. Thread-safe: an enqueue in a worker thread (``asyncio.to_thread``)
        wakes a runner whose loop is elsewhere (``queue.wake.notify``)."""
        home = self._home
        if home is None or home.is_closed():
            self._wake.set()
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is home:
            self._wake.set()
        else:
            home.call_soon_threadsafe(self._wake.set)

    def start_background(self) -> None:
        self.store.ensure()
        self._home = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop(), name="queue-runner")

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=1.0)
        if self._rounds:
            _done, pending = await asyncio.wait(set(self._rounds), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.sessions is not None:
            with contextlib.suppress(Exception):
                await self.sessions.close()
        wake.unregister(self)

    def _wake_file_mtime(self) -> float:
        try:
            return (self.store.dir / WAKE_FILE).stat().st_mtime
        except OSError:
            return 0.0

    async def _loop(self) -> None:
        next_scan = 0.0
        while not self._stopping:
            now = time.time()
            mtime = self._wake_file_mtime()
            if mtime != self._wake_mtime:
                self._wake_mtime = mtime
                next_scan = 0.0
            if self._wake.is_set() or now >= next_scan:
                self._wake.clear()  # wakes from here on mean one more scan after this one
                try:
                    due_in = await self._scan()
                except Exception:
                    log.exception("queue: scan failed")
                    due_in = self.q.scan_interval
                next_scan = time.time() + min(self.q.scan_interval, max(due_in, 0.05))
            if self.tls_results is not None and time.time() - self._reports_checked >= REPORT_CHECK_INTERVAL:
                self._reports_checked = time.time()
                try:
                    await self.send_tls_reports()
                except Exception:
                    log.exception("queue: TLS reports failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, max(0.05, next_scan - time.time())))

    async def send_tls_reports(self, before: datetime.date | None = None) -> int:
        """Queue the TLS-RPT reports of every recorded UTC day before ``before`` (today)
        that has not gone out yet; how many messages were queued (RFC 8460 §4.1: daily)."""
        if self.tls_results is None:
            return 0
        # One sender at a time (the workers of `[server] workers`, hosts sharing the queue),
        # and the day list is read under the lock: a day another runner sent is ".sent" by then.
        try:
            lock = os.open(self.tls_results.dir / ".send.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another runner is sending them right now
            return await self._send_tls_reports(before)
        finally:
            os.close(lock)

    async def _send_tls_reports(self, before: datetime.date | None) -> int:
        assert self.tls_results is not None
        today = before or datetime.datetime.now(datetime.timezone.utc).date()
        try:
            names = sorted(os.listdir(self.tls_results.dir))
        except FileNotFoundError:
            return 0
        sent = 0
        for n in names:
            if not n.endswith(".jsonl"):
                continue
            try:
                day = datetime.date.fromisoformat(n[:-6])
            except ValueError:
                continue
            if day < today:
                sent += await send_reports(self.tls_results, day, self.resolver, self.store.enqueue,
                                           submitter=self.config.hostname, https_context=self.route.verify_tls)
        return sent

    async def _scan(self) -> float:
        """Start a round for every due, unclaimed message; seconds until the next one is due."""
        due, soonest = await asyncio.to_thread(self._survey, frozenset(self._busy))
        due = [qid for qid in due if qid not in self._busy]  # claimed by a round meanwhile
        if due:
            self._busy.update(due)
            task = asyncio.create_task(self._round(due))
            self._rounds.add(task)
            task.add_done_callback(self._rounds.discard)
        return soonest

    def _survey(self, busy: frozenset[str]) -> tuple[list[str], float]:
        """In a worker thread: the due ids and the seconds until the next one is due.

        Each scan costs one ``stat`` per queued message; only envelopes that are new or
        were rewritten since the last scan are read (``QueueStore.save`` renames a new
        ``<id>.env`` into place, so its inode and mtime change; ``queue flush`` saves too),
        so a queue of many deferred messages does not slow the scans a wake-up starts.
        """
        now = time.time()
        due: list[str] = []
        soonest = self.q.scan_interval
        seen: dict[str, tuple[tuple[int, int, int], float]] = {}
        for qid in self.store.list():
            if qid in busy:
                continue
            try:
                st = os.stat(self.store.dir / f"{qid}.env")  # the envelope (mailstack.queue.store layout)
                stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None  # not where we look: read it every time (slower, never wrong)
            memo = self._survey_memo.get(qid)
            if stamp is not None and memo is not None and memo[0] == stamp:
                next_attempt = memo[1]
            else:
                try:
                    next_attempt = self.store.envelope(qid).next_attempt
                except (OSError, ValueError):
                    continue
            if stamp is not None:
                seen[qid] = (stamp, next_attempt)
            if next_attempt <= now:
                due.append(qid)
            else:
                soonest = min(soonest, next_attempt - now)
        self._survey_memo = seen
        return due, soonest

    async def run_once(self) -> None:
        """Deliver every due message once and return (for tests and ``queue flush --now``)."""
        ids = [i for i in await asyncio.to_thread(self.store.list) if i not in self._busy]
        now = time.time()
        due = []
        for qid in ids:
            with contextlib.suppress(OSError, ValueError):
                if (await asyncio.to_thread(self.store.envelope, qid)).next_attempt <= now:
                    due.append(qid)
        self._busy.update(due)
        try:
            await self._round(due)
        finally:
            if self.sessions is not None and self._home is None:  # not a service: nothing may outlive this loop
                await self.sessions.close()

    # -- one round -----------------------------------------------------------------------

    async def _round(self, ids: Sequence[str]) -> None:
        stack = contextlib.ExitStack()
        works: list[_Work] = []
        try:
            for qid in ids:
                held = stack.enter_context(claim(self.store.dir, qid))
                if not held:
                    continue
                try:
                    env, data = await asyncio.to_thread(self.store.load, qid)
                except (OSError, ValueError):
                    continue  # gone meanwhile (delivered by another runner, deleted)
                works.append(_Work(env, data))
            if works:
                await self._deliver(works)
                for w in works:
                    try:
                        await self._finish(w)
                    except Exception:
                        log.exception("queue: cannot update %s", w.env.id)
        finally:
            stack.close()
            self._busy.difference_update(ids)

    async def _is_local(self, domain: str) -> bool:
        if self.directory is None:
            return False
        try:
            return bool(await asyncio.to_thread(self.directory.is_local_domain, domain))
        except Exception:
            raise

    async def _deliver(self, works: list[_Work]) -> None:
        by_domain: dict[str, list[tuple[_Work, list[str]]]] = defaultdict(list)
        local: list[tuple[_Work, list[str]]] = []
        local_cache: dict[str, bool | None] = {}
        for w in works:
            remote: dict[str, list[str]] = defaultdict(list)
            mine: list[str] = []
            for rcpt in w.env.recipients:
                domain = rcpt.rpartition("@")[2].lower()
                if domain not in local_cache:
                    try:
                        local_cache[domain] = await self._is_local(domain)
                    except Exception as e:
                        log.warning("queue: directory lookup for %s failed: %s", domain, e)
                        local_cache[domain] = None
                is_local = local_cache[domain]
                if is_local is None:
                    w.results[rcpt] = RecipientOutcome(rcpt, Reply(451, "4.3.0", "directory unavailable"))
                elif is_local:
                    mine.append(rcpt)
                else:
                    remote[domain].append(rcpt)
            if mine:
                local.append((w, mine))
            for domain, rcpts in remote.items():
                by_domain[domain].append((w, rcpts))
        tasks = [self._deliver_remote(domain, items) for domain, items in by_domain.items()]
        if local:
            tasks.append(self._deliver_local(local))
        await asyncio.gather(*tasks)

    async def _deliver_remote(self, domain: str, items: list[tuple[_Work, list[str]]]) -> None:
        lanes = max(1, min(self.q.max_per_domain, len(items)))
        chunks: list[list[tuple[_Work, list[str]]]] = [items[i::lanes] for i in range(lanes)]
        key = "*relay*" if self.route.relay else domain

        async def lane(chunk: list[tuple[_Work, list[str]]]) -> None:
            async with self._per_domain[key], self._total:
                jobs = [Job(w.env.id, w.env.sender, tuple(rcpts), w.data, w.env.smtputf8,
                            DSNRequest.from_extra(w.env.extra) or None,
                            requiretls=bool(w.env.extra.get("requiretls")),
                            tls_optional=bool(w.env.extra.get("tls_optional"))) for w, rcpts in chunk]
                try:
                    results = await deliver_domain(domain, jobs, self.route)
                except Exception as e:  # a bug must not lose mail: defer it
                    log.exception("queue: delivery to %s failed", domain)
                    results = {j.queue_id: [RecipientOutcome(r, Reply(451, "4.3.0", f"internal error: {type(e).__name__}"))
                                            for r in j.recipients] for j in jobs}
                for w, _rcpts in chunk:
                    for ro in results.get(w.env.id, []):
                        w.results[ro.recipient] = ro

        await asyncio.gather(*(lane(c) for c in chunks))

    def _local_delivery(self) -> tuple[Any, Any]:
        if self._local is None:
            self._local = (
                RcptResolver(self.directory),
                LocalDelivery(self.config.storage.maildir_root, self.config.hostname,
                              max_received=self.config.smtp.max_received_headers, queue=self.store,
                              forwarder=Forwarder.from_config(self.config, self.directory.is_local_domain)
                              if self.directory is not None else None,
                              sieve_global_dir=self.config.sieve.global_dir),
            )
        return self._local  # type: ignore[no-any-return]

    async def _deliver_local(self, items: list[tuple[_Work, list[str]]]) -> None:
        resolver, delivery = self._local_delivery()
        for w, rcpts in items:
            resolutions = []
            for rcpt in rcpts:
                try:
                    resolutions.append(await asyncio.to_thread(resolver.resolve, rcpt))
                except ResolveError as e:
                    w.results[rcpt] = RecipientOutcome(rcpt, e.reply)
            if not resolutions:
                continue
            try:
                results = await delivery.deliver(w.env.sender, resolutions, w.data, queue_id=w.env.id,
                                                 smtputf8=w.env.smtputf8, dsn=DSNRequest.from_extra(w.env.extra),
                                                 requiretls=bool(w.env.extra.get("requiretls")))
            except Exception as e:
                log.exception("queue: local delivery of %s failed", w.env.id)
                for res in resolutions:
                    w.results[res.recipient] = RecipientOutcome(res.recipient, Reply(451, "4.3.0", f"local delivery failed: {type(e).__name__}"))
                continue
            for r in results:
                w.results[r.recipient] = RecipientOutcome(r.recipient, r.reply, "local")

    # -- after a round -------------------------------------------------------------------

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed tries: initial, doubling, capped."""
        return float(min(self.q.retry_initial * (2 ** max(0, attempts - 1)), self.q.retry_max_interval))

    async def _finish(self, w: _Work) -> None:
        env = w.env
        now = time.time()
        size = len(w.data)
        sent = [r for r in env.recipients if r in w.results and w.results[r].outcome is Outcome.SENT]
        failed = [r for r in env.recipients if r in w.results and w.results[r].outcome is Outcome.PERMANENT]
        pending = [r for r in env.recipients if r not in sent and r not in failed]
        expired = now - env.created >= self.q.max_age
        for group in _group_by_reply(w, sent):
            ro = w.results[group[0]]
            log_event("delivered", queue_id=env.id, service="queue", client=None, sender=env.sender,
                      recipients=group, size=size, status="sent", reply=str(ro.reply), relay=ro.remote_mta or "-",
                      tls=ro.tls or "-", delay=f"{now - env.created:.1f}")
        bounced: list[DSNRecipient] = []
        for r in failed:
            ro = w.results[r]
            bounced.append(DSNRecipient(r, ro.reply.status, "failed", str(ro.reply), _mta(ro), last_attempt=now))
        if expired and pending:
            for r in pending:
                got = w.results.get(r)
                diag = str(got.reply) if got else env.extra.get("last_error") or "4.4.7 delivery time expired"
                bounced.append(DSNRecipient(r, got.reply.status if got else "4.4.7", "failed",
                                           f"{diag} (gave up after {self.q.max_age / 86400:g} days)", _mta(got) if got else None,
                                           last_attempt=now))
            failed = failed + pending
            pending = []
        request = DSNRequest.from_extra(env.extra)
        if bounced:
            await asyncio.to_thread(bounce, self.store, hostname=self.config.hostname, keys_dir=self.keys_dir,
                                    queue_id=env.id, sender=env.sender, original=w.data, recipients=bounced,
                                    service="queue", arrival=env.created, request=request)
        # RFC 3461 §4.1 NOTIFY=SUCCESS: "delivered" into a local mailbox, "relayed" to a
        # server that does not offer DSN (§6.2.2); one that does got NOTIFY and reports itself
        succeeded = [DSNRecipient(r, "2.0.0", "delivered" if w.results[r].remote_mta == "local" else "relayed",
                                  str(w.results[r].reply), _mta(w.results[r]), last_attempt=now)
                     for r in sent if request.wants(r, "success") and not w.results[r].dsn_passed]
        if succeeded:
            try:
                await asyncio.to_thread(notify_success, self.store, hostname=self.config.hostname,
                                        keys_dir=self.keys_dir, queue_id=env.id, sender=env.sender,
                                        original=w.data, recipients=succeeded, request=request,
                                        arrival=env.created)
            except OSError:  # the mail went out: a lost notice must not bring it again
                log.exception("queue: cannot queue the success DSN of %s", env.id)
        if not pending:
            await asyncio.to_thread(self.store.remove, env.id)
            release_claim(self.store.dir, env.id)
            return
        attempts = env.attempts + 1
        errors = {r: str(w.results[r].reply) for r in pending if r in w.results}
        last_error = next(iter(errors.values()), env.extra.get("last_error"))
        extra = dict(env.extra)
        extra.update(last_error=last_error, last_attempt=now, errors=errors,
                     done=sorted(set(extra.get("done", [])) | set(sent) | set(failed)))
        next_attempt = now + self.backoff(attempts)
        if (self.q.delay_warning and not extra.get("warned") and now - env.created >= self.q.delay_warning):
            extra["warned"] = True
            warn = [DSNRecipient(r, w.results[r].reply.status if r in w.results else "4.0.0", "delayed",
                                 errors.get(r), _mta(w.results.get(r)), last_attempt=now,
                                 will_retry_until=env.created + self.q.max_age) for r in pending]
            await asyncio.to_thread(warn_delayed, self.store, hostname=self.config.hostname, keys_dir=self.keys_dir,
                                    queue_id=env.id, sender=env.sender, original=w.data, recipients=warn,
                                    arrival=env.created, request=request)
        await asyncio.to_thread(self.store.save, QueueStore.updated(env, recipients=tuple(pending), attempts=attempts,
                                                                     next_attempt=next_attempt, extra=extra))
        for group in _group_by_reply(w, [r for r in pending if r in w.results]):
            ro = w.results[group[0]]
            log_event("deferred", queue_id=env.id, service="queue", client=None, sender=env.sender,
                      recipients=group, size=size, status="deferred", reply=str(ro.reply), relay=_mta(ro),
                      tls=ro.tls or "-",
                      attempts=attempts, next=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next_attempt)))


def _verify_context(config: Config) -> ssl.SSLContext:
    """PKIX and host-name checking for MTA-STS (RFC 8461 §4.2): ``[queue] tls_ca_file``
    or the system's CAs. A file that cannot be read is a start-up error."""
    ca = config.queue.tls_ca_file
    if not ca:
        return ssl.create_default_context()
    path = Path(ca) if Path(ca).is_absolute() else config.base_dir / ca
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as e:
        raise ServiceError(f"[queue] tls_ca_file: cannot load {path}: {e}") from None


def _mta(ro: RecipientOutcome | None) -> str | None:
    return ro.remote_mta if ro is not None else None


def _group_by_reply(w: _Work, rcpts: Sequence[str]) -> list[list[str]]:
    groups: dict[tuple[str, str | None], list[str]] = {}
    for r in rcpts:
        ro = w.results.get(r)
        if ro is None:
            continue
        groups.setdefault((str(ro.reply), ro.remote_mta), []).append(r)
    return list(groups.values())


async def start(ctx: ServiceContext) -> QueueRunner:
    """The ``queue`` service (see ``mailstack.service``)."""
    try:
        relay = relay_settings(ctx.config)
    except ValueError as e:
        raise ServiceError(str(e)) from None
    store = QueueStore(ctx.config.queue.dir)
    runner = QueueRunner(ctx.config, store, resolver_from_config(ctx.config.dns, cache_size=DNS_CACHE_SIZE),
                         directory=ctx.directory,
                         client_tls=ctx.tls.client, relay=relay)
    runner.start_background()
    log.info("queue running on %s%s", store.dir, f" via relay {relay.host}:{relay.port}" if relay else "")
    return runner
