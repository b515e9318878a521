"""The queue: the durable spool that the MX, submission, delivery (remote alias targets,
retries), Sieve redirects, bounces and the CLI all write to, and the queue runner reads.

It belongs to no protocol, so it sits below all of them:

- ``store``: ``QueueStore`` (the on-disk format, atomic enqueue, the per-message
  ``claim``), imported by delivery, the SMTP services and the CLI;
- ``wake``: waking the runners after an enqueue (in this process and across processes);
- ``bounce``: the one way a DSN is made and sent (RFC 3464 via ``mail.dsn``, DKIM-signed,
  one mail-log line, queued from ``<>``), for the MX, the runner and ``queue delete --bounce``.

The runner that delivers what waits here (the ``queue`` service) is
``mailstack.smtp.queue_runner``, not a module of this package: it drives the outbound
SMTP client (``smtp.outbound``) and local delivery (``mailstack.delivery``), both above
the queue, so putting it here would point arrows upwards. The arrows:

    smtp (mx, submission, lmtp, queue_runner, outbound), cli  ->  delivery  ->  queue
    queue  ->  mail (dsn, dkim), maillog, replies, storage.safeio

Nothing in this package imports delivery, a protocol, or the runner
(``tests/test_imports.py``).
"""

from __future__ import annotations

from mailstack.queue.store import LOCK_DIR, QueuedEnvelope, QueueIdError, QueueStore, claim, new_queue_id, release_claim
from mailstack.queue.wake import WAKE_FILE, notify, touch_wake

__all__ = [
    "LOCK_DIR",
    "WAKE_FILE",
    "QueueIdError",
    "QueueStore",
    "QueuedEnvelope",
    "claim",
    "new_queue_id",
    "notify",
    "release_claim",
    "touch_wake",
]
