"""Configuration: the generated file documents every key, and every mistake names its key.

The template is the admin's only reference, so it must hold every key with the
value the code uses when the key is absent; a typo must stop the gateway with
a message naming the key, never be ignored or end in a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from submitgw.config import (
    DEFAULT_TEMPLATE,
    AuditConfig,
    AuthConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    DnsConfig,
    Endpoint,
    LimitsConfig,
    ListenerConfig,
    LogConfig,
    MetricsConfig,
    PasswordsConfig,
    PolicyConfig,
    SelfServiceConfig,
    ServerConfig,
    SmarthostConfig,
    SmarthostServer,
    TlsConfig,
    config_path,
    from_dict,
    load,
    parse_listen,
    render_default_config,
)

BASE = Path("/srv/submitgw")

# Section name in the file -> the dataclass whose fields it holds.
SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "tls": TlsConfig,
    "database": DatabaseConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "smarthost": SmarthostServer,
    "policy": PolicyConfig,
    "dns": DnsConfig,
    "log": LogConfig,
    "passwords": PasswordsConfig,
    "selfservice": SelfServiceConfig,
    "metrics": MetricsConfig,
    "audit": AuditConfig,
}


def parsed_template(hostname: str = "gw.test", smarthost: str = "10.0.0.2:25") -> dict[str, Any]:
    return tomllib.loads(render_default_config(hostname, smarthost))


def template_keys(text: str) -> dict[str, set[str]]:
    """The `key = value` lines of each section, as written in the file."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[([a-z_]+)\]", line.strip())
        if header:
            section = header.group(1)
            keys.setdefault(section, set())
            continue
        match = re.match(r"([a-z_0-9]+) = ", line)
        if match:
            keys[section].add(match.group(1))
    return keys


def config_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(data, BASE)
    return str(info.value)


# --- the template ----------------------------------------------------------------------


def test_rendered_template_parses_to_the_defaults() -> None:
    """Writing the defaults into the file changes nothing: file and code agree on every value."""
    cfg = from_dict(parsed_template(), BASE)
    defaults = Config()

    assert cfg.server == dataclasses.replace(defaults.server, hostname="gw.test")
    assert cfg.submission == defaults.submission
    assert cfg.submissions == defaults.submissions
    assert cfg.auth == defaults.auth
    assert cfg.limits == defaults.limits
    assert cfg.log == defaults.log
    assert cfg.tls == dataclasses.replace(
        defaults.tls,
        cert=BASE / defaults.tls.cert,
        key=BASE / defaults.tls.key,
        ca_cert=BASE / defaults.tls.ca_cert,
        ca_key=BASE / defaults.tls.ca_key,
    )
    assert cfg.database.url == f"sqlite:///{BASE}/submitgw.db"
    assert cfg.database.url.endswith(defaults.database.url.removeprefix("sqlite:///"))
    [server] = cfg.smarthost.servers
    [default_server] = defaults.smarthost.servers
    assert server == dataclasses.replace(default_server, host="10.0.0.2", port=25)


def test_parsing_the_template_equals_parsing_nothing() -> None:
    """Every key written out has the value the code falls back to when it is left out."""
    written = from_dict(parsed_template(smarthost="127.0.0.1:25"), BASE)
    empty = from_dict({"server": {"hostname": "gw.test"}}, BASE)

    for f in dataclasses.fields(Config):
        assert getattr(written, f.name) == getattr(empty, f.name), f.name


@pytest.mark.parametrize(("section", "cls"), SECTIONS.items())
def test_every_key_of_every_section_is_in_the_template(section: str, cls: type) -> None:
    keys = template_keys(DEFAULT_TEMPLATE)
    expected = {f.name for f in dataclasses.fields(cls)}
    if cls is SmarthostServer:
        pooling = {f.name for f in dataclasses.fields(SmarthostConfig)} - {"servers"}
        expected = (expected - {"host", "port"}) | {"servers"} | pooling

    assert keys[section] == expected


@pytest.mark.parametrize("section", ["submission", "submissions"])
def test_every_listener_key_is_in_the_template(section: str) -> None:
    keys = template_keys(DEFAULT_TEMPLATE)

    assert keys[section] == {f.name for f in dataclasses.fields(ListenerConfig)}


def test_the_template_has_no_other_sections() -> None:
    assert set(template_keys(DEFAULT_TEMPLATE)) == set(SECTIONS) | {"submission", "submissions"}


def test_every_key_has_a_comment_above_its_group() -> None:
    """A key line follows either a comment or another key, never a bare section header."""
    lines = DEFAULT_TEMPLATE.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[a-z_0-9]+ = ", line):
            before = lines[i - 1]
            assert before.startswith("#") or re.match(r"[a-z_0-9]+ = ", before), line


def test_template_substitutes_hostname_and_smarthost() -> None:
    data = parsed_template("mail.example.org", "[2001:db8::25]:2525")
    cfg = from_dict(data, BASE)

    assert cfg.server.hostname == "mail.example.org"
    assert [str(s) for s in cfg.smarthost.servers] == ["[2001:db8::25]:2525"]


# --- unknown keys and wrong types ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"sever": {}}, "sever"),
        ({"server": {"hostnme": "x"}}, "hostnme"),
        ({"tls": {"certificate": "x"}}, "certificate"),
        ({"database": {"uri": "x"}}, "uri"),
        ({"auth": {"argon2_time": 1}}, "argon2_time"),
        ({"limits": {"max_size": 1}}, "max_size"),
        ({"log": {"levl": "INFO"}}, "levl"),
        ({"submission": {"port": 587}}, "port"),
        ({"submissions": {"listen": "off", "tls": True}}, "tls"),
        ({"smarthost": {"start_tls": True}}, "start_tls"),
        ({"smarthost": {"servers": [{"address": "a:25", "verify": False}]}}, "verify"),
    ],
)
def test_unknown_section_or_key_is_named(data: dict[str, Any], named: str) -> None:
    assert named in config_error(data)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("server", "hostname", 5),
        ("server", "shutdown_grace", "30"),
        ("server", "hide_client_ip", 1),
        ("server", "hide_client_ip", "false"),
        ("tls", "cert", 5),
        ("tls", "min_version", 1.2),
        ("database", "url", ["sqlite://"]),
        ("auth", "workers", 2.0),
        ("auth", "max_pending", "16"),
        ("auth", "success_cache_entries", 1.5),
        ("auth", "success_cache_seconds", "300"),
        ("limits", "max_recipients", "100"),
        ("limits", "max_recipients", True),
        ("limits", "idle_timeout", "300"),
        ("log", "level", 10),
        ("submission", "listen", 587),
        ("submissions", "listen", False),
        ("smarthost", "starttls", "yes"),
        ("smarthost", "tls_verify", 0),
        ("smarthost", "tls_verify", "false"),
        ("smarthost", "ca_file", 5),
        ("smarthost", "username", 5),
        ("smarthost", "password_file", True),
        ("smarthost", "connect_timeout", "10"),
        ("smarthost", "data_timeout", True),
    ],
)
def test_wrong_types_are_errors_naming_the_key(section: str, key: str, value: Any) -> None:
    """Above all `tls_verify = 0` or `starttls = "no"` must not silently change TLS."""
    assert key in config_error({section: {key: value}})


SMARTHOST_OPTIONS = sorted({f.name for f in dataclasses.fields(SmarthostServer)} - {"host", "port"})


@pytest.mark.parametrize("key", SMARTHOST_OPTIONS)
def test_every_smarthost_option_is_type_checked_in_a_server_entry(key: str) -> None:
    wrong: Any = 1.5 if key in {"starttls", "tls_verify"} else ["x"]
    message = config_error({"smarthost": {"servers": [{"address": "a:25", key: wrong}]}})

    assert key in message
    assert "a:25" in message


def test_integers_are_accepted_where_seconds_are_floats() -> None:
    cfg = from_dict({"limits": {"idle_timeout": 5}, "smarthost": {"connect_timeout": 3}}, BASE)

    assert cfg.limits.idle_timeout == 5.0
    assert isinstance(cfg.limits.idle_timeout, float)
    assert cfg.smarthost.servers[0].connect_timeout == 3.0


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"server": "gw"}, "[server]"),
        ({"tls": {"min_version": "1.1"}}, "min_version"),
        ({"log": {"format": "xml"}}, "format"),
        ({"log": {"level": "LOUD"}}, "level"),
        ({"limits": {"max_recipients": 0}}, "max_recipients"),
        ({"limits": {"idle_timeout": -1.0}}, "idle_timeout"),
        ({"auth": {"workers": 0}}, "workers"),
        ({"auth": {"max_pending": -1}}, "max_pending"),
        ({"auth": {"success_cache_entries": -1}}, "success_cache_entries"),
        ({"auth": {"success_cache_seconds": 0}}, "success_cache_seconds"),
        ({"smarthost": {"servers": []}}, "servers"),
        ({"smarthost": {"servers": "a:25"}}, "servers"),
        ({"smarthost": {"servers": [25]}}, "servers"),
        ({"smarthost": {"servers": [{"starttls": True}]}}, "address"),
        ({"smarthost": {"servers": ["nowhere"]}}, "nowhere"),
        ({"smarthost": {"pool_size": -1}}, "pool_size"),
        ({"smarthost": {"pool_size": "8"}}, "pool_size"),
        ({"smarthost": {"pool_idle_seconds": 0}}, "pool_idle_seconds"),
        ({"smarthost": {"pool_max_messages": 0}}, "pool_max_messages"),
        ({"smarthost": {"servers": [{"address": "a:25", "pool_size": 2}]}}, "pool_size"),
        ({"submission": {"listen": "localhost"}}, "submission"),
        ({"submissions": {"listen": "0.0.0.0:99999"}}, "submissions"),
        ({"submission": {"proxy_protocol": True}}, "trusted_proxies"),
        ({"submission": {"proxy_protocol": "yes"}}, "proxy_protocol"),
        ({"submissions": {"trusted_proxies": "10.0.0.1"}}, "trusted_proxies"),
        ({"submissions": {"trusted_proxies": ["lb.example.net"]}}, "lb.example.net"),
        ({"submissions": {"trusted_proxies": ["10.0.0.1/8"]}}, "10.0.0.1/8"),
        ({"metrics": {"listen": 9587}}, "[metrics] listen"),
        ({"metrics": {"listen": "localhost"}}, "metrics"),
        ({"metrics": {"readiness_timeout": 0}}, "readiness_timeout"),
        ({"metrics": {"readiness_cache_seconds": -1}}, "readiness_cache_seconds"),
        ({"metrics": {"max_connections": 0}}, "max_connections"),
        ({"metrics": {"scrape": True}}, "scrape"),
        ({"audit": {"retention_days": -1}}, "retention_days"),
        ({"audit": {"flush_interval": 0}}, "flush_interval"),
        ({"audit": {"batch_size": 0}}, "batch_size"),
        ({"audit": {"max_queue": 10, "batch_size": 11}}, "max_queue"),
        ({"audit": {"database": "yes"}}, "database"),
    ],
)
def test_bad_values_are_errors_naming_what_is_wrong(data: dict[str, Any], named: str) -> None:
    assert named in config_error(data)


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR"])
def test_log_levels_from_the_template_comment_are_accepted(level: str) -> None:
    assert from_dict({"log": {"level": level}}, BASE).log.level == level


# --- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "setup"
    folder.mkdir()
    config = folder / "submitgw.toml"
    config.write_text(render_default_config("gw.test"), encoding="utf-8")

    cfg = load(config)

    assert cfg.path == config.resolve()
    assert cfg.tls.cert == folder.resolve() / "tls/server.crt"
    assert cfg.tls.key == folder.resolve() / "tls/server.key"
    assert cfg.tls.ca_cert == folder.resolve() / "ca/ca.crt"
    assert cfg.tls.ca_key == folder.resolve() / "ca/ca.key"
    assert cfg.database.url == f"sqlite:///{folder.resolve()}/submitgw.db"


def test_relative_paths_do_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "setup"
    folder.mkdir()
    (folder / "submitgw.toml").write_text(render_default_config("gw.test"), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    cfg = load(Path("../setup/submitgw.toml"))

    assert cfg.tls.cert == folder.resolve() / "tls/server.crt"
    assert cfg.database.url == f"sqlite:///{folder.resolve()}/submitgw.db"


def test_absolute_paths_and_other_databases_are_kept() -> None:
    cfg = from_dict(
        {
            "tls": {"cert": "/etc/ssl/gw.crt", "key": "~/gw.key"},
            "database": {"url": "postgresql+psycopg://gw:pw@db/gw"},
        },
        BASE,
    )

    assert cfg.tls.cert == Path("/etc/ssl/gw.crt")
    assert cfg.tls.key == Path("~/gw.key").expanduser()
    assert cfg.database.url == "postgresql+psycopg://gw:pw@db/gw"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/gw.db", f"sqlite:///{BASE}/data/gw.db"),
        ("sqlite:////var/lib/gw.db", "sqlite:////var/lib/gw.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_sqlite_urls(url: str, expected: str) -> None:
    assert from_dict({"database": {"url": url}}, BASE).database.url == expected


def test_smarthost_files_resolve_against_the_config_folder() -> None:
    cfg = from_dict(
        {
            "smarthost": {
                "servers": ["a:25", {"address": "b:25", "ca_file": "/etc/mta-ca.pem"}],
                "ca_file": "ca/mta.pem",
                "password_file": "secret/mta",
            }
        },
        BASE,
    )
    first, second = cfg.smarthost.servers

    assert first.ca_file == BASE / "ca/mta.pem"
    assert first.password_file == BASE / "secret/mta"
    assert second.ca_file == Path("/etc/mta-ca.pem")
    assert second.password_file == BASE / "secret/mta"


def test_empty_strings_in_the_template_mean_unset() -> None:
    [server] = from_dict(parsed_template(), BASE).smarthost.servers

    assert server.ca_file is None
    assert server.password_file is None
    assert server.username is None


def test_missing_file_error_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="submitgw init"):
        load(tmp_path / "nope.toml")


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nhostname = 1\n", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load(path)


# --- smarthost entries ---------------------------------------------------------------------


def test_inline_table_entries_override_the_shared_keys() -> None:
    cfg = from_dict(
        {
            "smarthost": {
                "servers": [
                    "10.0.0.1:25",
                    {"address": "10.0.0.2:587", "starttls": True, "username": "gw"},
                    {"address": "[2001:db8::3]:25", "connect_timeout": 1.5},
                ],
                "starttls": False,
                "username": "",
                "connect_timeout": 7.0,
                "command_timeout": 20.0,
            }
        },
        BASE,
    )
    plain, override, ipv6 = cfg.smarthost.servers

    assert (plain.host, plain.port, plain.starttls, plain.username) == ("10.0.0.1", 25, False, None)
    assert plain.connect_timeout == 7.0
    assert (override.host, override.port) == ("10.0.0.2", 587)
    assert (override.starttls, override.username) == (True, "gw")
    assert override.connect_timeout == 7.0
    assert (ipv6.host, ipv6.port, ipv6.connect_timeout) == ("2001:db8::3", 25, 1.5)
    assert all(s.command_timeout == 20.0 for s in cfg.smarthost.servers)


def test_servers_keep_their_order() -> None:
    addresses = ["c:25", "a:25", "b:25"]
    cfg = from_dict({"smarthost": {"servers": addresses}}, BASE)

    assert [str(s) for s in cfg.smarthost.servers] == addresses


# --- endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:587", "127.0.0.1", 587, "127.0.0.1:587"),
        ("0.0.0.0:465", "0.0.0.0", 465, "0.0.0.0:465"),
        ("mail.example.org:25", "mail.example.org", 25, "mail.example.org:25"),
        (":2525", "0.0.0.0", 2525, "0.0.0.0:2525"),
        ("[::1]:587", "::1", 587, "[::1]:587"),
        ("[::]:465", "::", 465, "[::]:465"),
        ("[2001:db8::1]:25", "2001:db8::1", 25, "[2001:db8::1]:25"),
        ("  localhost:65535 ", "localhost", 65535, "localhost:65535"),
    ],
)
def test_endpoint_parse(text: str, host: str, port: int, shown: str) -> None:
    endpoint = Endpoint.parse(text)

    assert endpoint == Endpoint(host, port)
    assert str(endpoint) == shown
    assert Endpoint.parse(str(endpoint)) == endpoint


@pytest.mark.parametrize(
    "text", ["", "localhost", "localhost:", "host:port", "[::1]", "host:0", "host:65536", "h:-1"]
)
def test_endpoint_parse_errors_quote_the_text(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        Endpoint.parse(text, "--listen")

    assert str(info.value).startswith(f"--listen {text.strip()!r}")


def test_port_zero_is_for_listeners_only() -> None:
    """A listener may ask for any free port; a smarthost on port 0 is a mistake."""
    assert parse_listen("127.0.0.1:0", "--listen") == Endpoint("127.0.0.1", 0)
    assert from_dict({"submission": {"listen": "[::1]:0"}}, BASE).submission.listen == Endpoint(
        "::1", 0
    )
    with pytest.raises(ConfigError):
        Endpoint.parse("127.0.0.1:0", "smarthost")
    with pytest.raises(ConfigError):
        parse_listen("127.0.0.1:65536", "--listen")


@pytest.mark.parametrize("word", ["off", "OFF", " Off "])
def test_listen_off_disables_a_listener(word: str) -> None:
    assert parse_listen(word, "submission") is None
    cfg = from_dict({"submissions": {"listen": word}}, BASE)

    assert cfg.submissions.listen is None
    assert cfg.submission.listen == Endpoint("0.0.0.0", 587)


def test_metrics_are_off_unless_asked_for() -> None:
    assert Config().metrics.listen is None
    assert from_dict({}, BASE).metrics.listen is None
    cfg = from_dict({"metrics": {"listen": "127.0.0.1:9587"}}, BASE)

    assert cfg.metrics.listen == Endpoint("127.0.0.1", 9587)


def test_listen_addresses_from_the_file() -> None:
    cfg = from_dict(
        {"submission": {"listen": "[::1]:1587"}, "submissions": {"listen": "127.0.0.1:1465"}},
        BASE,
    )

    assert cfg.submission.listen == Endpoint("::1", 1587)
    assert cfg.submissions.listen == Endpoint("127.0.0.1", 1465)


# --- which file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("explicit", "env", "expected"),
    [
        ("/etc/a.toml", {"SUBMITGW_CONFIG": "/etc/b.toml"}, Path("/etc/a.toml")),
        (None, {"SUBMITGW_CONFIG": "/etc/b.toml"}, Path("/etc/b.toml")),
        (None, {"SUBMITGW_CONFIG": ""}, Path("submitgw.toml")),
        (None, {}, Path("submitgw.toml")),
        ("", {"SUBMITGW_CONFIG": "rel/c.toml"}, Path("rel/c.toml")),
        ("x.toml", {}, Path("x.toml")),
    ],
)
def test_config_path_precedence(explicit: str | None, env: dict[str, str], expected: Path) -> None:
    """--config beats $SUBMITGW_CONFIG, which beats ./submitgw.toml."""
    assert config_path(explicit, env) == expected


def test_trusted_proxies_are_kept_per_listener_as_networks() -> None:
    cfg = from_dict(
        {
            "submission": {"proxy_protocol": True, "trusted_proxies": ["127.0.0.1", "fd00::/8"]},
            "submissions": {"trusted_proxies": ["10.0.0.0/8"]},
        },
        Path("/srv"),
    )
    assert cfg.submission.proxy_protocol
    assert cfg.submission.trusted_proxies == ("127.0.0.1/32", "fd00::/8")
    assert not cfg.submissions.proxy_protocol
    assert cfg.submissions.trusted_proxies == ("10.0.0.0/8",)
