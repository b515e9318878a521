"""TOML configuration -> frozen, typed dataclasses.

Invariants:
- every key of ``docs/configuration.md`` exists here with its documented default;
- an unknown key, a wrong type or a bad value is refused with one line that names
  the key (``[smtp] listen[0]: ...``), before anything starts;
- relative paths (and relative SQLite database paths) resolve against the folder of
  the config file, so a config is portable with its tree;
- config is a value that is passed in, never a global.

A new key is a new typed field with a default on its section's dataclass: the loader
validates it by its type annotation, so nothing else needs to change.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "ListenAddress",
    "Config",
    "load_config",
    "find_config_path",
    "parse_size",
]

SEARCH_PATHS = (Path("config/mailstack.toml"), Path("/etc/mailstack/mailstack.toml"))
ENV_VAR = "MAILSTACK_CONFIG"
MAX_WORKERS = 256  # [server] workers: more processes than that is a typo, not a machine


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is one line naming the file and key."""


# ---------------------------------------------------------------------------
# value types


@dataclass(frozen=True)
class ListenAddress:
    """One listener: ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:PATH``."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.kind == "unix":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def parse_listen(text: str, base: Path) -> ListenAddress:
    """Parse one listen address; relative unix socket paths resolve against ``base``."""
    if text.startswith("unix:"):
        raw = text[5:]
        if not raw:
            raise ValueError("unix: needs a path")
        return ListenAddress("unix", path=_resolve(raw, base))
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})", text) or re.fullmatch(r"([^:\[\]\s]+):(\d{1,5})", text)
    if not m:
        raise ValueError(f"{text!r} is not HOST:PORT, [IPV6]:PORT or unix:PATH")
    host, port = m.group(1), int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif not (_is_ipv4(host) or _HOSTNAME_RE.match(host)):
        raise ValueError(f"{host!r} is not a host name or address")
    return ListenAddress("tcp", host=host, port=port)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str | int) -> int:
    """``500M`` -> bytes. Binary units (K=1024), as Dovecot's quota settings."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size like 500M or 2G")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]


def _resolve(raw: str, base: Path) -> Path:
    p = Path(os.path.expanduser(raw))
    return p if p.is_absolute() else (base / p).resolve()


# ---------------------------------------------------------------------------
# sections (field order = documentation order in config/mailstack.toml)

Listeners = tuple[ListenAddress, ...]
Duration = float  # seconds


@dataclass(frozen=True)
class ServerConfig:
    """How ``mailstack serve`` runs (``mailstack.supervisor``)."""

    workers: int = 0  # processes that share the listeners; 0 = one per CPU core; 1 = one process, no supervisor


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///../var/mailstack.db"


@dataclass(frozen=True)
class StorageConfig:
    maildir_root: Path = Path("../mailboxes")


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path = Path("../var/tls/cert.pem")
    key_file: Path = Path("../var/tls/key.pem")


@dataclass(frozen=True)
class AuthConfig:
    allow_plaintext_on_loopback: bool = True
    # failed logins of one account or one client network (/24, /64) before it is blocked
    max_failures: int = 5
    failure_window: Duration = 300.0  # a key is forgotten this long after its last failure and block
    block_time: Duration = 60.0  # the first block; each further failure doubles it ...
    max_block_time: Duration = 900.0  # ... up to this
    hash_workers: int = 0  # threads that check passwords (per process); 0 = one per CPU core, at most 8
    hash_queue: int = 64  # checks waiting for a thread; more get "try again later" at once
    max_inflight_per_client: int = 10  # attempts of one client host at once; more get "try again later"
    state_file: str = ""  # the shared throttle; "" = in the directory database, a path = a SQLite file of its own
    # verified logins remembered per process (directory/credcache.py, like Dovecot's auth_cache)
    cache_ttl: Duration = 600.0  # 0 = off
    cache_size: int = 10000
    # argon2id for new hashes; 0 = the library's default (3 rounds, 64 MiB, 4 lanes).
    # Hashes made with other parameters are rehashed at the next successful login.
    argon2_time_cost: int = 0
    argon2_memory_cost: int = 0  # KiB
    argon2_parallelism: int = 0


@dataclass(frozen=True)
class SMTPConfig:
    listen: Listeners = ()
    max_message_size: int = 26214400
    max_recipients: int = 100
    max_connections: int = 200
    # 10 per IP: 20 addresses are needed to fill the 200 (Postfix: 50, but it also has
    # anvil rate limits and stress mode); one MTA rarely opens more than a few at once
    max_connections_per_ip: int = 10
    command_timeout: Duration = 300.0  # RFC 5321 §4.5.3.2: at least 5 minutes
    max_received_headers: int = 50
    # "" = local mail is written in-process; "unix:PATH" or "HOST:PORT" = handed to an LMTP server
    mda: str = ""
    # per-session misbehaviour limits of the MX and submission (smtp/limits.py; Postfix's
    # smtpd_junk_command_limit, smtpd_soft/hard_error_limit, smtpd_error_sleep_time); 0 = off
    junk_command_limit: int = 100
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    error_sleep: Duration = 1.0
    min_data_rate: int = 500  # bytes/s a DATA body must average (Postfix smtpd_min_data_rate); 0 = off


@dataclass(frozen=True)
class SubmissionConfig:
    listen: Listeners = ()
    tls_listen: Listeners = ()
    max_connections: int = 200
    max_connections_per_ip: int = 20  # users behind one NAT share an address
    # per authenticated user, counted in the directory database (smtp/sendlimits.py); 0 = off
    max_messages_per_hour: int = 500
    max_recipients_per_day: int = 2000


@dataclass(frozen=True)
class LMTPConfig:
    listen: Listeners = ()
    max_connections: int = 200
    max_connections_per_ip: int = 50  # a trusted MTA's delivery concurrency (unix socket peers: total only)


@dataclass(frozen=True)
class IMAPConfig:
    listen: Listeners = ()
    tls_listen: Listeners = ()
    idle_timeout: Duration = 1800.0  # RFC 3501 §5.4: an autologout timer of at least 30 minutes
    login_timeout: Duration = 60.0  # before LOGIN/AUTHENTICATE
    append_limit: int = 52428800  # RFC 7889 APPENDLIMIT: largest message APPEND accepts
    max_line: int = 65536  # longest command line (without its literals)
    poll_interval: Duration = 0.5  # seconds between checks for changes made by other processes (IDLE)
    idle_check_interval: Duration = 30.0  # IDLE: folders inotify watches are also checked this often (NFS); 0 = off
    hibernate_timeout: Duration = 2.0  # seconds in IDLE before the session is hibernated; 0 = never
    full_text_index: bool = True  # SEARCH BODY/TEXT from a per-folder index (mailstack-fts.sqlite), built lazily
    max_userip_connections: int = 10  # logged-in sessions of one user from one address (Dovecot's default)
    max_unauthenticated_per_ip: int = 50  # connections of one address that have not logged in (imap/userip.py)
    max_connections: int = 1000  # connections at once, per [server] workers process (hibernated IDLE ones count)


@dataclass(frozen=True)
class POP3Config:
    listen: Listeners = ()
    tls_listen: Listeners = ()
    idle_timeout: Duration = 600.0  # RFC 1939 §3: an autologout timer of at least 10 minutes
    max_connections: int = 1000  # connections at once, per [server] workers process
    max_connections_per_ip: int = 50  # of one client address, per process


@dataclass(frozen=True)
class QueueConfig:
    dir: Path = Path("../var/queue")
    dkim_dir: Path = Path("../var/dkim")  # <dkim_dir>/<domain>/<selector>.key
    srs: bool = True  # forwards to remote addresses: SRS envelope sender (secret <dkim_dir>/srs.secret)
    retry_initial: Duration = 300.0  # first retry after 5 min, then doubling ...
    retry_max_interval: Duration = 14400.0  # ... up to 4 h between attempts
    max_age: Duration = 432000.0  # 5 days, then a bounce (RFC 5321 §4.5.4.1: at least 4-5 days)
    delay_warning: Duration = 0.0  # send one "delayed" DSN after this long; 0 = never
    max_connections: int = 50  # outbound connections at once, in total
    max_per_domain: int = 5  # ... and to one destination domain
    smtp_port: int = 25  # port of remote MX hosts (tests point it elsewhere)
    connect_timeout: Duration = 30.0
    command_timeout: Duration = 300.0  # RFC 5321 §4.5.3.2
    scan_interval: Duration = 10.0  # how often the runner looks for due messages
    connection_cache_time: Duration = 2.0  # an idle outbound session waits this long for the next message (0 = QUIT at once)
    connection_reuse_limit: int = 100  # messages per outbound session, then a new connection (0 = no limit)
    mta_sts: bool = True  # honour remote domains' MTA-STS policies (RFC 8461)
    mta_sts_port: int = 443  # HTTPS port of mta-sts.<domain> (tests point it elsewhere)
    tls_ca_file: str = ""  # CAs for MTA-STS hosts and MX certificates; "" = the system's
    tls_reports: bool = True  # TLS-RPT (RFC 8460): daily reports to domains that ask for them


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    timeout: Duration = 5.0  # seconds per lookup, all servers and retries included
    trusted_resolvers: tuple[str, ...] = ()  # validating resolvers whose AD bit is believed (DANE)


@dataclass(frozen=True)
class RelayConfig:
    """A smarthost for all outbound mail (when this host's IP may not send directly)."""

    host: str = ""  # empty: deliver to each domain's MX
    port: int = 587
    tls: str = "starttls"  # "starttls", "implicit" (465) or "none"
    username: str = ""
    password: str = ""
    password_file: str = ""  # read at start; relative to the config's folder
    verify_tls: bool = True


@dataclass(frozen=True)
class HTTPConfig:
    listen: Listeners = ()
    tls_listen: Listeners = ()
    max_request_size: int = 65536  # bytes of request body (Autodiscover POST); more is refused with 400
    mta_sts_mode: str = "testing"  # RFC 8461 §3.2: "enforce", "testing" or "none"
    mta_sts_max_age: int = 604800  # seconds a sender caches the policy (RFC 8461 §3.2)
    mta_sts_mx: tuple[str, ...] = ()  # MX host patterns in the policy; () = [hostname]
    metrics_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # who may GET /metrics; others 403


@dataclass(frozen=True)
class ChecksConfig:
    """SPF, DKIM and DMARC on mail arriving at the MX (never on submission or LMTP)."""

    enabled: bool = True
    dmarc_reject: str = "reject"  # a failing DMARC p=reject: "reject" (550 5.7.1) or "quarantine" (Junk)
    spf_fail: str = "mark"  # SPF fail without a DMARC policy: "mark", "junk" or "reject" (550 5.7.23)
    junk_folder: str = "Junk"  # where quarantined mail goes (created when missing)
    timeout: Duration = 30.0  # all lookups of one message together; over it -> 451 4.4.3
    # Clients whose mail is not checked (OpenDMARC's IgnoreHosts): local programs and the
    # tour's swaks on loopback. An empty list checks every client.
    ignore_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class SpamConfig:
    """rspamd scanning on the MX and learning from IMAP moves into/out of Junk (``mailstack.spam``)."""

    rspamd_url: str = ""  # the normal worker, e.g. "http://127.0.0.1:11333"; "" = no scanning
    rspamd_controller_url: str = ""  # the controller, e.g. "http://127.0.0.1:11334"; "" = no learning
    rspamd_password: str = ""  # the controller's password (Password: header), when it has one
    timeout: Duration = 5.0  # seconds for one scan; over it the message is handled as fail_mode says
    # rspamd down, slow or answering garbage: "accept" = delivered unscanned with an
    # X-Spam-Scanned: no header (Postfix milter_default_action = accept); "defer" = 451 4.7.1
    fail_mode: str = "accept"
    learn_dir: Path = Path("../var/spam-learn")  # the durable queue of messages to learn


@dataclass(frozen=True)
class ACMEConfig:
    """Certificates from an ACME CA (RFC 8555; ``mailstack.acme``); off when directory_url is ""."""

    directory_url: str = ""  # e.g. "https://acme-v02.api.letsencrypt.org/directory"
    email: str = ""  # the account's contact; "" = none
    hostnames: tuple[str, ...] = ()  # () = hostname plus mta-sts./autoconfig. of each local domain
    ca_file: str = ""  # extra CA to trust for the ACME server itself (tests: pebble's); "" = the system's
    dir: Path = Path("../var/acme")  # account key, pending http-01 answers, the renewal lock
    # "http-01" (answered by [http] listen, port 80), "tls-alpn-01" (RFC 8737, answered by
    # [http] tls_listen, port 443), "auto" = http-01 when [http] listen is set, else tls-alpn-01
    challenge: str = "auto"


@dataclass(frozen=True)
class SieveConfig:
    """Sieve at delivery (``mailstack.sieve``)."""

    # where ``include :global "NAME"`` finds NAME.sieve (Pigeonhole's sieve_global); a folder
    # that does not exist means no global scripts (the include fails: an implicit keep)
    global_dir: Path = Path("sieve")
    # ManageSieve (RFC 5804; STARTTLS, 4190 in production): the ``managesieve`` service
    managesieve_listen: Listeners = ()


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``path`` is the file it came from (None for defaults)."""

    hostname: str = "localhost"
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    lmtp: LMTPConfig = field(default_factory=LMTPConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    queue: QueueConfig = field(default_factory=QueueConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)
    acme: ACMEConfig = field(default_factory=ACMEConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    path: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def managesieve(self) -> SieveConfig:
        """The ``managesieve`` service's section: its keys live in ``[sieve]`` (the contract)."""
        return self.sieve

    def listeners(self, service: str) -> tuple[tuple[ListenAddress, bool], ...]:
        """(address, implicit_tls) pairs of one service, as configured."""
        if service == "managesieve":  # its listeners live in [sieve] (the contract's key)
            return tuple((a, False) for a in self.sieve.managesieve_listen)
        section = getattr(self, service)
        plain = tuple((a, False) for a in getattr(section, "listen", ()))
        tls = tuple((a, True) for a in getattr(section, "tls_listen", ()))
        return plain + tls


# ---------------------------------------------------------------------------
# loading


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The contract's order: --config, $MAILSTACK_CONFIG, ./config/mailstack.toml, /etc/..."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for candidate in SEARCH_PATHS:
        if candidate.exists():
            return candidate
    return SEARCH_PATHS[0]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError with one line naming the key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return config_from_dict(data, p.resolve())


def config_from_dict(data: dict[str, Any], path: Path | None) -> Config:
    base = path.parent if path else Path.cwd()
    prefix = f"{path}: " if path else ""
    try:
        values = _build(Config, data, base, key_path="", skip={"path"})
    except _KeyError as e:
        raise ConfigError(f"{prefix}{e}") from None
    cfg = Config(**values, path=path)
    # Defaults of path fields are relative to the config's folder too.
    cfg = _resolve_defaults(cfg, base)
    try:
        _check(cfg)
    except _KeyError as e:
        raise ConfigError(f"{prefix}{e}") from None
    return cfg


class _KeyError(Exception):
    pass


def _build(cls: type, data: Any, base: Path, key_path: str, skip: set[str] | None = None) -> dict[str, Any]:
    where = f"[{key_path}]" if key_path else "top level"
    if not isinstance(data, dict):
        raise _KeyError(f"{key_path or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in (skip or set())}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise _KeyError(f"{where}: unknown key {key!r} (known: {known})")
        name = f"{key_path}.{key}" if key_path else key
        out[key] = _convert(hints[key], value, base, name)
    return out


def _convert(tp: Any, value: Any, base: Path, name: str) -> Any:
    label = _label(name)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp(**_build(tp, value, base, name))
    if tp is bool:
        if not isinstance(value, bool):
            raise _KeyError(f"{label}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _KeyError(f"{label}: expected a whole number, got {value!r}")
        try:
            n = parse_size(value) if isinstance(value, str) else value
        except ValueError as e:
            raise _KeyError(f"{label}: {e}") from None
        if n < 0:
            raise _KeyError(f"{label}: must not be negative")
        return n
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _KeyError(f"{label}: expected a non-negative number of seconds, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _KeyError(f"{label}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _KeyError(f"{label}: expected a path string, got {value!r}")
        return _resolve(value, base)
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _KeyError(f"{label}: expected a list, got {value!r}")
        items = []
        for i, v in enumerate(value):
            if item_tp is ListenAddress:
                if not isinstance(v, str):
                    raise _KeyError(f"{label}[{i}]: expected a string like \"127.0.0.1:25\", got {v!r}")
                try:
                    items.append(parse_listen(v, base))
                except ValueError as e:
                    raise _KeyError(f"{label}[{i}]: {e}") from None
            else:
                items.append(_convert(item_tp, v, base, f"{name}[{i}]"))
        return tuple(items)
    raise _KeyError(f"{label}: unsupported type")  # pragma: no cover - a programming error


def _label(name: str) -> str:
    """``smtp.listen`` -> ``[smtp] listen``; ``hostname`` -> ``hostname``."""
    if "." not in name:
        return name
    section, _, key = name.rpartition(".")
    return f"[{section}] {key}"


def _resolve_defaults(cfg: Config, base: Path) -> Config:
    def fix(section: Any) -> Any:
        changes = {}
        for f in dataclasses.fields(section):
            v = getattr(section, f.name)
            if isinstance(v, Path) and not v.is_absolute():
                changes[f.name] = (base / v).resolve()
        return dataclasses.replace(section, **changes) if changes else section

    cfg = dataclasses.replace(
        cfg,
        storage=fix(cfg.storage),
        tls=fix(cfg.tls),
        queue=fix(cfg.queue),
        spam=fix(cfg.spam),
        acme=dataclasses.replace(fix(cfg.acme), ca_file=str((base / cfg.acme.ca_file).resolve()) if cfg.acme.ca_file
                                 else ""),
        sieve=fix(cfg.sieve),
        database=dataclasses.replace(cfg.database, url=_resolve_db_url(cfg.database.url, base)),
    )
    return cfg


def _resolve_db_url(url: str, base: Path) -> str:
    """``sqlite:///../var/x.db`` is relative to the config's folder; absolute stays."""
    m = re.match(r"^(sqlite(?:\+\w+)?):///(.*)$", url)
    if not m:
        return url
    driver, rest = m.groups()
    if rest in ("", ":memory:") or rest.startswith("/") or rest.startswith("file:"):
        return url
    db_path, sep, query = rest.partition("?")
    return f"{driver}:///{(base / db_path).resolve()}{sep}{query}"


def _check(cfg: Config) -> None:
    if not _HOSTNAME_RE.match(cfg.hostname) or "." not in cfg.hostname.strip(".") and cfg.hostname != "localhost":
        raise _KeyError(f"hostname: {cfg.hostname!r} is not a fully qualified domain name")
    if cfg.server.workers > MAX_WORKERS:
        raise _KeyError(f"[server] workers: must be at most {MAX_WORKERS}")
    if not re.match(r"^[a-z][a-z0-9+]*://", cfg.database.url):
        raise _KeyError(f"[database] url: {cfg.database.url!r} is not a database URL like sqlite:///path")
    if cfg.smtp.max_message_size < 1024:
        raise _KeyError("[smtp] max_message_size: must be at least 1024 bytes")
    if not 1 <= cfg.smtp.max_recipients <= 100000:
        raise _KeyError("[smtp] max_recipients: must be between 1 and 100000")
    if cfg.auth.max_failures < 1:
        raise _KeyError("[auth] max_failures: must be at least 1")
    if cfg.auth.hash_workers > 256:
        raise _KeyError("[auth] hash_workers: must be at most 256")
    if cfg.auth.max_inflight_per_client < 1:
        raise _KeyError("[auth] max_inflight_per_client: must be at least 1")
    if cfg.auth.argon2_memory_cost and not 8 * max(1, cfg.auth.argon2_parallelism) <= cfg.auth.argon2_memory_cost <= 4194304:
        raise _KeyError("[auth] argon2_memory_cost: must be between 8 KiB per lane and 4194304 KiB (4 GiB)")
    if cfg.auth.argon2_parallelism > 64 or cfg.auth.argon2_time_cost > 100:
        raise _KeyError("[auth] argon2_parallelism: at most 64; argon2_time_cost: at most 100")
    if cfg.auth.max_block_time < cfg.auth.block_time:
        raise _KeyError("[auth] max_block_time: must not be less than block_time")
    if cfg.imap.max_userip_connections < 1 or cfg.imap.max_unauthenticated_per_ip < 1:
        raise _KeyError("[imap] max_userip_connections and max_unauthenticated_per_ip: must be at least 1")
    for section in ("smtp", "submission", "lmtp", "pop3"):
        for key in ("max_connections", "max_connections_per_ip"):
            if getattr(getattr(cfg, section), key) < 1:
                raise _KeyError(f"[{section}] {key}: must be at least 1")
    if cfg.imap.max_connections < 1:
        raise _KeyError("[imap] max_connections: must be at least 1")
    if cfg.smtp.hard_error_limit and cfg.smtp.soft_error_limit > cfg.smtp.hard_error_limit:
        raise _KeyError("[smtp] soft_error_limit: must not be above hard_error_limit")
    named = [("nameservers", i, ns) for i, ns in enumerate(cfg.dns.nameservers)]
    named += [("trusted_resolvers", i, ns) for i, ns in enumerate(cfg.dns.trusted_resolvers)]
    for key, i, ns in named:
        host, _, port = ns.rpartition(":") if ns.count(":") == 1 or ns.startswith("[") else (ns, "", "")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host or ns)
            if port and not 0 < int(port) < 65536:
                raise ValueError
        except ValueError:
            raise _KeyError(f"[dns] {key}[{i}]: {ns!r} is not IP or IP:PORT") from None
    if cfg.queue.connection_cache_time > 300:  # RFC 5321 §4.5.3.2.7: servers drop idle clients after 5 min
        raise _KeyError("[queue] connection_cache_time: must be at most 300 seconds")
    if not 0 < cfg.queue.mta_sts_port < 65536:
        raise _KeyError("[queue] mta_sts_port: must be a port number")
    if cfg.checks.dmarc_reject not in ("reject", "quarantine"):
        raise _KeyError(f"[checks] dmarc_reject: {cfg.checks.dmarc_reject!r} is not \"reject\" or \"quarantine\"")
    if cfg.checks.spf_fail not in ("mark", "junk", "reject"):
        raise _KeyError(f"[checks] spf_fail: {cfg.checks.spf_fail!r} is not \"mark\", \"junk\" or \"reject\"")
    if not cfg.checks.junk_folder or "/" in cfg.checks.junk_folder or cfg.checks.junk_folder.startswith("."):
        raise _KeyError(f"[checks] junk_folder: {cfg.checks.junk_folder!r} is not a folder name")
    if cfg.http.mta_sts_mode not in ("enforce", "testing", "none"):
        raise _KeyError(f"[http] mta_sts_mode: {cfg.http.mta_sts_mode!r} is not \"enforce\", \"testing\" or \"none\"")
    if not 0 < cfg.http.mta_sts_max_age <= 31557600:  # RFC 8461 §3.2: at most one year
        raise _KeyError("[http] mta_sts_max_age: must be between 1 and 31557600 seconds")
    for i, mx in enumerate(cfg.http.mta_sts_mx):
        if not _HOSTNAME_RE.match(mx.removeprefix("*.")):
            raise _KeyError(f"[http] mta_sts_mx[{i}]: {mx!r} is not a host name (or *.domain)")
    for i, net in enumerate(cfg.http.metrics_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise _KeyError(f"[http] metrics_networks[{i}]: {net!r} is not a network like 127.0.0.0/8") from None
    for i, net in enumerate(cfg.checks.ignore_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise _KeyError(f"[checks] ignore_networks[{i}]: {net!r} is not a network like 127.0.0.0/8") from None
    for key in ("rspamd_url", "rspamd_controller_url"):
        url = getattr(cfg.spam, key)
        if url and not re.fullmatch(r"https?://[^\s/?#]+/?", url):
            raise _KeyError(f"[spam] {key}: {url!r} is not a URL like http://127.0.0.1:11333")
    if cfg.spam.fail_mode not in ("accept", "defer"):
        raise _KeyError(f"[spam] fail_mode: {cfg.spam.fail_mode!r} is not \"accept\" or \"defer\"")
    if not 0 < cfg.spam.timeout <= 600:
        raise _KeyError("[spam] timeout: must be more than 0 and at most 600 seconds")
    if cfg.acme.directory_url and not re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", cfg.acme.directory_url):
        raise _KeyError(f"[acme] directory_url: {cfg.acme.directory_url!r} is not a URL like https://acme.example/directory")
    if cfg.acme.challenge not in ("auto", "http-01", "tls-alpn-01"):
        raise _KeyError(f"[acme] challenge: {cfg.acme.challenge!r} is not one of \"auto\", \"http-01\", \"tls-alpn-01\"")
    if cfg.acme.email and not re.fullmatch(r"[^@\s]+@[^@\s]+", cfg.acme.email):
        raise _KeyError(f"[acme] email: {cfg.acme.email!r} is not an address")
    for i, host in enumerate(cfg.acme.hostnames):
        if not _HOSTNAME_RE.match(host):
            raise _KeyError(f"[acme] hostnames[{i}]: {host!r} is not a host name")
    seen: dict[ListenAddress, str] = {}
    for service in ("smtp", "submission", "lmtp", "imap", "pop3", "http", "managesieve"):
        for addr, tls in cfg.listeners(service):
            key = f"[{service}] {'tls_listen' if tls else 'listen'}"
            if service == "managesieve":
                key = "[sieve] managesieve_listen"
            if addr in seen:
                raise _KeyError(f"{key}: {addr} is already used by {seen[addr]}")
            seen[addr] = key
