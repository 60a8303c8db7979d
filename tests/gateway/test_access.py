"""Client access rules in a real gateway: clients bind different 127.x addresses to be
different hosts, and a real DNS server on loopback serves their PTR and A records."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from typing import Any

import pytest

from tests.support.client import Dialog, b64
from tests.support.dns import LoopbackDns
from tests.support.gateway import PASSWORD, USER, GatewayProcess, run_cli

DENY_MESSAGE = "Access denied by policy; write to postmaster@example.org"
DENIED = f"554 5.7.1 {DENY_MESSAGE}"

GOOD = "127.0.0.2"  # PTR good.example.net, whose A is 127.0.0.2: forward-confirmed
CLAIMS_GOOD = "127.0.0.3"  # PTR good.example.net too, but that name's A is not 127.0.0.3
NO_PTR = "127.0.0.4"
UNDER_SUFFIX = "127.0.0.5"  # PTR and A: mx.other.example.net
BARE_DOMAIN = "127.0.0.6"  # PTR and A: example.net itself
ELSEWHERE = "127.0.1.1"  # PTR and A: host.elsewhere.test


@pytest.fixture
def hosts(dns_server: LoopbackDns) -> LoopbackDns:
    dns_server.host(GOOD, "good.example.net")
    dns_server.ptr(CLAIMS_GOOD, "good.example.net")
    dns_server.host(UNDER_SUFFIX, "mx.other.example.net")
    dns_server.host(BARE_DOMAIN, "example.net")
    dns_server.host(ELSEWHERE, "host.elsewhere.test")
    dns_server.host("::1", "v6.example.net")
    return dns_server


@pytest.fixture
def make_gw(gateway_factory: Any, hosts: LoopbackDns) -> Any:
    """A gateway asking the loopback DNS server; rules are added before it starts."""

    def make(
        *rules: str, default: str = "allow", start: bool = True, **sections: Any
    ) -> GatewayProcess:
        options = {
            "dns": {"nameservers": [hosts.address], "timeout": 1.0},
            "policy": {"default": default, "deny_message": DENY_MESSAGE},
            **sections,
        }
        gw: GatewayProcess = gateway_factory(options, start=False)
        for spec in rules:
            action, rule = spec.split()
            result = run_cli(gw.config, "access", action, rule)
            assert result.returncode == 0, result.stderr
        if start:
            gw.start()
        return gw

    return make


def greeting(gw: GatewayProcess, source: str, **kwargs: Any) -> str:
    d = Dialog(kwargs.pop("port", gw.port), source=source, **kwargs)
    try:
        return str(d.greeting)
    finally:
        d.close()


def assert_denied(gw: GatewayProcess, source: str, **kwargs: Any) -> None:
    """The refusal is the first and only line, and then the connection is closed."""
    d = Dialog(kwargs.pop("port", gw.port), source=source, **kwargs)
    try:
        assert d.greeting.lines == [DENIED]
        assert d.closed()
        assert d.buffer == b""
    finally:
        d.close()


def assert_allowed(gw: GatewayProcess, source: str, **kwargs: Any) -> None:
    assert greeting(gw, source, **kwargs) == "220 gw.test ESMTP ready"


def access_events(gw: GatewayProcess, client: str) -> list[dict[str, Any]]:
    """The `access` log lines for one client, waiting briefly for them to be written."""
    deadline = time.monotonic() + 5
    while True:
        events = [e for e in gw.log_events("access") if e["client"] == client]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_ip_rule_denies_that_address_only_and_needs_no_dns(
    make_gw: Any, hosts: LoopbackDns
) -> None:
    gw = make_gw("deny 127.0.0.3")

    assert_denied(gw, CLAIMS_GOOD)
    assert_allowed(gw, GOOD)

    assert hosts.count() == 0, "address rules alone must not wait on DNS"
    (event,) = access_events(gw, CLAIMS_GOOD)
    assert event["decision"] == "deny"
    assert event["rule"] == "127.0.0.3"
    assert isinstance(event["rule_id"], int)
    assert event["dns"] == "not needed"
    sessions = [e for e in gw.log_events("session") if e["client"] == CLAIMS_GOOD]
    assert [e["end"] for e in sessions] == ["access-denied"]


def test_cidr_v4_longest_prefix_and_exact_ip_win(make_gw: Any) -> None:
    gw = make_gw("deny 127.0.0.0/29", "allow 127.0.0.4", "deny 127.0.0.0/8", "allow 127.0.1.0/24")

    assert_denied(gw, GOOD)  # 127.0.0.0/29
    assert_denied(gw, CLAIMS_GOOD)  # 127.0.0.0/29
    assert_allowed(gw, NO_PTR)  # the exact IP beats the /29
    assert_denied(gw, "127.0.0.9")  # only 127.0.0.0/8
    assert_allowed(gw, ELSEWHERE)  # the /24 beats the /8


def test_cidr_v6(make_gw: Any) -> None:
    gw = make_gw("deny ::/64", start=False)
    gw.start("--listen", f"[::1]:{gw.port}")

    assert_denied(gw, "::1", host="::1")
    # An IPv4 client (on the other listener) is not in an IPv6 network.
    assert_allowed(gw, GOOD, port=gw.tls_port, tls_context=gw.ssl_context())


def test_exact_domain_matches_only_the_forward_confirmed_name(make_gw: Any) -> None:
    """default deny + allow good.example.net: a PTR alone cannot claim the allowed name."""
    gw = make_gw("allow good.example.net", default="deny")

    assert_allowed(gw, GOOD)
    assert_denied(gw, CLAIMS_GOOD)
    assert_denied(gw, UNDER_SUFFIX)
    assert_denied(gw, NO_PTR)

    (allowed,) = access_events(gw, GOOD)
    assert (allowed["decision"], allowed["name"], allowed["dns"]) == (
        "allow",
        "good.example.net",
        "confirmed",
    )
    (claimed,) = access_events(gw, CLAIMS_GOOD)
    assert (claimed["decision"], claimed["rule"], claimed["name"], claimed["dns"]) == (
        "deny",
        "policy.default",
        None,
        "not-confirmed",
    )


def test_suffix_matches_every_name_under_it_but_not_the_bare_domain(make_gw: Any) -> None:
    gw = make_gw("deny .example.net")

    assert_denied(gw, GOOD)
    assert_denied(gw, UNDER_SUFFIX)
    assert_allowed(gw, BARE_DOMAIN)
    assert_allowed(gw, ELSEWHERE)
    assert_allowed(gw, CLAIMS_GOOD)  # unconfirmed: `unknown`, not good.example.net


def test_unknown_covers_no_ptr_unconfirmed_ptr_and_dns_failure(
    make_gw: Any, hosts: LoopbackDns
) -> None:
    gw = make_gw("deny unknown")

    assert_allowed(gw, GOOD)
    assert_denied(gw, CLAIMS_GOOD)
    assert_denied(gw, NO_PTR)

    hosts.silent = True
    started = time.monotonic()
    assert_denied(gw, ELSEWHERE)  # confirmed when DNS answers; unknown when it cannot
    assert time.monotonic() - started < 5
    (event,) = access_events(gw, ELSEWHERE)
    assert event["dns"] == "dns-error"


def test_denied_on_the_implicit_tls_port_inside_tls(make_gw: Any) -> None:
    gw = make_gw("deny 127.0.0.3")

    assert_denied(gw, CLAIMS_GOOD, port=gw.tls_port, tls_context=gw.ssl_context())
    assert_allowed(gw, GOOD, port=gw.tls_port, tls_context=gw.ssl_context())


def test_denied_client_cannot_even_try_auth(make_gw: Any) -> None:
    """Commands sent blindly after connecting get no answer and reach nothing."""
    gw = make_gw("deny 127.0.0.3")
    d = Dialog(gw.port, source=CLAIMS_GOOD)
    try:
        blob = b64("\0" + USER + "\0" + PASSWORD)
        d.send(f"EHLO x\r\nAUTH PLAIN {blob}\r\n")
        assert d.greeting.lines == [DENIED]
        assert d.closed()
        assert d.buffer == b""
    finally:
        d.close()
    assert [e for e in gw.log_events("auth") if e["client"] == CLAIMS_GOOD] == []


def test_rule_changes_apply_to_the_next_connection_without_restart(make_gw: Any) -> None:
    gw = make_gw()
    assert_allowed(gw, GOOD)

    added = run_cli(gw.config, "access", "deny", GOOD, "--comment", "ticket 7")
    assert added.returncode == 0, added.stderr
    assert_denied(gw, GOOD)
    assert_allowed(gw, CLAIMS_GOOD)

    (rule,) = json.loads(run_cli(gw.config, "access", "list", "--json").stdout)
    assert run_cli(gw.config, "access", "remove", str(rule["id"])).returncode == 0
    assert_allowed(gw, GOOD)


def test_default_deny_with_an_allow_rule(make_gw: Any) -> None:
    gw = make_gw("allow 127.0.0.2", default="deny")

    assert_allowed(gw, GOOD)
    assert_denied(gw, CLAIMS_GOOD)
    assert_denied(gw, "127.0.0.1")


CHECK_RULES = ("allow .example.net", "deny unknown", "deny 127.0.0.5")


CHECK_CASES = [
    # ip, exit status, decision, winning rule, reverse DNS
    (GOOD, 0, "ALLOW", "#1 allow .example.net", "good.example.net (forward-confirmed"),
    (
        CLAIMS_GOOD,
        3,
        "DENY",
        "#2 deny unknown",
        "unknown (PTR not confirmed: PTR good.example.net has A 127.0.0.2, not 127.0.0.3)",
    ),
    (NO_PTR, 3, "DENY", "#2 deny unknown", "unknown (no PTR: no PTR record for 127.0.0.4)"),
    (UNDER_SUFFIX, 3, "DENY", "#3 deny 127.0.0.5", "mx.other.example.net (forward-confirmed"),
    (ELSEWHERE, 0, "ALLOW", 'none: [policy] default = "allow"', "host.elsewhere.test"),
]


def test_access_check_prints_the_decision_the_gateway_makes(make_gw: Any) -> None:
    gw = make_gw(*CHECK_RULES, start=False)
    reports = {case[0]: run_cli(gw.config, "access", "check", case[0]) for case in CHECK_CASES}
    gw.start()

    for ip, exit_code, decision, winner, reverse_dns in CHECK_CASES:
        result = reports[ip]
        assert result.returncode == exit_code, (ip, result.stdout, result.stderr)
        fields = {
            key: value.strip()
            for key, _, value in (line.partition(":") for line in result.stdout.splitlines())
            if not key.startswith(" ")
        }
        assert fields["client"] == ip
        assert fields["decision"].startswith(decision), ip
        assert fields["winning rule"] == winner, ip
        assert fields["reverse DNS"].startswith(reverse_dns), ip
        if decision == "DENY":
            assert DENIED in fields["decision"]
            assert_denied(gw, ip)
        else:
            assert_allowed(gw, ip)


def test_access_check_lists_every_matching_rule(make_gw: Any) -> None:
    gw = make_gw(*CHECK_RULES, start=False)

    result = run_cli(gw.config, "access", "check", UNDER_SUFFIX)

    assert "matching rules: 2, most specific first" in result.stdout
    rule_lines = [line.split() for line in result.stdout.splitlines() if line.startswith("  #")]
    assert [line[:3] for line in rule_lines] == [
        ["#3", "deny", "127.0.0.5"],
        ["#1", "allow", ".example.net"],
    ]


def test_access_cli_errors_are_one_line(make_gw: Any) -> None:
    gw = make_gw(start=False)
    assert run_cli(gw.config, "access", "deny", "10.0.0.0/8").returncode == 0

    cases = {
        ("access", "deny", "10.1.2.3/8"): "did you mean 10.0.0.0/8?",
        ("access", "allow", "10.0.0.0/8"): "already exists as #1 (deny): remove it first",
        ("access", "deny", "not a rule"): "not an IP address, CIDR network or domain name",
        ("access", "remove", "99"): "no access rule #99",
        ("access", "check", "example.net"): "is not an IP address",
        ("user", "set-networks", USER, "10.0.0.1/8"): "did you mean 10.0.0.0/8?",
        ("user", "set-networks", "nobody@example.org", "10.0.0.0/8"): "no user",
    }
    for args, message in cases.items():
        result = run_cli(gw.config, *args)
        assert result.returncode == 1, args
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    both = run_cli(gw.config, "user", "set-networks", USER, "--clear", "10.0.0.0/8")
    assert both.returncode == 2
    assert "--clear" in both.stderr


def test_access_list(make_gw: Any) -> None:
    gw = make_gw(start=False)
    run_cli(gw.config, "access", "deny", "Bad.Example.NET", "--comment", "spam run 2026-12")
    run_cli(gw.config, "access", "allow", "2001:DB8::/32")

    rows = json.loads(run_cli(gw.config, "access", "list", "--json").stdout)
    assert [(r["id"], r["action"], r["rule"], r["comment"]) for r in rows] == [
        (1, "deny", "bad.example.net", "spam run 2026-12"),
        (2, "allow", "2001:db8::/32", ""),
    ]
    text = run_cli(gw.config, "access", "list").stdout.splitlines()
    assert re.fullmatch(r"#1\tdeny\tbad\.example\.net\t\S+\tspam run 2026-12", text[0])
    assert re.fullmatch(r"#2\tallow\t2001:db8::/32\t\S+", text[1])


def login(gw: GatewayProcess, source: str, password: str = PASSWORD) -> str:
    d = Dialog(gw.port, source=source)
    try:
        d.cmd("EHLO client.test")
        assert d.starttls(gw.ssl_context()).code == 220
        d.cmd("EHLO client.test")
        return str(d.login(USER, password))
    finally:
        d.close()


def test_user_networks_refuse_a_correct_password_from_elsewhere(make_gw: Any) -> None:
    gw = make_gw()
    result = run_cli(gw.config, "user", "set-networks", USER, "127.0.0.2", "10.0.0.0/8")
    assert result.returncode == 0, result.stderr
    assert "10.0.0.0/8, 127.0.0.2/32" in result.stdout

    assert login(gw, CLAIMS_GOOD) == "535 5.7.8 Authentication credentials invalid"
    assert login(gw, CLAIMS_GOOD, "wrong") == "535 5.7.8 Authentication credentials invalid"
    assert login(gw, GOOD).startswith("235 ")

    (user,) = json.loads(run_cli(gw.config, "user", "list", "--json").stdout)
    assert user["networks"] == ["10.0.0.0/8", "127.0.0.2/32"]
    cleared = run_cli(gw.config, "user", "set-networks", USER, "--clear")
    assert cleared.returncode == 0, cleared.stderr
    assert login(gw, CLAIMS_GOOD).startswith("235 ")
    (user,) = json.loads(run_cli(gw.config, "user", "list", "--json").stdout)
    assert user["networks"] == []


def test_user_networks_refuse_a_valid_certificate_from_elsewhere(make_gw: Any) -> None:
    certs_on = {"client_certificates": "optional"}
    gw = make_gw(start=False, submission=certs_on, submissions=certs_on)
    assert run_cli(gw.config, "user", "set-auth", USER, "certificate").returncode == 0
    cert = gw.issue_cert()
    assert run_cli(gw.config, "user", "set-networks", USER, GOOD).returncode == 0
    gw.start()

    def external(source: str) -> tuple[str, str]:
        d = Dialog(gw.tls_port, source=source, tls_context=cert.context(gw.ca_file))
        try:
            d.cmd("EHLO client.test")
            mail = str(d.cmd("MAIL FROM:<alice@example.org>"))
            return mail, str(d.cmd("AUTH EXTERNAL ="))
        finally:
            d.close()

    mail, auth = external(CLAIMS_GOOD)
    assert mail.startswith("530 5.7.0")
    # Outside the user's networks says no more than a disabled account would.
    assert auth == "535 5.7.8 Certificate not valid for this gateway"
    mail, _ = external(GOOD)
    assert mail.startswith("250 ")


def test_unreadable_rules_fail_closed_with_a_temporary_error(make_gw: Any) -> None:
    """A database hiccup must not let a denied client in: 421, and the client retries."""
    gw = make_gw("deny 127.0.0.3")
    with sqlite3.connect(gw.dir / "submitgw.db") as connection:
        connection.execute("ALTER TABLE access_rules RENAME TO access_rules_away")

    d = Dialog(gw.port, source=GOOD)
    try:
        assert d.greeting.lines == ["421 4.3.0 Temporary failure, try again later"]
        assert d.closed()
    finally:
        d.close()
    (event,) = access_events(gw, GOOD)
    assert event["decision"] == "error"
    assert "access rules unavailable" in event["reason"]
