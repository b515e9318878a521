"""Config loading: every contract key, path resolution, and one clear line per bad key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailstack.config import Config, ConfigError, ListenAddress, find_config_path, load_config, parse_size

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_KEYS = {
    "hostname": None,
    "database": {"url"},
    "storage": {"maildir_root"},
    "tls": {"cert_file", "key_file"},
    "auth": {"allow_plaintext_on_loopback"},
    "smtp": {"listen", "max_message_size"},
    "submission": {"listen", "tls_listen"},
    "lmtp": {"listen"},
    "imap": {"listen", "tls_listen"},
    "pop3": {"listen", "tls_listen"},
    "queue": {"dir"},
    "dns": {"nameservers"},
    "http": {"listen", "tls_listen"},
}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "etc" / "mailstack.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("name", ["mailstack.toml", "mailstack.production.toml"])
def test_shipped_configs_load_and_name_every_contract_key(name: str) -> None:
    import tomllib

    path = ROOT / "config" / name
    raw = tomllib.loads(path.read_text())
    for section, keys in CONTRACT_KEYS.items():
        assert section in raw, section
        if keys:
            assert keys <= set(raw[section]), (section, keys - set(raw[section]))
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # every key line carries a comment with its default
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"uncommented key in {name}: {line}"


def test_embedded_default_is_high_loopback_ports_and_relative_paths() -> None:
    cfg = load_config(ROOT / "config" / "mailstack.toml")
    assert cfg.database.url == f"sqlite:///{ROOT / 'var' / 'mailstack.db'}"
    assert cfg.storage.maildir_root == ROOT / "mailboxes"
    assert cfg.tls.cert_file == ROOT / "var" / "tls" / "cert.pem"
    assert cfg.lmtp.listen == (ListenAddress("unix", path=ROOT / "var" / "lmtp.sock"),)
    for service in ("smtp", "submission", "imap", "pop3", "http"):
        for addr, _tls in cfg.listeners(service):
            assert addr.is_loopback and addr.port > 1024, (service, addr)


def test_production_uses_standard_ports() -> None:
    cfg = load_config(ROOT / "config" / "mailstack.production.toml")
    ports = {s: {a.port for a, tls in cfg.listeners(s) if not tls} for s in ("smtp", "submission", "imap", "pop3")}
    tls_ports = {s: {a.port for a, tls in cfg.listeners(s) if tls} for s in ("submission", "imap", "pop3")}
    assert ports == {"smtp": {25}, "submission": {587}, "imap": {143}, "pop3": {110}}
    assert tls_ports == {"submission": {465}, "imap": {993}, "pop3": {995}}
    assert cfg.storage.maildir_root.is_absolute() and str(cfg.storage.maildir_root).startswith("/var/")


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    p = write(tmp_path, 'hostname = "mx.a.test"\n[storage]\nmaildir_root = "mail"\n'
                       '[database]\nurl = "sqlite:///db/x.db"\n[lmtp]\nlisten = ["unix:run/lmtp.sock"]\n')
    cfg = load_config(p)
    assert cfg.storage.maildir_root == tmp_path / "etc" / "mail"
    assert cfg.database.url == f"sqlite:///{tmp_path / 'etc' / 'db' / 'x.db'}"
    assert cfg.lmtp.listen[0].path == tmp_path / "etc" / "run" / "lmtp.sock"
    # keys left out take defaults relative to the config's folder too
    assert cfg.queue.dir == (tmp_path / "var" / "queue").resolve()


def test_listen_forms(tmp_path: Path) -> None:
    p = write(tmp_path, 'hostname = "mx.a.test"\n[imap]\nlisten = ["127.0.0.1:143", "[::1]:143", "localhost:1143"]\n'
                       'tls_listen = []\n')
    cfg = load_config(p)
    assert [str(a) for a in cfg.imap.listen] == ["127.0.0.1:143", "[::1]:143", "localhost:1143"]
    assert cfg.imap.tls_listen == ()
    assert cfg.imap.listen[1] == ListenAddress("tcp", host="::1", port=143)


def test_absolute_and_special_database_urls_untouched(tmp_path: Path) -> None:
    for url in ("sqlite:////abs/x.db", "sqlite:///:memory:", "postgresql+psycopg://u:p@db.example/mail"):
        cfg = load_config(write(tmp_path, f'hostname = "mx.a.test"\n[database]\nurl = "{url}"\n'))
        assert cfg.database.url == url


# Each bad config and a fragment that the one-line error must contain (naming the key).
BAD = [
    ('hostname = "mx.a.test"\nfoo = 1\n', "unknown key 'foo'"),
    ('hostname = "mx.a.test"\n[smtp]\nlisten = ["127.0.0.1:2525"]\nmax_size = 5\n', "[smtp]: unknown key 'max_size'"),
    ('hostname = "mx.a.test"\n[smtpd]\n', "unknown key 'smtpd'"),
    ('hostname = "mx.a.test"\n[smtp]\nlisten = "127.0.0.1:25"\n', "[smtp] listen: expected a list"),
    ('hostname = "mx.a.test"\n[smtp]\nlisten = ["127.0.0.1"]\n', "[smtp] listen[0]"),
    ('hostname = "mx.a.test"\n[smtp]\nlisten = ["127.0.0.1:70000"]\n', "[smtp] listen[0]: port 70000"),
    ('hostname = "mx.a.test"\n[imap]\ntls_listen = [143]\n', "[imap] tls_listen[0]"),
    ('hostname = "mx.a.test"\n[smtp]\nmax_message_size = "lots"\n', "[smtp] max_message_size"),
    ('hostname = "mx.a.test"\n[smtp]\nmax_message_size = -1\n', "[smtp] max_message_size"),
    ('hostname = "mx.a.test"\n[auth]\nallow_plaintext_on_loopback = "yes"\n', "[auth] allow_plaintext_on_loopback"),
    ('hostname = "not a host"\n', "hostname"),
    ('hostname = 5\n', "hostname: expected a string"),
    ('hostname = "mx.a.test"\n[database]\nurl = "nonsense"\n', "[database] url"),
    ('hostname = "mx.a.test"\n[dns]\nnameservers = ["dns.google"]\n', "[dns] nameservers[0]"),
    ('hostname = "mx.a.test"\n[storage]\nmaildir_root = ""\n', "[storage] maildir_root"),
    ('hostname = "mx.a.test"\nstorage = 3\n', "storage: expected a table"),
    ('hostname = "mx.a.test"\n[smtp]\nlisten = ["127.0.0.1:2525"]\n[imap]\nlisten = ["127.0.0.1:2525"]\n',
     "[imap] listen: 127.0.0.1:2525 is already used by [smtp] listen"),
    ('hostname = "mx.a.test"\n[smtp\n', "invalid TOML"),
    ('hostname = "mx.a.test"\n[checks]\nignore_networks = ["loopback"]\n', "[checks] ignore_networks[0]"),
    ('hostname = "mx.a.test"\n[http]\nmetrics_networks = ["127.0.0.0/8", "anyone"]\n', "[http] metrics_networks[1]"),
    ('hostname = "mx.a.test"\n[spam]\nrspamd_url = "127.0.0.1:11333"\n', "[spam] rspamd_url"),
    ('hostname = "mx.a.test"\n[spam]\nrspamd_controller_url = "http://a b"\n', "[spam] rspamd_controller_url"),
    ('hostname = "mx.a.test"\n[spam]\nfail_mode = "tempfail"\n', "[spam] fail_mode"),
    ('hostname = "mx.a.test"\n[spam]\ntimeout = 0\n', "[spam] timeout"),
    ('hostname = "mx.a.test"\n[spam]\nrspamd_uri = "http://127.0.0.1:11333"\n', "unknown key 'rspamd_uri'"),
]


@pytest.mark.parametrize("text,fragment", BAD)
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and str(p) in message


def test_bad_config_through_the_cli_is_one_line_and_exit_1(tmp_path: Path) -> None:
    p = write(tmp_path, 'hostname = "mx.a.test"\n[pop3]\nlissen = []\n')
    r = subprocess.run([sys.executable, "-m", "mailstack", "--config", str(p), "domain", "list"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "[pop3]: unknown key 'lissen'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "var").exists()  # refused before anything was created


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_find_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILSTACK_CONFIG", raising=False)
    assert find_config_path("x.toml") == Path("x.toml")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mailstack.toml").write_text("")
    assert find_config_path(None) == Path("config/mailstack.toml")
    monkeypatch.setenv("MAILSTACK_CONFIG", "/elsewhere.toml")
    assert find_config_path(None) == Path("/elsewhere.toml")
    assert find_config_path("given.toml") == Path("given.toml")


@pytest.mark.parametrize("text,value", [("500M", 500 * 1024**2), ("2G", 2 * 1024**3), ("1024", 1024),
                                        ("10k", 10240), ("3MiB", 3 * 1024**2), (7, 7)])
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-5", "5X", "lots"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
