"""`mailstack dns records` advertises ManageSieve by its SRV record (RFC 5804 §1.8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailstack.cli import main

BASE = """
hostname = "mx.example.test"
[database]
url = "sqlite:///var/mailstack.db"
[storage]
maildir_root = "mailboxes"
[queue]
dir = "var/queue"
[imap]
listen = ["127.0.0.1:10143"]
"""


def srv(capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: str) -> dict[str, str]:
    p = tmp_path / "mailstack.toml"
    p.write_text(BASE + extra)
    assert main(["--config", str(p), "dns", "records", "example.test", "--json"]) == 0
    rows = {r["what"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(["--config", str(p), "dns", "records", "example.test"]) == 0
    assert "_sieve._tcp.example.test. 3600 IN SRV " in capsys.readouterr().out
    return rows["SRV _sieve._tcp"]


def test_sieve_srv_points_at_the_public_listener(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    row = srv(capsys, tmp_path, '[sieve]\nmanagesieve_listen = ["127.0.0.1:14190", "192.0.2.1:4190"]\n')
    assert row == {"name": "_sieve._tcp.example.test", "type": "SRV", "value": "0 1 4190 mx.example.test.",
                   "what": "SRV _sieve._tcp"}


def test_sieve_srv_says_not_offered_without_a_listener(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert srv(capsys, tmp_path, "")["value"] == "0 0 0 ."  # RFC 6186 §4's "not offered"
