"""``GET /metrics`` after real traffic, read with prometheus-client's own parser.

``mailstack serve`` runs as its own process (its counters start at zero): a message in over
the MX, a recipient refused, a failed and a good IMAP login, a message queued over
submission for a remote domain (no queue runner, so it stays), then a scrape. Who may
scrape: ``[http] metrics_networks`` (the peer's own address), 403 for anyone else.
"""

from __future__ import annotations

import http.client
import imaplib
import json
import re
import smtplib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailstack import metrics
from mailstack.config import config_from_dict
from mailstack.ops.scrape import gauges
from tests.auth.conftest import ALICE, PASSWORD
from tests.ops.conftest import ports_for, running, write_config

ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int, source: str = "127.0.0.1") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(source, 0))
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels`` (exactly one must match)."""
    hits = [v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) == 1, (name, labels, [k for k in found if k[0] == name])
    return hits[0]


def test_counters_move_with_real_traffic(tmp_path: Path) -> None:
    ports = ports_for("smtp", "submission", "imap", "http")
    conf = write_config(tmp_path, ports)
    with running(conf, ports):
        status, ctype, before = scrape(ports["http"])
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        base = samples(before)
        assert not [k for k in base if k[0] == "mailstack_messages_total"]  # a fresh process

        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=20) as s:  # in over the MX
            s.sendmail("sender@elsewhere.test", [ALICE], b"Subject: hi\r\n\r\nhello\r\n")
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                s.sendmail("sender@elsewhere.test", ["nobody@example.test"], b"Subject: no\r\n\r\nno\r\n")
        imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=20)
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(ALICE, "wrong password")
        imap.logout()
        imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=20)
        imap.login(ALICE, PASSWORD)
        imap.logout()
        with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=20) as s:  # queued: no runner
            s.login(ALICE, PASSWORD)
            s.sendmail(ALICE, ["friend@remote.test"], f"From: {ALICE}\r\nSubject: out\r\n\r\nout\r\n".encode())

        status, _, text = scrape(ports["http"])
        assert status == 200
        found = samples(text)

    assert value(found, "mailstack_messages_total", event="accepted", service="smtp", reason="2.0.0") == 1
    assert value(found, "mailstack_messages_total", event="delivered", service="smtp", reason="2.0.0") == 1
    assert value(found, "mailstack_messages_total", event="rejected", service="smtp", reason="5.1.1") == 1
    assert value(found, "mailstack_messages_total", event="queued", service="submission") == 1
    assert value(found, "mailstack_messages_total", event="accepted", service="submission") == 1
    assert value(found, "mailstack_logins_total", service="imap", status="auth_failed") == 1
    assert value(found, "mailstack_logins_total", service="imap", status="ok") == 1
    assert value(found, "mailstack_logins_total", service="submission", status="ok") == 1
    assert value(found, "mailstack_login_failures_total", service="imap", reason="password") == 1
    # one delivery, measured: its latency is in the histogram (and under a generous bound)
    assert value(found, "mailstack_delivery_latency_seconds_count", service="smtp") == 1
    assert value(found, "mailstack_delivery_latency_seconds_bucket", service="smtp", le="+Inf") == 1
    assert value(found, "mailstack_delivery_latency_seconds_bucket", service="smtp", le="60.0") == 1
    # connections since the first scrape (the start-up wait made some): 1 MX session, 2 IMAP, 1 scrape
    for service, n in (("smtp", 1), ("imap", 2), ("submission", 1), ("http", 1)):
        since = value(found, "mailstack_connections_total", service=service, result="accepted")
        assert since - value(base, "mailstack_connections_total", service=service, result="accepted") == n, service
    assert value(found, "mailstack_connections_open", service="http") >= 1  # this scrape
    # scrape-time gauges: the queued message, the certificate made at first start, the disks
    assert value(found, "mailstack_queue_messages") == 1
    assert 0 <= value(found, "mailstack_queue_oldest_age_seconds") < 600
    assert value(found, "mailstack_queue_deferred_messages") == 0
    assert value(found, "mailstack_certificate_error") == 0
    assert value(found, "mailstack_certificate_expiry_timestamp_seconds", hostname="mx.example.test") > 0
    assert value(found, "mailstack_disk_free_bytes", volume="mail") > 0
    assert value(found, "mailstack_disk_free_bytes", volume="queue") > 0
    assert value(found, "mailstack_info", hostname="mx.example.test") == 1


def test_metrics_refused_outside_metrics_networks(tmp_path: Path) -> None:
    ports = ports_for("http")
    conf = write_config(tmp_path, ports, http='metrics_networks = ["127.0.0.1/32"]\n')
    with running(conf, ports):
        status, _, body = scrape(ports["http"], source="127.0.0.2")
        assert status == 403
        assert "mailstack_" not in body
        status, _, body = scrape(ports["http"], source="127.0.0.1")
        assert status == 200 and "mailstack_queue_messages" in body


def test_no_metrics_for_anyone_with_empty_networks(tmp_path: Path) -> None:
    ports = ports_for("http")
    conf = write_config(tmp_path, ports, http="metrics_networks = []\n")
    with running(conf, ports):
        assert scrape(ports["http"])[0] == 403


def test_grafana_dashboard_uses_the_served_names(tmp_path: Path) -> None:
    """Every ``mailstack_*`` name in the shipped dashboard is one a scrape has."""
    dashboard = json.loads((ROOT / "config" / "grafana" / "mailstack.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs for n in re.findall(r"\bmailstack_\w+", e)}
    assert len(used) >= 10
    config = config_from_dict({"storage": {"maildir_root": str(tmp_path)}, "queue": {"dir": str(tmp_path)},
                               "tls": {"cert_file": str(tmp_path / "none.pem"), "key_file": str(tmp_path / "k")}},
                              tmp_path / "mailstack.toml")
    served = {f.name + ("_total" if f.type == "counter" else "")
              for f in [*metrics.families(metrics.snapshot()), *gauges(config)]}
    assert sorted(used - served) == []
