"""The process's counters for ``GET /metrics``: cheap to bump on the event loop, read at scrape.

Every service bumps counters on its hot paths (a mail-log line, an accepted connection), so
bumping must cost next to nothing and never wait: each thread counts into its own plain
dict (no lock: only that thread writes it), and a scrape adds the dicts of every thread up.
A dict's ``copy()`` is one C call under the GIL, so a scrape reads a consistent copy of a
dict another thread is writing; no increment is ever lost (the usual ``d[k] += 1`` from
several threads can lose one, a lock per increment would make the loop wait for the IMAP
worker threads). Locks are taken only for what happens once: a thread's first count, a
label set's first appearance, a scrape.

What is counted (the names an operator's dashboards and alerts use; docs/operations.md):

- ``mailstack_messages_total{event,service,reason}``: one per mail-log line
  (``maillog.log_event``): ``event`` accepted|rejected|deferred|delivered|bounced|queued,
  ``reason`` the RFC 3463 status of the reply (``5.1.1``), else the line's ``status``;
- ``mailstack_logins_total{service,status}`` (status ok|auth_failed|auth_busy|
  auth_unavailable) and ``mailstack_login_failures_total{service,reason}``
  (reason password|blocked): the ``event=auth`` lines;
- ``mailstack_connections_total{service,result}`` (accepted|refused): ``net.ConnectionLimits``;
- ``mailstack_delivery_latency_seconds{service}``: a histogram of the ``delay=`` of every
  ``event=delivered`` line (seconds from arrival to the Maildir or the remote ``250``).

Gauges that are cheap to read but live elsewhere (open connections) are sources registered
here and read at scrape time; the scrape-time checks of disk, queue and certificates live
in ``mailstack.ops``.

Invariants:
- counts are per process (``mailstack serve`` runs every service in one process; separate
  ``serve NAME`` processes each count their own and only the one running ``http`` is seen),
  except that the workers of one ``serve`` (``[server] workers``) add up: ``set_peers``;
- a metric has at most ``MAX_SERIES`` label sets: later new ones are counted under
  ``reason``/``status``/``result`` = ``other`` (every label ``other`` when even that set
  would be new), so a remote MX cannot grow memory without bound by inventing reply codes;
- nothing here does I/O, and ``prometheus_client`` is imported only to render a scrape.
"""

from __future__ import annotations

import bisect
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "CONNECTIONS",
    "CONTENT_TYPE",
    "DELIVERY_LATENCY",
    "LOGINS",
    "LOGIN_FAILURES",
    "MAX_SERIES",
    "MESSAGES",
    "CounterDef",
    "HistogramDef",
    "inc",
    "observe",
    "record_event",
    "render",
    "set_peers",
    "watch_connections",
]

MAX_SERIES = 500  # label sets per metric (services x events x reasons is well below)
OTHER_ROOM = 50  # of which kept for the "other" sets, so one per service still fits
OTHER = "other"
# The text format generate_latest() writes (Prometheus exposition format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class CounterDef:
    """A counter: its name without ``_total``, its help text, its label names."""

    name: str
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class HistogramDef:
    """A histogram: upper bounds of its buckets (ascending; ``+Inf`` is implied)."""

    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]


MESSAGES = CounterDef("mailstack_messages", "Mail-log events: messages accepted, rejected, deferred, delivered, "
                      "bounced or queued, by service and reason (RFC 3463 status or the log's status).",
                      ("event", "service", "reason"))
LOGINS = CounterDef("mailstack_logins", "Login attempts by service and outcome (ok, auth_failed, auth_busy, "
                    "auth_unavailable).", ("service", "status"))
LOGIN_FAILURES = CounterDef("mailstack_login_failures", "Failed logins (wrong password or a blocked account or "
                            "network), by service and reason.", ("service", "reason"))
CONNECTIONS = CounterDef("mailstack_connections", "Connections by service: accepted, or refused over the "
                         "connection caps.", ("service", "result"))
# From a local fsync (milliseconds) to a remote MX that was down for days (the queue's
# 5-day max_age): Postfix's delays= spans the same range.
DELIVERY_LATENCY = HistogramDef(
    "mailstack_delivery_latency_seconds", "Seconds from a message's arrival to its delivery (Maildir or remote 250).",
    ("service",), (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
                   86400.0, 432000.0))
COUNTERS = (MESSAGES, LOGINS, LOGIN_FAILURES, CONNECTIONS)
HISTOGRAMS = (DELIVERY_LATENCY,)

Key = tuple[str, tuple[str, ...]]  # (metric name, label values)


# ---------------------------------------------------------------------------
# per-thread shards


class _Shard:
    """One thread's counts; only that thread writes them."""

    __slots__ = ("counters", "histograms", "__weakref__")

    def __init__(self) -> None:
        self.counters: dict[Key, float] = {}
        # key -> [count per bucket (the last one: +Inf) ..., sum]
        self.histograms: dict[Key, list[float]] = {}


_local = threading.local()
_lock = threading.Lock()  # first count of a thread, a new label set, a scrape
_live: list[tuple[weakref.ref[threading.Thread], _Shard]] = []
_retired = _Shard()  # the counts of threads that have ended (written under _lock only)
_series: dict[str, set[tuple[str, ...]]] = {}


def _shard() -> _Shard:
    shard: _Shard | None = getattr(_local, "shard", None)
    if shard is None:
        shard = _Shard()
        with _lock:
            _live.append((weakref.ref(threading.current_thread()), shard))
        _local.shard = shard
    return shard


def _admit(name: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The label set to count under: itself, or with its last label ``other`` past MAX_SERIES."""
    known = _series.get(name)
    if known is not None and labels in known:
        return labels
    with _lock:
        known = _series.setdefault(name, set())
        if labels in known:
            return labels
        if len(known) >= MAX_SERIES - OTHER_ROOM:
            labels = (*labels[:-1], OTHER)
            if labels not in known and len(known) >= MAX_SERIES - 1:  # the last place: all "other"
                labels = (OTHER,) * len(labels)
        known.add(labels)
        return labels


def inc(metric: CounterDef, *labels: str, amount: float = 1.0) -> None:
    """Add ``amount`` to the counter's series ``labels`` (as many values as label names)."""
    key = (metric.name, _admit(metric.name, labels))
    counters = _shard().counters
    counters[key] = counters.get(key, 0.0) + amount


def observe(metric: HistogramDef, value: float, *labels: str) -> None:
    """Count ``value`` into the histogram's series ``labels``."""
    key = (metric.name, _admit(metric.name, labels))
    histograms = _shard().histograms
    row = histograms.get(key)
    if row is None:
        row = histograms[key] = [0.0] * (len(metric.buckets) + 2)
    row[bisect.bisect_left(metric.buckets, value)] += 1
    row[-1] += value


# ---------------------------------------------------------------------------
# what the services report


_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _reason(reply: object, status: str) -> str:
    """The RFC 3463 status of ``reply`` (a ``Reply`` or its text), else ``status``."""
    if reply is None:
        return status
    enhanced = getattr(reply, "enhanced", None)
    if isinstance(enhanced, str):
        return enhanced or status
    m = _STATUS_RE.search(str(reply)[:80])
    return m.group(0) if m else status


def record_event(event: str, service: str, status: str, reply: object, extra: Mapping[str, object]) -> None:
    """Count one mail-log line (``maillog.log_event`` calls this for every line)."""
    if event == "auth":
        inc(LOGINS, service, status)
        if status == "auth_failed":
            inc(LOGIN_FAILURES, service, "blocked" if extra.get("reason") == "blocked" else "password")
        return
    inc(MESSAGES, event, service, _reason(reply, status))
    if event == "delivered":
        delay = extra.get("delay")
        if delay is not None:
            try:
                seconds = float(str(delay))
            except ValueError:
                return
            if seconds >= 0:
                observe(DELIVERY_LATENCY, seconds, service)


class _Connections(Protocol):
    service: str

    @property
    def active(self) -> int: ...


_open: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_connections(limits: _Connections) -> None:
    """Report ``limits.active`` as ``mailstack_connections_open{service=limits.service}``."""
    with _lock:
        _open.add(limits)


# ---------------------------------------------------------------------------
# a scrape


@dataclass(frozen=True)
class Snapshot:
    counters: dict[Key, float]
    histograms: dict[Key, list[float]]
    open_connections: dict[str, int]


def snapshot() -> Snapshot:
    """Every thread's counts added up (and the shards of ended threads folded away)."""
    counters: dict[Key, float] = {}
    histograms: dict[Key, list[float]] = {}
    with _lock:
        keep = []
        for ref, shard in _live:
            thread = ref()
            if thread is None or not thread.is_alive():
                _fold(_retired, shard)  # it will never write again
            else:
                keep.append((ref, shard))
        _live[:] = keep
        shards = [_retired, *(s for _, s in keep)]
        watched = list(_open)
    for shard in shards:
        for key, value in shard.counters.copy().items():
            counters[key] = counters.get(key, 0.0) + value
        for key, row in shard.histograms.copy().items():
            row = list(row)
            total = histograms.get(key)
            histograms[key] = row if total is None else [a + b for a, b in zip(total, row)]
    open_connections: dict[str, int] = {}
    for limits in watched:
        open_connections[limits.service] = open_connections.get(limits.service, 0) + int(limits.active)
    return Snapshot(counters, histograms, open_connections)


def _fold(into: _Shard, shard: _Shard) -> None:
    for key, value in shard.counters.copy().items():
        into.counters[key] = into.counters.get(key, 0.0) + value
    for key, row in shard.histograms.copy().items():
        total = into.histograms.get(key)
        into.histograms[key] = list(row) if total is None else [a + b for a, b in zip(total, row)]


def families(snap: Snapshot) -> list[Metric]:
    """The snapshot as prometheus_client metric families (every defined metric, even at 0)."""
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    out: list[Metric] = []
    for c in COUNTERS:
        fam = CounterMetricFamily(c.name, c.help, labels=c.labels)
        for (name, labels), value in sorted(snap.counters.items()):
            if name == c.name:
                fam.add_metric(labels, value)
        out.append(fam)
    for h in HISTOGRAMS:
        hfam = HistogramMetricFamily(h.name, h.help, labels=h.labels)
        for (name, labels), row in sorted(snap.histograms.items()):
            if name != h.name:
                continue
            cumulative, buckets = 0.0, []
            for bound, n in zip((*h.buckets, float("inf")), row[:-1]):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hfam.add_metric(labels, buckets, row[-1])
        out.append(hfam)
    gauge = GaugeMetricFamily("mailstack_connections_open", "Connections (sessions) open now, by service.",
                              labels=("service",))
    for service, n in sorted(snap.open_connections.items()):
        gauge.add_metric((service,), n)
    out.append(gauge)
    return out


# ---------------------------------------------------------------------------
# other processes (``[server] workers``: mailstack.supervisor)

_peers: Callable[[], Iterable[Snapshot]] | None = None


def set_peers(source: Callable[[], Iterable[Snapshot]] | None) -> None:
    """``source()`` gives the snapshots of the other worker processes; a scrape adds them
    to this process's own, so one scrape counts every worker. None: this process only."""
    global _peers
    _peers = source


def merge(snaps: Iterable[Snapshot]) -> Snapshot:
    """Several snapshots added up (counters, histogram rows, open connections)."""
    counters: dict[Key, float] = {}
    histograms: dict[Key, list[float]] = {}
    open_connections: dict[str, int] = {}
    for snap in snaps:
        for key, value in snap.counters.items():
            counters[key] = counters.get(key, 0.0) + value
        for key, row in snap.histograms.items():
            total = histograms.get(key)
            histograms[key] = list(row) if total is None else [a + b for a, b in zip(total, row)]
        for service, n in snap.open_connections.items():
            open_connections[service] = open_connections.get(service, 0) + n
    return Snapshot(counters, histograms, open_connections)


def to_json(snap: Snapshot) -> dict[str, Any]:
    """A snapshot as JSON-able data (``from_json`` reads it back)."""
    return {"counters": [[n, list(ls), v] for (n, ls), v in snap.counters.items()],
            "histograms": [[n, list(ls), row] for (n, ls), row in snap.histograms.items()],
            "open_connections": dict(snap.open_connections)}


def from_json(data: Any) -> Snapshot:
    """``to_json``'s data back; ValueError when it is not that shape."""
    try:
        counters = {(str(n), tuple(map(str, ls))): float(v) for n, ls, v in data["counters"]}
        histograms = {(str(n), tuple(map(str, ls))): [float(x) for x in row] for n, ls, row in data["histograms"]}
        open_connections = {str(k): int(v) for k, v in data["open_connections"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"not a metrics snapshot: {e}") from None
    return Snapshot(counters, histograms, open_connections)


class _Collector:
    def __init__(self, extra: Callable[[], Iterable[Metric]]) -> None:
        self.extra = extra

    def collect(self) -> Iterable[Metric]:
        snap = snapshot()
        peers = _peers
        if peers is not None:
            snap = merge([snap, *peers()])
        yield from families(snap)
        yield from self.extra()


def render(extra: Callable[[], Iterable[Metric]] = lambda: ()) -> bytes:
    """The Prometheus text exposition of this process's counters plus ``extra()``'s families.

    Blocking when ``extra`` is (the scrape-time checks): call it in a thread.
    """
    from prometheus_client.exposition import generate_latest

    return generate_latest(_Collector(extra))
