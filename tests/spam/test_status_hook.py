"""``mailstack status`` asks the real rspamd when ``[spam] rspamd_url`` is set: up -> ok, not
answering -> degraded (mail still flows, unscanned), not configured -> nothing reported."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import free_port
from tests.ops.conftest import ports_for, running, write_config
from tests.ops.test_status import status_json
from tests.spam.rspamd_peer import Rspamd


def test_status_reports_the_scanner(tmp_path: Path, rspamd: Rspamd) -> None:
    ports = ports_for("smtp")
    for sub in ("up", "dead"):
        (tmp_path / sub).mkdir()
    up = write_config(tmp_path / "up", ports, extra=f'[spam]\nrspamd_url = "{rspamd.url}"\n')
    with running(up, ports):
        code, report = status_json(up)
        assert code == 0, report["problems"]
        assert report["spam"]["up"] is True and rspamd.url in report["spam"]["detail"]
        dead_url = f"http://127.0.0.1:{free_port()}"
        dead = write_config(tmp_path / "dead", ports, extra=f'[spam]\nrspamd_url = "{dead_url}"\n')
        code, report = status_json(dead)
        assert code == 1 and report["status"] == "degraded"
        assert report["spam"]["up"] is False
        assert any("spam" in p for p in report["problems"]), report["problems"]
