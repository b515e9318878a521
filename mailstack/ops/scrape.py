"""The gauges of ``GET /metrics`` that are measured when Prometheus asks: queue, certificate, disks.

``gauges(config)`` -> prometheus_client metric families, added to the process's counters
by ``metrics.render``. Blocking (it reads the queue and statvfs): the http service calls
it in a thread, one scrape at a time.

Names (docs/operations.md, "Monitoring"; config/grafana/mailstack.json uses them):

- ``mailstack_queue_messages``, ``mailstack_queue_deferred_messages``,
  ``mailstack_queue_overdue_messages``, ``mailstack_queue_oldest_age_seconds``;
- ``mailstack_certificate_expiry_timestamp_seconds{file,hostname}`` (the certificate's
  notAfter; days left = ``(x - time()) / 86400``), ``mailstack_certificate_error{file}``;
- ``mailstack_disk_free_bytes{volume,path}``, ``mailstack_disk_size_bytes{volume,path}``
  (``volume`` ``mail`` = ``[storage] maildir_root``, ``queue`` = ``[queue] dir``);
- ``mailstack_info{version,hostname}`` = 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailstack import __version__
from mailstack.config import Config
from mailstack.ops.health import certificate_info, disk_info, overdue_grace, queue_summary

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["gauges"]


def gauges(config: Config) -> list[Metric]:
    from prometheus_client.metrics_core import GaugeMetricFamily

    out: list[Metric] = []
    info = GaugeMetricFamily("mailstack_info", "mailstack's version and hostname (always 1).",
                             labels=("version", "hostname"))
    info.add_metric((__version__, config.hostname), 1)
    out.append(info)

    q = queue_summary(config.queue.dir, grace=overdue_grace(config.queue.scan_interval))
    out.append(GaugeMetricFamily("mailstack_queue_messages", "Messages in the outbound queue.", value=q.size))
    out.append(GaugeMetricFamily("mailstack_queue_deferred_messages",
                                 "Queued messages tried at least once (a lower bound past the scan limit).",
                                 value=q.deferred))
    out.append(GaugeMetricFamily("mailstack_queue_overdue_messages",
                                 "Queued messages due for longer than the runner's grace: no runner works the queue.",
                                 value=q.overdue))
    out.append(GaugeMetricFamily("mailstack_queue_oldest_age_seconds",
                                 "Age of the oldest queued message (0 when the queue is empty).",
                                 value=q.oldest_seconds or 0.0))

    cert = certificate_info(config.tls.cert_file)
    expiry = GaugeMetricFamily("mailstack_certificate_expiry_timestamp_seconds",
                               "notAfter of the TLS certificate in use, as a Unix time.", labels=("file", "hostname"))
    error = GaugeMetricFamily("mailstack_certificate_error", "1 when the certificate file cannot be read.",
                              labels=("file",))
    if cert.not_after is not None:
        expiry.add_metric((cert.file, cert.hostname or ""), cert.not_after.timestamp())
    error.add_metric((cert.file,), 0 if cert.error is None else 1)
    out += [expiry, error]

    free = GaugeMetricFamily("mailstack_disk_free_bytes", "Bytes an unprivileged writer may still use.",
                             labels=("volume", "path"))
    size = GaugeMetricFamily("mailstack_disk_size_bytes", "Size of the file system.", labels=("volume", "path"))
    for volume, path in (("mail", config.storage.maildir_root), ("queue", config.queue.dir)):
        d = disk_info(path)
        if d.free_bytes is not None and d.total_bytes is not None:
            free.add_metric((volume, d.path), d.free_bytes)
            size.add_metric((volume, d.path), d.total_bytes)
    out += [free, size]
    return out
