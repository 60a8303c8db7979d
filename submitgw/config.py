"""Typed configuration: one frozen object, loaded once from TOML, overridable by CLI flags.

Every limit, timeout and default lives here and in the generated `submitgw.toml`
(see `render_default_config`), so an admin can see and change each of them.
Relative paths are resolved against the configuration file's folder so that a
setup folder can be moved as a whole.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_NAME = "submitgw.toml"


class ConfigError(Exception):
    """A configuration file or flag that cannot be used; the text is shown to the admin."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "address", *, any_port: bool = False) -> Endpoint:
        """Parse `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all addresses).

        `any_port` admits port 0 (a listener then takes whatever free port the kernel
        gives and logs it), which tests and side-by-side runs use to never collide.
        """
        text = text.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(f"{what} {text!r} must look like HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_text)
        if not (0 if any_port else 1) <= port < 65536:
            raise ConfigError(f"{what} {text!r}: port out of range")
        return cls(host or "0.0.0.0", port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str, what: str) -> Endpoint | None:
    """A listener address, or None for the word `off`."""
    if value.strip().lower() == "off":
        return None
    return Endpoint.parse(value, what, any_port=True)


def parse_nameserver(text: str) -> tuple[str, int]:
    """A `[dns] nameservers` entry: "IP", "IP:PORT" or "[IPv6]:PORT" -> (IP, port)."""
    try:
        return str(ipaddress.ip_address(text.strip())), 53
    except ValueError:
        pass
    endpoint = Endpoint.parse(text, "[dns] nameserver")
    try:
        return str(ipaddress.ip_address(endpoint.host)), endpoint.port
    except ValueError as exc:
        raise ConfigError(f'[dns] nameserver {text!r} must be "IP" or "IP:PORT"') from exc


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    shutdown_grace: float = 30.0
    hide_client_ip: bool = False
    memory_trim_interval: float = 30.0
    # Processes serving (`serve --workers`); 0: one per core.
    workers: int = 0


CLIENT_CERT_MODES = ("off", "optional", "required")


@dataclass(frozen=True)
class ListenerConfig:
    listen: Endpoint | None = None
    client_certificates: str = "optional"
    certificate_without_auth: bool = True
    # Behind a load balancer: every connection starts with a PROXY protocol header
    # from one of `trusted_proxies` (addresses or networks, normalised).
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class TlsConfig:
    cert: Path = Path("tls/server.crt")
    key: Path = Path("tls/server.key")
    ca_cert: Path = Path("ca/ca.crt")
    ca_key: Path = Path("ca/ca.key")
    min_version: str = "1.2"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///submitgw.db"


@dataclass(frozen=True)
class AuthConfig:
    workers: int = 2
    max_pending: int = 16
    # Places in the pool (waiting or running) one client IP (IPv6: one /64) and one
    # login name may hold at once, so that no client can keep the others out.
    max_pending_per_ip: int = 4
    max_pending_per_account: int = 3
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    # Successful password logins remembered per process (0: none) and for how many seconds,
    # so that a client logging in for every message pays argon2 once per interval.
    success_cache_entries: int = 10000
    success_cache_seconds: float = 300.0


@dataclass(frozen=True)
class PasswordsConfig:
    min_length: int = 12
    max_length: int = 1024
    # A new password may not be one of the last `history` (current one included).
    history: int = 5
    # 0: passwords never expire.
    max_age_days: int = 0


@dataclass(frozen=True)
class SelfServiceConfig:
    listen: Endpoint | None = None
    # The address users type; named in the "password expired" reply. Empty: derived
    # from [server] hostname and the listen port.
    url: str = ""
    # Minutes a signed-in browser or script may stay idle, and may stay signed in at all.
    session_idle_minutes: int = 10
    session_max_minutes: int = 30
    # "optional": the browser may sign in with a client certificate of the bundled CA.
    client_certificates: str = "optional"
    # Connections to the site at once, in all and from one client address (IPv6: one
    # /64); beyond them a connection is closed at accept, before any TLS work.
    max_connections: int = 100
    max_connections_per_ip: int = 10
    # Seconds for the TLS handshake, for a request's head (from the connection or its
    # first byte), for its body and answer, and for an idle kept-alive connection.
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 15.0


@dataclass(frozen=True)
class MetricsConfig:
    """The plain-HTTP admin port: Prometheus metrics, liveness and readiness."""

    listen: Endpoint | None = None
    # Seconds a readiness verdict is reused, so health checks cannot hammer the
    # database and the smarthost; and seconds each of its probes may take.
    readiness_cache_seconds: float = 5.0
    readiness_timeout: float = 2.0
    # Connections at once, in all and from one client address (IPv6: one /64).
    max_connections: int = 20
    max_connections_per_ip: int = 10


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = 26214400
    max_recipients: int = 100
    max_connections: int = 200
    idle_timeout: float = 300.0
    tls_handshake_timeout: float = 10.0
    login_timeout: float = 60.0
    max_session_seconds: float = 1800.0
    max_messages_per_session: int = 1000
    max_junk_commands: int = 100
    max_errors: int = 20
    max_command_length: int = 512
    max_auth_length: int = 12288
    # What the From: check reads (see submitgw.rules.binding.from_addresses).
    max_header_bytes: int = 1048576
    max_from_length: int = 8192
    max_from_addresses: int = 50
    header_check_timeout: float = 5.0
    # Sending and login limits; see submitgw.rules.limits for how they are counted.
    max_connections_per_ip: int = 20
    rate_window: int = 3600
    messages_per_user: int = 200
    recipients_per_user: int = 1000
    messages_per_ip: int = 1000
    recipients_per_ip: int = 5000
    auth_window: int = 900
    auth_failures_per_account: int = 5
    auth_failures_per_ip: int = 20
    auth_lockout: float = 900.0
    auth_delay: float = 0.5
    auth_max_delay: float = 8.0
    # Successful logins per login name and per client IP within auth_window.
    auth_successes_per_account: int = 600
    auth_successes_per_ip: int = 1200
    # How long MAIL may reuse this process's last reading of a user's and a client's
    # usage, plus what it counted since (0: read at every MAIL); see services.limiter.
    usage_reuse_seconds: float = 1.0


@dataclass(frozen=True)
class SmarthostServer:
    host: str
    port: int
    starttls: bool = False
    tls_verify: bool = True
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    data_timeout: float = 300.0

    def __str__(self) -> str:
        return str(Endpoint(self.host, self.port))


@dataclass(frozen=True)
class SmarthostConfig:
    servers: tuple[SmarthostServer, ...] = (SmarthostServer("127.0.0.1", 25),)
    # Idle, greeted connections kept per server for the next session (0: none kept),
    # seconds one may stay idle, and messages one carries before it is closed.
    pool_size: int = 8
    pool_idle_seconds: float = 30.0
    pool_max_messages: int = 100


@dataclass(frozen=True)
class PolicyConfig:
    default: str = "allow"
    deny_message: str = "Access denied"
    check_header_from: bool = True


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = 3.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True)
class AuditConfig:
    """The database trail of sessions, logins, decisions and messages (`audit search`)."""

    database: bool = True
    retention_days: int = 180
    flush_interval: float = 0.5
    batch_size: int = 500
    max_queue: int = 50000
    shutdown_timeout: float = 10.0


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    submission: ListenerConfig = field(
        default_factory=lambda: ListenerConfig(Endpoint("0.0.0.0", 587))
    )
    submissions: ListenerConfig = field(
        default_factory=lambda: ListenerConfig(Endpoint("0.0.0.0", 465))
    )
    tls: TlsConfig = field(default_factory=TlsConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    passwords: PasswordsConfig = field(default_factory=PasswordsConfig)
    selfservice: SelfServiceConfig = field(default_factory=SelfServiceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    smarthost: SmarthostConfig = field(default_factory=SmarthostConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def listeners(self) -> dict[str, ListenerConfig]:
        """The SMTP listeners' sections by name, on or off."""
        return {"submission": self.submission, "submissions": self.submissions}


_SMARTHOST_KEYS = {f.name for f in dataclasses.fields(SmarthostServer)} - {"host", "port"}
# The TOML types of the [smarthost] options (paths are strings there). Checked
# because a truthy string or a 0 would otherwise silently switch TLS on or off.
_SMARTHOST_TYPES: dict[str, type] = {
    "starttls": bool,
    "tls_verify": bool,
    "ca_file": str,
    "username": str,
    "password_file": str,
    "connect_timeout": float,
    "command_timeout": float,
    "data_timeout": float,
}


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    """Instantiate a config dataclass, checking key names and value types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {', '.join(sorted(unknown))}")
    defaults = cls()
    checked: dict[str, Any] = {}
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if issubclass(expected, Path):
            expected = str
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"[{section}] {key} must be {expected.__name__}, not {type(value).__name__}"
            )
        checked[key] = value
    return cls(**checked)


def _resolve(base: Path, value: str | Path | None) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _resolve_db_url(base: Path, url: str) -> str:
    """Make a relative SQLite path relative to the config file, not the working directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        if rest and rest != ":memory:":
            return prefix + str(base / rest)
    return url


def _check_smarthost_types(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        expected = _SMARTHOST_TYPES[key]
        accepted: tuple[type, ...] = (int, float) if expected is float else (expected,)
        if not isinstance(value, accepted) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(
                f"{where} {key} must be {expected.__name__}, not {type(value).__name__}"
            )


_POOL_KEYS = ("pool_size", "pool_idle_seconds", "pool_max_messages")


def _smarthost(data: dict[str, Any], base: Path) -> SmarthostConfig:
    pool: SmarthostConfig = _build(
        SmarthostConfig, {k: v for k, v in data.items() if k in _POOL_KEYS}, "smarthost"
    )
    if pool.pool_size < 0 or pool.pool_idle_seconds <= 0 or pool.pool_max_messages < 1:
        raise ConfigError(
            "[smarthost] pool_size must be >= 0 (0: off), pool_idle_seconds > 0 "
            "and pool_max_messages >= 1"
        )
    shared = {k: v for k, v in data.items() if k != "servers" and k not in _POOL_KEYS}
    unknown = set(shared) - _SMARTHOST_KEYS
    if unknown:
        raise ConfigError(f"[smarthost]: unknown key(s) {', '.join(sorted(unknown))}")
    _check_smarthost_types(shared, "[smarthost]")
    entries = data.get("servers", ["127.0.0.1:25"])
    if not isinstance(entries, list) or not entries:
        raise ConfigError("[smarthost] servers must be a non-empty list")
    servers = []
    for entry in entries:
        own: dict[str, Any]
        if isinstance(entry, str):
            own = {"address": entry}
        elif isinstance(entry, dict):
            own = dict(entry)
        else:
            raise ConfigError("[smarthost] servers entries must be strings or tables")
        address = own.pop("address", None)
        if not isinstance(address, str):
            raise ConfigError("[smarthost] each server needs an address = 'HOST:PORT'")
        bad = set(own) - _SMARTHOST_KEYS
        if bad:
            raise ConfigError(f"[smarthost] server {address}: unknown key(s) {sorted(bad)}")
        _check_smarthost_types(own, f"[smarthost] server {address}:")
        servers.append(make_smarthost(address, {**shared, **own}, base))
    return dataclasses.replace(pool, servers=tuple(servers))


def make_smarthost(address: str, options: dict[str, Any], base: Path) -> SmarthostServer:
    """One smarthost from `HOST:PORT` plus the shared `[smarthost]` options."""
    ep = Endpoint.parse(address, "smarthost")
    opts = dict(options)
    for key in ("ca_file", "password_file"):
        opts[key] = _resolve(base, opts.get(key))
    if opts.get("username") == "":
        opts["username"] = None
    for key in ("connect_timeout", "command_timeout", "data_timeout"):
        if key in opts:
            opts[key] = float(opts[key])
    return SmarthostServer(ep.host, ep.port, **opts)


def load(path: Path) -> Config:
    """Read and check a configuration file; every error names the key at fault."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"configuration file {path} not found (create one with 'submitgw init --dir DIR')"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return from_dict(data, path.resolve().parent, path.resolve())


def from_dict(data: dict[str, Any], base: Path, path: Path | None = None) -> Config:
    known = {"server", "submission", "submissions", "tls", "database", "auth", "limits"}
    known |= {"smarthost", "policy", "dns", "log", "passwords", "selfservice", "audit"}
    known |= {"metrics"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))}")

    listeners = {}
    for name, default in (("submission", "0.0.0.0:587"), ("submissions", "0.0.0.0:465")):
        sec = dict(_section(data, name))
        listen = sec.pop("listen", default)
        if not isinstance(listen, str):
            raise ConfigError(f'[{name}] listen must be "HOST:PORT" or "off"')
        proxies = _trusted_proxies(sec.pop("trusted_proxies", []), name)
        listener = _build(ListenerConfig, sec, name)
        if listener.client_certificates not in CLIENT_CERT_MODES:
            raise ConfigError(f"[{name}] client_certificates must be one of {CLIENT_CERT_MODES}")
        if listener.proxy_protocol and not proxies:
            raise ConfigError(f"[{name}] proxy_protocol = true needs trusted_proxies")
        listeners[name] = dataclasses.replace(
            listener, listen=parse_listen(listen, name), trusted_proxies=proxies
        )

    tls_values = _section(data, "tls")
    tls = _build(TlsConfig, tls_values, "tls")
    tls = dataclasses.replace(
        tls,
        cert=_resolve(base, tls.cert),
        key=_resolve(base, tls.key),
        ca_cert=_resolve(base, tls.ca_cert),
        ca_key=_resolve(base, tls.ca_key),
    )
    if tls.min_version not in {"1.2", "1.3"}:
        raise ConfigError('[tls] min_version must be "1.2" or "1.3"')

    db = _build(DatabaseConfig, _section(data, "database"), "database")
    db = DatabaseConfig(url=_resolve_db_url(base, db.url))

    limits = _build(LimitsConfig, _section(data, "limits"), "limits")
    auth = _build(AuthConfig, _section(data, "auth"), "auth")
    log = _build(LogConfig, _section(data, "log"), "log")
    policy = _build(PolicyConfig, _section(data, "policy"), "policy")
    if policy.default not in {"allow", "deny"}:
        raise ConfigError('[policy] default must be "allow" or "deny"')
    dns_values = dict(_section(data, "dns"))
    servers = dns_values.pop("nameservers", [])
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise ConfigError('[dns] nameservers must be a list of "IP" or "IP:PORT" strings')
    dns = dataclasses.replace(_build(DnsConfig, dns_values, "dns"), nameservers=tuple(servers))
    for server in servers:
        parse_nameserver(server)
    if dns.timeout <= 0:
        raise ConfigError("[dns] timeout must be positive")
    if log.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("[log] level must be DEBUG, INFO, WARNING or ERROR")
    if log.format not in {"json", "text"}:
        raise ConfigError('[log] format must be "json" or "text"')
    for name, value in dataclasses.asdict(limits).items():
        if name == "usage_reuse_seconds":
            if value < 0:
                raise ConfigError(f"[limits] {name} must be >= 0 (0: read at every MAIL)")
        elif value <= 0:
            raise ConfigError(f"[limits] {name} must be positive")
    if auth.workers < 1 or auth.max_pending < 0:
        raise ConfigError("[auth] workers must be >= 1 and max_pending >= 0")
    if auth.max_pending_per_ip < 1 or auth.max_pending_per_account < 1:
        raise ConfigError("[auth] max_pending_per_ip and max_pending_per_account must be >= 1")
    if auth.success_cache_entries < 0 or auth.success_cache_seconds <= 0:
        raise ConfigError(
            "[auth] success_cache_entries must be >= 0 (0: off) and success_cache_seconds > 0"
        )
    passwords = _build(PasswordsConfig, _section(data, "passwords"), "passwords")
    if not 1 <= passwords.min_length <= passwords.max_length:
        raise ConfigError("[passwords] need 1 <= min_length <= max_length")
    if passwords.history < 1 or passwords.max_age_days < 0:
        raise ConfigError("[passwords] history must be >= 1 and max_age_days >= 0")
    selfservice = _selfservice(_section(data, "selfservice"))
    metrics = _metrics(_section(data, "metrics"))
    server = _build(ServerConfig, _section(data, "server"), "server")
    if server.memory_trim_interval < 0:
        raise ConfigError("[server] memory_trim_interval must be >= 0 (0: off)")
    audit = _audit(_section(data, "audit"))
    if server.workers < 0:
        raise ConfigError("[server] workers must be >= 0 (0: one per core)")

    return Config(
        path=path,
        server=server,
        submission=listeners["submission"],
        submissions=listeners["submissions"],
        tls=tls,
        database=db,
        auth=auth,
        passwords=passwords,
        selfservice=selfservice,
        metrics=metrics,
        limits=limits,
        smarthost=_smarthost(_section(data, "smarthost"), base),
        policy=policy,
        dns=dns,
        log=log,
        audit=audit,
    )


def _audit(values: dict[str, Any]) -> AuditConfig:
    cfg: AuditConfig = _build(AuditConfig, values, "audit")
    if cfg.retention_days < 0 or cfg.shutdown_timeout < 0:
        raise ConfigError("[audit] retention_days and shutdown_timeout must be >= 0")
    if cfg.flush_interval <= 0 or cfg.batch_size < 1:
        raise ConfigError("[audit] flush_interval must be positive and batch_size >= 1")
    if cfg.max_queue < cfg.batch_size:
        raise ConfigError("[audit] max_queue must be at least batch_size")
    return cfg


def _trusted_proxies(value: Any, section: str) -> tuple[str, ...]:
    """The load balancers' addresses and networks; a network with host bits set is
    refused, since which of the two the admin meant cannot be told."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'[{section}] trusted_proxies must be a list of "IP" or "IP/PREFIX"')
    networks = []
    for entry in value:
        try:
            networks.append(str(ipaddress.ip_network(entry.strip())))
        except ValueError as exc:
            raise ConfigError(f"[{section}] trusted_proxies entry {entry!r}: {exc}") from exc
    return tuple(networks)


_SELFSERVICE_POSITIVE = (
    "max_connections",
    "max_connections_per_ip",
    "handshake_timeout",
    "header_timeout",
    "body_timeout",
    "idle_timeout",
)


def _selfservice(values: dict[str, Any]) -> SelfServiceConfig:
    values = dict(values)
    listen = values.pop("listen", "off")
    if not isinstance(listen, str):
        raise ConfigError('[selfservice] listen must be "HOST:PORT" or "off"')
    cfg: SelfServiceConfig = _build(SelfServiceConfig, values, "selfservice")
    cfg = dataclasses.replace(cfg, listen=parse_listen(listen, "selfservice"))
    if cfg.client_certificates not in {"off", "optional"}:
        raise ConfigError('[selfservice] client_certificates must be "off" or "optional"')
    if cfg.url and not cfg.url.startswith("https://"):
        raise ConfigError("[selfservice] url must start with https://")
    if not 1 <= cfg.session_idle_minutes <= cfg.session_max_minutes:
        raise ConfigError("[selfservice] need 1 <= session_idle_minutes <= session_max_minutes")
    for key in _SELFSERVICE_POSITIVE:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"[selfservice] {key} must be positive")
    return cfg


def changed_keys(old: Config, new: Config) -> list[str]:
    """`section.key` of every setting that differs between two configurations, in the
    order of the file (a live reload reports and applies by these names)."""
    changed = []
    for section in dataclasses.fields(Config):
        if section.name == "path":
            continue
        before, after = getattr(old, section.name), getattr(new, section.name)
        for key in dataclasses.fields(before):
            if getattr(before, key.name) != getattr(after, key.name):
                changed.append(f"{section.name}.{key.name}")
    return changed


def certificates_needed(cfg: Config) -> bool:
    """Whether any listener asks for client certificates, so the CA must be loaded."""
    listeners = cfg.listeners().values()
    on_smtp = any(s.listen is not None and s.client_certificates != "off" for s in listeners)
    on_site = cfg.selfservice.listen is not None and cfg.selfservice.client_certificates != "off"
    return on_smtp or on_site


def _metrics(values: dict[str, Any]) -> MetricsConfig:
    values = dict(values)
    listen = values.pop("listen", "off")
    if not isinstance(listen, str):
        raise ConfigError('[metrics] listen must be "HOST:PORT" or "off"')
    cfg: MetricsConfig = _build(MetricsConfig, values, "metrics")
    for key in ("readiness_timeout", "max_connections", "max_connections_per_ip"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"[metrics] {key} must be positive")
    if cfg.readiness_cache_seconds < 0:
        raise ConfigError("[metrics] readiness_cache_seconds must be >= 0")
    return dataclasses.replace(cfg, listen=parse_listen(listen, "metrics"))


def selfservice_url(cfg: Config) -> str | None:
    """Where users change their password, or None when the site is off."""
    site = cfg.selfservice
    if site.listen is None:
        return None
    if site.url:
        return site.url
    port = "" if site.listen.port == 443 else f":{site.listen.port}"
    return f"https://{cfg.server.hostname}{port}/"


def config_path(explicit: str | None, env: dict[str, str]) -> Path:
    """`--config`, else `$SUBMITGW_CONFIG`, else `./submitgw.toml`."""
    if explicit:
        return Path(explicit)
    if env.get("SUBMITGW_CONFIG"):
        return Path(env["SUBMITGW_CONFIG"])
    return Path(DEFAULT_CONFIG_NAME)


DEFAULT_TEMPLATE = """\
# submitgw configuration. Every key is listed with its default value.
# Relative paths are relative to this file's folder.
# `systemctl reload submitgw` (SIGHUP) applies a change to new connections; the listen
# addresses, [database] url, [auth] workers and [selfservice] idle_timeout need a restart.

[server]
# Name used in the greeting, EHLO reply and Received: header.
hostname = "{hostname}"
# Seconds to let in-flight messages finish after SIGTERM/SIGINT.
shutdown_grace = 30.0
# true: the client's IP address is left out of the Received: header.
hide_client_ip = false
# Seconds between returns of freed heap memory to the system after connections
# ended (glibc's malloc_trim); 0 turns it off.
memory_trim_interval = 30.0
# Processes serving mail, sharing the listening sockets and the database; 0: one per
# core. The connection caps and [auth] workers are divided among them.
workers = 0

[submission]
# Message submission with STARTTLS (RFC 6409), "HOST:PORT" or "off".
listen = "0.0.0.0:587"
# Ask clients for a certificate from the bundled CA: "off", "optional" or "required".
# The request names the bundled CA, so mail clients offer the right certificate (and
# do not prompt users who have none); whatever certificate a client offers, the
# handshake goes on and the session judges it, so a foreign one costs no login.
client_certificates = "optional"
# true: a valid certificate of a "certificate" or "password-or-certificate" user lets
# MAIL FROM proceed without AUTH.
certificate_without_auth = true
# true: the listener sits behind a load balancer that starts every connection with a
# PROXY protocol header (v1 or v2) naming the real client, which access rules, limits,
# the Received: header and the log then see. Every connection must come from one of
# trusted_proxies and start with that header, within tls_handshake_timeout (see the
# limits below); any other is closed without a word.
proxy_protocol = false
# The load balancers' addresses or networks, e.g. ["10.0.0.0/8", "fd00::/8"].
trusted_proxies = []

[submissions]
# Submission over implicit TLS (RFC 8314), "HOST:PORT" or "off".
listen = "0.0.0.0:465"
client_certificates = "optional"
certificate_without_auth = true
proxy_protocol = false
trusted_proxies = []

[tls]
# The gateway's certificate (with any intermediates) and private key, PEM.
cert = "tls/server.crt"
key = "tls/server.key"
# The bundled CA that issued the server certificate (and, later, client certificates).
ca_cert = "ca/ca.crt"
ca_key = "ca/ca.key"
# Lowest TLS version accepted from clients: "1.2" or "1.3".
min_version = "1.2"

[database]
# Any SQLAlchemy URL: "sqlite:///file.db" (relative to this file) or
# "postgresql+psycopg://user:password@host/dbname" when several gateways share it.
url = "sqlite:///submitgw.db"

[auth]
# Threads that verify argon2id hashes off the event loop.
workers = 2
# Logins allowed to wait for a worker; beyond it clients get "454 4.7.0".
max_pending = 16
# Logins one client IP (IPv6: one /64) and one login name may have waiting or
# running at once; beyond it "454 4.7.0" without checking the password.
max_pending_per_ip = 4
max_pending_per_account = 3
# argon2id parameters for new hashes; older hashes are upgraded at the next login.
argon2_time_cost = 3
argon2_memory_kib = 65536
argon2_parallelism = 4
# Successful password logins each gateway process remembers, so that a mail client
# logging in for every message does not pay argon2 (~150 ms of CPU) each time: at most
# this many (about 350 bytes each; 0 turns it off), each for at most this many seconds
# after its password was verified. Only successes: a wrong password always costs
# argon2. A change to the user's password, app passwords, policy, state or networks
# voids them at once on every gateway sharing the database.
success_cache_entries = 10000
success_cache_seconds = 300.0

[passwords]
# Rules for every new password (self-service, 'user add', 'user passwd'): its length,
# not containing the address's local part, not a common password, not one of the
# user's last `history` passwords.
min_length = 12
max_length = 1024
history = 5
# Days a password is good for; after it SMTP AUTH answers "535 5.7.8 Password
# expired" naming the self-service site. 0: never expires.
max_age_days = 0

[selfservice]
# HTTPS site where users change their password and manage app passwords,
# "HOST:PORT" or "off". It uses the [tls] certificate.
listen = "off"
# Address users open, named in the "password expired" reply; empty: https://<hostname>:<port>/.
url = ""
# Minutes a signed-in session may stay idle, and may last in all.
session_idle_minutes = 10
session_max_minutes = 30
# "optional": browsers may sign in with a client certificate of the bundled CA. A
# browser offering a certificate of another CA then fails the TLS handshake; "off" avoids it.
client_certificates = "optional"
# Connections at once, in all and from one client IP (IPv6: one /64); beyond them a
# new connection is closed at once, before any TLS work.
max_connections = 100
max_connections_per_ip = 10
# Seconds for the TLS handshake; for a request's head, counted from the connection or
# the request's first byte; for its body and answer ("408" when the body is late); and
# for a kept-alive connection to stay idle between requests.
handshake_timeout = 10.0
header_timeout = 10.0
body_timeout = 30.0
idle_timeout = 15.0

[metrics]
# Plain-HTTP admin port with /metrics (Prometheus), /healthz and /readyz, "HOST:PORT"
# or "off". No TLS and no login: bind it to loopback or a management network.
listen = "off"
# Seconds a /readyz verdict (database and smarthost probes) is reused, and seconds
# each probe may take before it counts as failed.
readiness_cache_seconds = 5.0
readiness_timeout = 2.0
# Connections at once, in all and from one client IP (IPv6: one /64); beyond them a
# new connection is closed at once.
max_connections = 20
max_connections_per_ip = 10

[limits]
# Largest message in bytes, advertised as SIZE; larger gets "552 5.3.4".
max_message_size = 26214400
# Recipients per message; beyond it "452 4.5.3".
max_recipients = 100
# Simultaneous client connections over all listeners; beyond it "421 4.7.0".
max_connections = 200
# Seconds a client may stay silent; within DATA, seconds per 12 KiB (or per line
# ending in ".").
idle_timeout = 300.0
# Seconds a TLS handshake (implicit TLS or after STARTTLS) may take.
tls_handshake_timeout = 10.0
# Seconds a client has from connecting to logging in (AUTH, or a certificate of a
# known user); then "421 4.4.2". Strangers cannot hold a connection longer.
login_timeout = 60.0
# Seconds a session may last in all.
max_session_seconds = 1800.0
# Messages per session.
max_messages_per_session = 1000
# NOOP, RSET, VRFY, EXPN, HELP, HELO/EHLO per session.
max_junk_commands = 100
# Error replies per session before "421 4.7.0" and disconnect.
max_errors = 20
# Longest command line in bytes (RFC 5321 4.5.3.1.4), CRLF included.
max_command_length = 512
# Longest AUTH command or AUTH response line in bytes (RFC 4954 section 4).
max_auth_length = 12288
# The From: check ([policy] check_header_from) reads at most this: a header
# section over max_header_bytes gets "554 5.6.0"; From: fields longer than
# max_from_length bytes in all, with more than max_from_addresses addresses, or
# with comments nested deeper than 10 get "550 5.7.1"; a check that takes longer
# than header_check_timeout seconds gets "554 5.6.0".
max_header_bytes = 1048576
max_from_length = 8192
max_from_addresses = 50
header_check_timeout = 5.0
# Simultaneous connections from one client IP (IPv6: one /64) to this gateway
# process; beyond it "421 4.7.0".
max_connections_per_ip = 20
# Sending limits, shared by every gateway on the same database: messages and
# recipients per user and per client IP within a rolling window of rate_window
# seconds (the "hour" of 'submitgw user set-limit'); beyond them "450 4.7.1".
rate_window = 3600
messages_per_user = 200
recipients_per_user = 1000
messages_per_ip = 1000
recipients_per_ip = 5000
# Password guessing: failed logins per account name and per client IP within
# auth_window seconds. Each failure delays the next attempt (auth_delay seconds,
# doubling, at most auth_max_delay); reaching a limit locks the account or IP
# out for auth_lockout seconds ("454 4.7.0", even with the right password).
auth_window = 900
auth_failures_per_account = 5
auth_failures_per_ip = 20
auth_lockout = 900.0
auth_delay = 0.5
auth_max_delay = 8.0
# Successful logins per login name and per client IP within auth_window; beyond
# them "454 4.7.0", refused before the password is checked.
auth_successes_per_account = 600
auth_successes_per_ip = 1200
# MAIL reuses this gateway's last reading of the sending counters for up to this
# many seconds, adding what it counted itself since, while every limit has a tenth
# (and at least 10) left; nearer a limit, and with 0, every MAIL reads them.
usage_reuse_seconds = 1.0

[smarthost]
# The internal MTA(s) that receive accepted mail, tried in order on connection failure.
# Each entry is "HOST:PORT" or an inline table with an address and any key below, e.g.
# {{ address = "10.0.0.2:25", starttls = true, username = "gw" }}.
servers = ["{smarthost}"]
# Issue STARTTLS to the smarthost.
starttls = false
# Verify the smarthost's certificate (against ca_file, or the system store if empty).
tls_verify = true
ca_file = ""
# Authenticate to the smarthost; the password is the first line of password_file.
username = ""
password_file = ""
# Seconds to connect, to wait for each reply, and to upload a message.
connect_timeout = 10.0
command_timeout = 60.0
data_timeout = 300.0
# Connections kept open between sessions, per server: a session takes an idle one at
# MAIL FROM and gives it back after the message; 0 opens one per session instead.
pool_size = 8
# Seconds an unused kept connection stays open, and messages one carries before QUIT.
pool_idle_seconds = 30.0
pool_max_messages = 100

[policy]
# Clients matched by no access rule: "allow" or "deny" (see 'submitgw access').
default = "allow"
# Text of the "554 5.7.1" reply that a denied client gets instead of the greeting.
deny_message = "Access denied"
# Check that the From: header address(es) are sender addresses the user may use.
check_header_from = true

[dns]
# Resolvers for reverse DNS checks, as "IP" or "IP:PORT"; empty: /etc/resolv.conf.
nameservers = []
# Seconds to wait for one DNS answer.
timeout = 3.0

[log]
# DEBUG, INFO, WARNING or ERROR.
level = "INFO"
# "json": one JSON object a line; "text": plain text.
format = "json"

[audit]
# Keep sessions, logins, certificate verdicts, access decisions, limit hits and
# messages (with every recipient) in the database, for 'submitgw audit search'.
# The log has every event either way.
database = true
# Days records are kept; the gateway deletes older ones once a day ('submitgw
# audit prune' does it by hand). 0: keep them for ever.
retention_days = 180
# Events are written in batches off the SMTP sessions: every flush_interval
# seconds or batch_size events, whichever comes first. While the database is
# unreachable up to max_queue events wait in memory (about 1 KB each); beyond
# that the oldest are dropped and counted in the log.
flush_interval = 0.5
batch_size = 500
max_queue = 50000
# Seconds a stopping gateway waits for the last events to be written.
shutdown_timeout = 10.0
"""


def render_default_config(hostname: str, smarthost: str = "127.0.0.1:25") -> str:
    return DEFAULT_TEMPLATE.format(hostname=hostname, smarthost=smarthost)
