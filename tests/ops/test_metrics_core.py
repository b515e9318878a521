"""``mailstack.metrics`` without a server: counts from many threads add up exactly, counts of
ended threads stay, label sets are capped, and the mail log's replies become reasons."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from mailstack import metrics
from mailstack.maillog import log_event
from mailstack.replies import Reply

TEST_COUNTER = metrics.CounterDef("mailstack_test_core", "test only", ("service", "reason"))


def total(name: str, **labels: str) -> float:
    snap = metrics.snapshot()
    want = tuple(labels.values())
    return sum(v for (n, ls), v in snap.counters.items() if n == name and ls[:len(want)] == want)


def test_threads_count_without_losing_an_increment() -> None:
    n, per = 8, 20_000
    go = threading.Barrier(n)

    def work() -> None:
        go.wait()
        for _ in range(per):
            metrics.inc(TEST_COUNTER, "threads", "x")

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the threads have ended: their counts are folded into the process's, not lost
    assert total(TEST_COUNTER.name, service="threads") == n * per
    assert total(TEST_COUNTER.name, service="threads") == n * per  # a second scrape sees the same


def test_label_sets_are_capped() -> None:
    for i in range(metrics.MAX_SERIES + 100):
        metrics.inc(TEST_COUNTER, "cap", f"r{i}")
    metrics.inc(TEST_COUNTER, "cap2", "new")  # a new service once full: one more "other" set
    snap = metrics.snapshot()
    mine = {ls: v for (name, ls), v in snap.counters.items() if name == TEST_COUNTER.name}
    assert len(mine) <= metrics.MAX_SERIES
    assert sum(v for ls, v in mine.items() if ls[0] != "threads") == metrics.MAX_SERIES + 101  # none lost
    assert mine[("cap", "other")] > 100
    assert mine[("cap2", "other")] == 1
    for i in range(metrics.MAX_SERIES):  # services by the hundred: at last everything is "other"
        metrics.inc(TEST_COUNTER, f"s{i}", "x")
    mine = {ls: v for (name, ls), v in metrics.snapshot().counters.items() if name == TEST_COUNTER.name}
    assert len(mine) == metrics.MAX_SERIES and mine[("other", "other")] > 0


def test_mail_log_lines_are_counted_with_their_reason() -> None:
    service = "test-core"
    log_event("rejected", queue_id=None, service=service, client="192.0.2.1", sender="a@b.test",
              recipients=["x@y.test"], size=None, status="rejected", reply=Reply(550, "5.1.1", "unknown"))
    log_event("rejected", queue_id=None, service=service, client="192.0.2.1", sender=None, recipients=None,
              size=None, status="evicted", reply=Reply(421, "", "closing"))
    log_event("delivered", queue_id="X", service=service, client=None, sender="a@b.test", recipients=["x@y.test"],
              size=5, status="sent", reply="250 2.6.0 Ok: queued as 12", delay="2.5")
    log_event("auth", queue_id=None, service=service, client="192.0.2.1", sender=None, recipients=None, size=None,
              status="auth_failed", reply=None, user="u", mechanism="PLAIN", reason="blocked")
    text = metrics.render().decode()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(text) for s in f.samples if s.labels.get("service") == service}
    assert found[("mailstack_messages_total", (("event", "rejected"), ("reason", "5.1.1"), ("service", service)))] == 1
    assert found[("mailstack_messages_total", (("event", "rejected"), ("reason", "evicted"), ("service", service)))] == 1
    assert found[("mailstack_messages_total", (("event", "delivered"), ("reason", "2.6.0"), ("service", service)))] == 1
    assert found[("mailstack_delivery_latency_seconds_bucket", (("le", "2.5"), ("service", service)))] == 1
    assert found[("mailstack_delivery_latency_seconds_bucket", (("le", "1.0"), ("service", service)))] == 0
    assert found[("mailstack_delivery_latency_seconds_sum", (("service", service),))] == 2.5
    assert found[("mailstack_logins_total", (("service", service), ("status", "auth_failed")))] == 1
    assert found[("mailstack_login_failures_total", (("reason", "blocked"), ("service", service)))] == 1
