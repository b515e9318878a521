"""systemd/: every unit passes `systemd-analyze verify`, is hardened alike, and fits the
production config (capabilities for its ports, writable paths for its files)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailstack.config import load_config
from mailstack.serve import SERVICES
from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "systemd"
PRODUCTION = ROOT / "config" / "mailstack.production.toml"
EXEC = "/usr/bin/mailstack --config /etc/mailstack/mailstack.toml serve"

SPLIT_UNITS = [f"mailstack-{name}.service" for name in SERVICES]
BACKUP_UNITS = ["mailstack-backup.service", "mailstack-backup.timer"]
ALL_UNITS = ["mailstack.service", *SPLIT_UNITS, "mailstack.target", *BACKUP_UNITS]

HARDENING = {
    "User": "mailstack",
    "Group": "mailstack",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd keys may repeat; comments and blanks dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_there_is_a_unit_per_service_and_nothing_else() -> None:
    expected = set(ALL_UNITS) | {"mailstack.sysusers", "mailstack.tmpfiles", "README.md"}
    assert {p.name for p in UNIT_DIR.iterdir()} == expected


def _verify(units: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze")
    # ExecStart must name an existing executable: point it at this interpreter.
    for unit in units:
        text = unit.read_text().replace("ExecStart=/usr/bin/mailstack ", f"ExecStart={sys.executable} -m mailstack ")
        (tmp_path / unit.name).write_text(text)
    return subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / u.name) for u in units)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("unit", ALL_UNITS)
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    # The other units sit next to it, as they would in /usr/lib/systemd/system.
    for other in UNIT_DIR.glob("mailstack*.*"):
        if other.suffix in (".service", ".target", ".timer"):
            text = other.read_text().replace("ExecStart=/usr/bin/mailstack ", f"ExecStart={sys.executable} -m mailstack ")
            (tmp_path / other.name).write_text(text)
    result = _verify([UNIT_DIR / unit], tmp_path)
    # verify exits 0 on unknown keys and bad values too (it only warns): any output is a failure.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_verify_catches_a_bad_key(tmp_path: Path) -> None:
    """The check above would notice a typo: systemd-analyze reports it on stderr."""
    bad = tmp_path / "src" / "mailstack-smtp.service"
    bad.parent.mkdir()
    bad.write_text((UNIT_DIR / "mailstack-smtp.service").read_text().replace("ProtectHome=", "ProtectHomes="))
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(UNIT_DIR / "mailstack.target", out)
    result = _verify([bad], out)
    assert "ProtectHomes" in result.stderr


@pytest.mark.parametrize("unit", ["mailstack.service", *SPLIT_UNITS])
def test_service_units_are_notify_and_hardened(unit: str) -> None:
    service = parse_unit(UNIT_DIR / unit)["Service"]
    name = unit.removeprefix("mailstack").removeprefix("-").removesuffix(".service")
    assert service["ExecStart"] == [f"{EXEC} {name}".rstrip()]
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]
    # `systemctl reload`: SIGHUP re-reads the config and the certificates (mailstack.serve)
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{unit}: {key}"
    assert "@system-service" in service["SystemCallFilter"]
    assert service["StateDirectory"] == ["mailstack"] and service["RuntimeDirectory"] == ["mailstack"]
    # several units share /run/mailstack: stopping one must not remove the others' sockets
    assert service["RuntimeDirectoryPreserve"] == ["yes"]


@pytest.mark.parametrize("unit", SPLIT_UNITS)
def test_split_units_belong_to_the_target(unit: str) -> None:
    sections = parse_unit(UNIT_DIR / unit)
    assert sections["Unit"]["PartOf"] == ["mailstack.target"]
    assert sections["Install"]["WantedBy"] == ["mailstack.target"]


def test_single_process_unit_conflicts_with_the_split_units() -> None:
    sections = parse_unit(UNIT_DIR / "mailstack.service")
    assert sections["Unit"]["Conflicts"] == ["mailstack.target"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def _privileged_services() -> set[str]:
    cfg = load_config(PRODUCTION)
    return {name for name in SERVICES if name != "queue"
            and any(a.kind == "tcp" and a.port < 1024 for a, _ in cfg.listeners(name))}


@pytest.mark.parametrize("unit", ["mailstack.service", *SPLIT_UNITS])
def test_capabilities_fit_the_production_ports(unit: str) -> None:
    service = parse_unit(UNIT_DIR / unit)["Service"]
    name = unit.removeprefix("mailstack").removeprefix("-").removesuffix(".service")
    needs = name in _privileged_services() if name else bool(_privileged_services())
    caps = ["CAP_NET_BIND_SERVICE"] if needs else [""]
    assert service["CapabilityBoundingSet"] == caps
    assert service["AmbientCapabilities"] == caps


def test_units_can_write_where_the_production_config_writes() -> None:
    cfg = load_config(PRODUCTION)
    service = parse_unit(UNIT_DIR / "mailstack.service")["Service"]
    writable = [Path(p.lstrip("-")) for v in service["ReadWritePaths"] for p in v.split()]
    writable += [Path("/var/lib") / service["StateDirectory"][0], Path("/run") / service["RuntimeDirectory"][0]]
    db = Path(cfg.database.url.removeprefix("sqlite:///"))
    needed = [cfg.storage.maildir_root, cfg.queue.dir, cfg.tls.cert_file.parent, cfg.tls.key_file.parent, db.parent]
    needed += [a.path.parent for a, _ in cfg.listeners("lmtp") if a.path is not None]
    for path in needed:
        assert any(path == w or w in path.parents for w in writable), f"{path} is not writable for the units"
    # and every unit has the same sandbox paths
    for unit in SPLIT_UNITS:
        assert parse_unit(UNIT_DIR / unit)["Service"]["ReadWritePaths"] == service["ReadWritePaths"], unit


def test_sysusers_and_tmpfiles_make_the_user_and_the_paths(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    r = subprocess.run([sysusers, f"--root={tmp_path}", str(UNIT_DIR / "mailstack.sysusers")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    uid = int(passwd["mailstack"][2])
    assert passwd["mailstack"][6].endswith("nologin")
    r = subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(UNIT_DIR / "mailstack.tmpfiles")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = load_config(PRODUCTION)
    for path in (cfg.storage.maildir_root, cfg.queue.dir, cfg.tls.cert_file.parent):
        made = tmp_path / path.relative_to("/")
        assert made.is_dir(), path
        assert made.stat().st_uid == uid, path


def test_the_backup_unit_is_hardened_and_writes_only_its_destination() -> None:
    service = parse_unit(UNIT_DIR / "mailstack-backup.service")["Service"]
    assert service["Type"] == ["oneshot"]
    (exec_start,) = service["ExecStart"]
    argv = exec_start.split()
    assert argv[:4] == ["/usr/bin/mailstack", "--config", "/etc/mailstack/mailstack.toml", "backup"]
    dest = Path(argv[4])
    for key, value in HARDENING.items():
        assert service.get(key) == [value], key
    assert service["CapabilityBoundingSet"] == [""] and service["AmbientCapabilities"] == [""]
    assert "@system-service" in service["SystemCallFilter"]
    writable = [Path(p.lstrip("-")) for v in service["ReadWritePaths"] for p in v.split()]
    assert writable == [dest]
    # reading a SQLite database in WAL mode writes its -shm: the state directory is writable
    assert service["StateDirectory"] == ["mailstack"]
    tmpfiles = (UNIT_DIR / "mailstack.tmpfiles").read_text()
    assert f"d {dest} 0700 mailstack mailstack" in " ".join(tmpfiles.split())
    timer = parse_unit(UNIT_DIR / "mailstack-backup.timer")
    assert timer["Timer"]["Unit"] == ["mailstack-backup.service"] and timer["Timer"]["Persistent"] == ["yes"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
