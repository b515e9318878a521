"""`mailstack dns records` / `dns check` with the http records, against the test DNS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailstack.cli import main
from tests.dnsserver import TestDNS

D = "example.test"


@pytest.fixture
def config(tmp_path: Path, dns: TestDNS) -> Path:
    # nothing listens here: fixed, distinct ports
    p = tmp_path / "mailstack.toml"
    p.write_text(f"""
hostname = "mx.example.test"
[database]
url = "sqlite:///var/mailstack.db"
[storage]
maildir_root = "mailboxes"
[queue]
dir = "var/queue"
[smtp]
listen = ["127.0.0.1:10025"]
[submission]
listen = ["127.0.0.1:10587"]
tls_listen = ["127.0.0.1:10465"]
[imap]
tls_listen = ["127.0.0.1:10993"]
[http]
listen = ["127.0.0.1:10080"]
tls_listen = ["127.0.0.1:8443"]
mta_sts_mode = "enforce"
[dns]
nameservers = ["{dns.address}"]
timeout = 2
""")
    return p


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    status = main(["--config", str(config), *args])
    return status, capsys.readouterr().out


def records(capsys: pytest.CaptureFixture[str], config: Path) -> list[dict[str, str]]:
    status, out = run(capsys, config, "dns", "records", D, "--json")
    assert status == 0
    rows: list[dict[str, str]] = json.loads(out)
    return rows


def publish(dns: TestDNS, rows: list[dict[str, str]], skip: tuple[str, ...] = ()) -> None:
    dns.add("mx.example.test", "A", "192.0.2.25")
    for r in rows:
        if r["what"] not in skip:
            dns.add(r["name"], r["type"], r["value"].rstrip(".") if r["type"] in ("MX", "CNAME") else r["value"])


def test_records_include_http_names(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    by = {r["what"]: r for r in records(capsys, config)}
    assert (by["autoconfig"]["name"], by["autoconfig"]["type"], by["autoconfig"]["value"]) == (
        "autoconfig.example.test", "CNAME", "mx.example.test.")
    assert by["Autodiscover"]["name"] == "autodiscover.example.test"
    assert by["MTA-STS host"]["name"] == "mta-sts.example.test"
    assert by["SRV _autodiscover._tcp"]["value"] == "0 1 8443 mx.example.test."
    assert by["MTA-STS"]["name"] == "_mta-sts.example.test"
    assert by["MTA-STS"]["value"].startswith("v=STSv1; id=")
    assert by["TLS-RPT"] == {"name": "_smtp._tls.example.test", "type": "TXT",
                             "value": "v=TLSRPTv1; rua=mailto:postmaster@example.test", "what": "TLS-RPT"}
    assert by["SRV _imaps._tcp"]["value"].startswith("0 1 ")  # RFC 6186 SRV as before
    status, text = run(capsys, config, "dns", "records", D)
    assert status == 0
    assert "autoconfig.example.test. 3600 IN CNAME mx.example.test." in text
    assert '_smtp._tls.example.test. 3600 IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.test"' in text


def test_mta_sts_id_follows_the_policy(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    before = {r["what"]: r for r in records(capsys, config)}["MTA-STS"]["value"]
    config.write_text(config.read_text().replace('mta_sts_mode = "enforce"', 'mta_sts_mode = "testing"'))
    after = {r["what"]: r for r in records(capsys, config)}["MTA-STS"]["value"]
    assert before != after


def test_check_complete_zone(capsys: pytest.CaptureFixture[str], config: Path, dns: TestDNS) -> None:
    rows = records(capsys, config)
    publish(dns, rows)
    status, out = run(capsys, config, "dns", "check", D)
    assert status == 0, out
    verdicts = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert len(verdicts) == len(rows), out  # one verdict per record (an empty output is no pass)
    assert all(line.startswith("ok") for line in verdicts), out


def test_check_accepts_a_record_instead_of_cname(capsys: pytest.CaptureFixture[str], config: Path,
                                                 dns: TestDNS) -> None:
    publish(dns, records(capsys, config), skip=("autoconfig",))
    dns.add("autoconfig.example.test", "A", "192.0.2.25")
    status, out = run(capsys, config, "dns", "check", D)
    assert status == 0, out


def test_check_incomplete_zone(capsys: pytest.CaptureFixture[str], config: Path, dns: TestDNS) -> None:
    rows = records(capsys, config)
    publish(dns, rows, skip=("MTA-STS", "TLS-RPT", "autoconfig", "Autodiscover", "MTA-STS host"))
    dns.add("autoconfig.example.test", "A", "198.51.100.1")  # somewhere else
    dns.add("autodiscover.example.test", "CNAME", "other.example.net")
    dns.add("_mta-sts.example.test", "TXT", "v=STSv1; id=old")
    status, out = run(capsys, config, "dns", "check", D, "--json")
    assert status == 1
    states = {r["what"]: r["state"] for r in json.loads(out)}
    assert states["autoconfig"] == "different"
    assert states["Autodiscover"] == "different"
    assert states["MTA-STS host"] == "missing"
    assert states["MTA-STS"] == "different"
    assert states["TLS-RPT"] == "missing"
    assert states["MX"] == states["SPF"] == states["SRV _autodiscover._tcp"] == "ok"
    status, text = run(capsys, config, "dns", "check", D)
    assert status == 1
    assert any(line.startswith("missing") and "_smtp._tls.example.test" in line for line in text.splitlines())


def test_no_http_no_http_records(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    text = config.read_text()
    start = text.index("[http]")
    config.write_text(text[:start] + "[http]\nlisten = []\n" + text[text.index("[dns]"):])
    whats = {r["what"] for r in records(capsys, config)}
    assert not whats & {"autoconfig", "Autodiscover", "MTA-STS", "TLS-RPT", "MTA-STS host"}
