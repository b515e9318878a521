"""TLS-RPT with several queue runners on one spool (``[server] workers``, hosts sharing the
queue): a day's report goes out once, whichever runner looks first (RFC 8460 §4.1)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mailstack.dns import resolver_from_config
from mailstack.queue import QueueStore
from mailstack.smtp.queue_runner import QueueRunner
from mailstack.smtp.tlsrpt import Attempt
from tests.dnsserver import TestDNS
from tests.outbound.conftest import Remote, make_config


def test_two_runners_at_once_send_a_days_report_once(tmp_path: Path, dns: TestDNS, remote: Remote) -> None:
    dns.add("_smtp._tls.remote.test", "TXT", "v=TLSRPTv1; rua=mailto:tls-reports@reports.test")
    cfg = make_config(tmp_path, dns, remote.port)
    store = QueueStore(cfg.queue.dir)
    store.ensure()

    async def both() -> list[int]:
        runners = [QueueRunner(cfg, QueueStore(cfg.queue.dir), resolver_from_config(cfg.dns)) for _ in range(2)]
        log = runners[0].tls_results
        assert log is not None
        log.record(Attempt("remote.test", "sts", ("version: STSv1", "mode: enforce"), "mx.remote.test",
                           "192.0.2.1", "certificate-not-trusted"), when=time.time() - 86400)
        return list(await asyncio.gather(*(r.send_tls_reports() for r in runners)))

    assert sorted(asyncio.run(both())) == [0, 1]
    (qid,) = store.list()
    assert store.load(qid)[0].recipients == ("tls-reports@reports.test",)
