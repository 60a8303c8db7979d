"""Access rules as pure functions: what each rule means and which one decides."""

from __future__ import annotations

import re

import pytest

from submitgw.rules.access import (
    CONFIRMED,
    DNS_ERROR,
    NO_PTR,
    NOT_CONFIRMED,
    ClientName,
    Rule,
    RuleError,
    client_address,
    decide,
    matches,
    needs_name,
    parse_network,
    parse_rule,
    rule_kind,
    source_allowed,
)

GOOD = ClientName(("mail.example.net",), CONFIRMED)
UNKNOWN_NAME = ClientName((), NOT_CONFIRMED, "PTR mail.example.net has A 192.0.2.9, not …")


@pytest.mark.parametrize(
    ("text", "normalised", "kind"),
    [
        ("192.0.2.10", "192.0.2.10", "ip"),
        (" 192.0.2.10 ", "192.0.2.10", "ip"),
        ("192.0.2.10/32", "192.0.2.10", "ip"),
        ("192.0.2.0/24", "192.0.2.0/24", "cidr"),
        ("0.0.0.0/0", "0.0.0.0/0", "cidr"),
        ("2001:DB8::1", "2001:db8::1", "ip"),
        ("2001:db8:0::/32", "2001:db8::/32", "cidr"),
        ("::1", "::1", "ip"),
        ("::ffff:192.0.2.10", "192.0.2.10", "ip"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24", "cidr"),
        ("Mail.Example.NET.", "mail.example.net", "name"),
        (".Example.net", ".example.net", "suffix"),
        (".example.net.", ".example.net", "suffix"),
        ("localhost", "localhost", "name"),
        ("bücher.example", "xn--bcher-kva.example", "name"),
        ("UNKNOWN", "unknown", "unknown"),
    ],
)
def test_parse_rule_normalises(text: str, normalised: str, kind: str) -> None:
    assert parse_rule(text) == normalised
    assert rule_kind(normalised) == kind


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.1.2.3/8", "has host bits set: did you mean 10.0.0.0/8?"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("10.0.0.0/33", "not an IP address or CIDR network"),
        ("1.2.3.256", "not an IP address or CIDR network"),
        ("1.2.3", "not an IP address or CIDR network"),
        ("", "not an IP address, CIDR network or domain name"),
        (".", "not an IP address, CIDR network or domain name"),
        ("exa mple.net", "not an IP address, CIDR network or domain name"),
        ("-bad.example.net", "not an IP address, CIDR network or domain name"),
        ("a..example.net", "not an IP address, CIDR network or domain name"),
        ("*.example.net", "not an IP address, CIDR network or domain name"),
        ("host.123", "neither a valid IP address nor a domain name"),
    ],
)
def test_parse_rule_refuses_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=re.escape(message)):
        parse_rule(text)


def rules(*specs: str) -> list[Rule]:
    """`"deny 10.0.0.0/8"` → Rule; ids follow the order given."""
    out = []
    for i, spec in enumerate(specs, 1):
        action, text = spec.split()
        out.append(Rule(i, action, parse_rule(text)))
    return out


# Client 192.0.2.10 named mail.example.net (forward-confirmed) unless the case says otherwise.
PRECEDENCE = [
    # exact IP beats any network
    (["deny 192.0.2.0/24", "allow 192.0.2.10"], GOOD, "allow 192.0.2.10"),
    (["allow 0.0.0.0/0", "deny 192.0.2.10"], GOOD, "deny 192.0.2.10"),
    # the longest prefix wins among networks
    (["deny 192.0.0.0/8", "allow 192.0.2.0/24"], GOOD, "allow 192.0.2.0/24"),
    (["allow 192.0.2.0/24", "deny 192.0.2.8/29"], GOOD, "deny 192.0.2.8/29"),
    # any address rule beats any name rule
    (["deny mail.example.net", "allow 192.0.0.0/8"], GOOD, "allow 192.0.0.0/8"),
    (["allow unknown", "deny 192.0.2.0/24"], UNKNOWN_NAME, "deny 192.0.2.0/24"),
    # an exact name beats a suffix
    (["deny .example.net", "allow mail.example.net"], GOOD, "allow mail.example.net"),
    (["allow .example.net", "deny mail.example.net"], GOOD, "deny mail.example.net"),
    # the longest suffix wins
    (["deny .net", "allow .example.net"], GOOD, "allow .example.net"),
    (["allow .net", "deny .example.net"], GOOD, "deny .example.net"),
    # `unknown` only for clients without a confirmed name, and below every name rule
    (["deny unknown", "allow .example.net"], UNKNOWN_NAME, "deny unknown"),
    (["deny unknown"], GOOD, None),
    # a name rule does not match an unconfirmed PTR claiming that name
    (["allow mail.example.net", "allow .example.net"], UNKNOWN_NAME, None),
]


@pytest.mark.parametrize(("specs", "name", "winner"), PRECEDENCE)
def test_most_specific_rule_wins(specs: list[str], name: ClientName, winner: str | None) -> None:
    decision = decide(client_address("192.0.2.10"), rules(*specs), "allow", name)

    if winner is None:
        assert decision.rule is None
        assert decision.action == "allow"
    else:
        assert decision.rule is not None
        assert f"{decision.rule.action} {decision.rule.rule}" == winner
        assert decision.action == winner.split()[0]


def test_every_matching_rule_is_reported_most_specific_first() -> None:
    all_rules = rules("deny .net", "allow 0.0.0.0/0", "deny mail.example.net", "allow 192.0.2.0/24")

    decision = decide(client_address("192.0.2.10"), all_rules, "deny", GOOD)

    assert [r.id for r in decision.matched] == [4, 2, 3, 1]


def test_nothing_matched_gives_the_default() -> None:
    some = rules("deny 198.51.100.0/24", "deny .example.org")
    address = client_address("192.0.2.10")

    assert decide(address, some, "deny", GOOD).action == "deny"
    assert decide(address, some, "allow", GOOD).action == "allow"
    assert decide(address, [], "deny", GOOD).rule is None


def test_deny_wins_a_tie() -> None:
    """Two confirmed names, each matching an exact-name rule of equal rank."""
    two = ClientName(("a.example.net", "b.example.net"), CONFIRMED)
    orders = (
        ["allow a.example.net", "deny b.example.net"],
        ["deny a.example.net", "allow b.example.net"],
    )
    for order in orders:
        decision = decide(client_address("192.0.2.10"), rules(*order), "allow", two)
        assert decision.action == "deny"


def test_suffix_matches_names_under_it_only() -> None:
    suffix = Rule(1, "deny", ".example.net")
    address = client_address("192.0.2.10")

    def named(name: str) -> ClientName:
        return ClientName((name,), CONFIRMED)

    assert matches(suffix, address, named("mail.example.net"))
    assert matches(suffix, address, named("a.b.example.net"))
    assert not matches(suffix, address, named("example.net"))
    assert not matches(suffix, address, named("badexample.net"))
    assert not matches(suffix, address, named("example.net.evil.test"))


def test_exact_name_does_not_match_subdomains() -> None:
    exact = Rule(1, "deny", "example.net")
    address = client_address("192.0.2.10")

    assert matches(exact, address, ClientName(("example.net",), CONFIRMED))
    assert not matches(exact, address, ClientName(("mail.example.net",), CONFIRMED))


@pytest.mark.parametrize("status", [NO_PTR, NOT_CONFIRMED, DNS_ERROR])
def test_unknown_covers_every_unconfirmed_outcome(status: str) -> None:
    unknown = Rule(1, "deny", "unknown")

    assert matches(unknown, client_address("192.0.2.10"), ClientName((), status))


def test_name_rules_are_ignored_until_the_name_is_known() -> None:
    """The gateway first decides on addresses alone; `None` means DNS was not asked."""
    address = client_address("192.0.2.10")
    for text in ("unknown", "mail.example.net", ".example.net"):
        assert not matches(Rule(1, "deny", text), address, None)
    assert decide(address, rules("deny unknown"), "allow").action == "allow"


def test_ipv4_mapped_client_meets_ipv4_rules() -> None:
    mapped = client_address("::ffff:192.0.2.10")

    assert str(mapped) == "192.0.2.10"
    assert decide(mapped, rules("deny 192.0.2.0/24"), "allow").action == "deny"


def test_networks_of_the_other_family_never_match() -> None:
    everything_v6 = rules("deny ::/0")

    assert decide(client_address("192.0.2.10"), everything_v6, "allow").action == "allow"
    assert decide(client_address("2001:db8::1"), everything_v6, "allow").action == "deny"
    assert decide(client_address("::1"), rules("deny ::1"), "allow").action == "deny"


def test_needs_name_only_for_name_rules() -> None:
    assert not needs_name(rules("deny 10.0.0.0/8", "allow 10.1.2.3"))
    for text in ("unknown", "example.net", ".example.net"):
        assert needs_name(rules("deny 10.0.0.0/8", f"allow {text}"))


def test_parse_network_for_user_networks() -> None:
    assert str(parse_network("10.1.2.3")) == "10.1.2.3/32"
    assert str(parse_network("2001:db8::/48")) == "2001:db8::/48"
    with pytest.raises(RuleError, match=re.escape("did you mean 10.1.2.0/24?")):
        parse_network("10.1.2.3/24")


def test_source_allowed() -> None:
    assert source_allowed([], "192.0.2.10")
    assert source_allowed([], "?")
    assert source_allowed(["192.0.2.0/24"], "192.0.2.10")
    assert source_allowed(["192.0.2.0/24"], "::ffff:192.0.2.10")
    assert source_allowed(["198.51.100.0/24", "::1/128"], "::1")
    assert not source_allowed(["192.0.2.0/24"], "192.0.3.1")
    assert not source_allowed(["::/0"], "192.0.2.10")
    assert not source_allowed(["192.0.2.0/24"], "?")
