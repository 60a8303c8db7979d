"""Client access rules: what a rule means and which one decides, as pure functions.

A rule is an IP address, a CIDR network, a domain name (`example.net`: that name
only), a domain suffix (`.example.net`: every name under it, not `example.net`
itself) or the word `unknown` (a client without a forward-confirmed reverse DNS
name). The most specific matching rule decides:

1. an exact IP address (a /32 or /128 network is stored as one)
2. a CIDR network, the longest prefix first
3. an exact domain name
4. a domain suffix, the longest (most labels) first
5. `unknown`
6. nothing matched: `policy.default`

Addresses come before names because the address is a fact of the TCP
connection while a name is a claim looked up in DNS, which the client's network
operator controls and which can fail: an address rule decides the same way
whatever DNS does, and lets the gateway skip the lookup. Two matching rules of
equal rank (only possible for rules the store keeps apart, such as a name
matched through two PTR records) are settled by deny winning.

Nothing here does I/O; `submitgw.services.screening` loads the rules and asks DNS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

# Re-exported: the rules speak of these values, the store keeps them.
from submitgw.types import ACTIONS as ACTIONS
from submitgw.types import ALLOW as ALLOW
from submitgw.types import DENY, Rule

UNKNOWN = "unknown"

IP, CIDR, NAME, SUFFIX = "ip", "cidr", "name", "suffix"
# The precedence of each kind of rule: lower decides first.
_KIND_RANK = {IP: 0, CIDR: 1, NAME: 2, SUFFIX: 3, UNKNOWN: 4}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RuleError(ValueError):
    """A rule or network that cannot be used; the text is shown to the admin."""


@dataclass(frozen=True)
class ClientName:
    """What reverse DNS says about a client.

    `names` are the PTR names whose A/AAAA records contain the client's address
    (forward-confirmed); empty means the client counts as `unknown`, and
    `status` says why: `no-ptr`, `not-confirmed` or `dns-error`.
    """

    names: tuple[str, ...]
    status: str
    detail: str = ""

    @property
    def name(self) -> str | None:
        return self.names[0] if self.names else None


CONFIRMED, NO_PTR, NOT_CONFIRMED, DNS_ERROR = "confirmed", "no-ptr", "not-confirmed", "dns-error"


@dataclass(frozen=True)
class Decision:
    """The outcome for one client: `rule` is None when `policy.default` decided."""

    action: str
    rule: Rule | None
    matched: tuple[Rule, ...]

    @property
    def allowed(self) -> bool:
        return self.action == ALLOW


def client_address(text: str) -> IpAddress:
    """The client's address as rules see it: an IPv4-mapped IPv6 address is IPv4.

    A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; without this,
    IPv4 rules would silently not apply to them.
    """
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> IpNetwork:
    """A CIDR network (a bare address is a /32 or /128); host bits are an error.

    `10.1.2.3/8` is refused rather than read as `10.0.0.0/8`: the admin meant one
    of the two, and guessing wrongly widens or narrows a rule silently.
    """
    text = text.strip()
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise RuleError(f"{text!r} is not an IP address or CIDR network") from exc
        raise RuleError(f"{text} has host bits set: did you mean {loose}?") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


@lru_cache(maxsize=4096)
def _network(rule: str) -> IpNetwork:
    """Rules are matched on every connection: parse each stored text once."""
    return ipaddress.ip_network(rule)


def _domain(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError as exc:
        raise RuleError(f"{text!r} is not a valid domain name") from exc
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise RuleError(f"{text!r} is not an IP address, CIDR network or domain name")
    if labels[-1].isdigit():
        raise RuleError(f"{text!r} is neither a valid IP address nor a domain name")
    return name


def parse_rule(text: str) -> str:
    """The normalised text of a rule, or RuleError saying what is wrong with it.

    Addresses are written in their canonical form, networks without host bits
    and a full-length network as a plain address; names are lower-case, without
    a trailing dot, international names in their ASCII (punycode) form.
    """
    stripped = text.strip()
    if stripped.lower() == UNKNOWN:
        return UNKNOWN
    if stripped.startswith("."):
        return "." + _domain(stripped[1:])
    if ":" in stripped or "/" in stripped or stripped.replace(".", "").isdigit():
        network = parse_network(stripped)
        if network.prefixlen == network.max_prefixlen:
            return str(network.network_address)
        return str(network)
    return _domain(stripped)


def rule_kind(rule: str) -> str:
    """The kind of an already normalised rule."""
    if rule == UNKNOWN:
        return UNKNOWN
    if rule.startswith("."):
        return SUFFIX
    if "/" in rule:
        return CIDR
    if ":" in rule or rule.replace(".", "").isdigit():
        return IP
    return NAME


def _specificity(rule: Rule) -> int:
    """Within one kind, larger is more specific."""
    kind = rule_kind(rule.rule)
    if kind == CIDR:
        return _network(rule.rule).prefixlen
    if kind == SUFFIX:
        return rule.rule.count(".")
    return 0


def precedence(rule: Rule) -> tuple[int, int, int, int]:
    """Sort key: the most specific rule first, deny before allow, then by id."""
    return (
        _KIND_RANK[rule_kind(rule.rule)],
        -_specificity(rule),
        0 if rule.action == DENY else 1,
        rule.id,
    )


def is_address_rule(rule: Rule) -> bool:
    return rule_kind(rule.rule) in (IP, CIDR)


def needs_name(rules: Iterable[Rule]) -> bool:
    """Whether any rule depends on reverse DNS (a name, a suffix or `unknown`)."""
    return any(not is_address_rule(rule) for rule in rules)


def matches(rule: Rule, address: IpAddress, name: ClientName | None) -> bool:
    """Whether `rule` applies to a client; name rules never match when `name` is None."""
    kind = rule_kind(rule.rule)
    if kind in (IP, CIDR):
        network = _network(rule.rule)
        return network.version == address.version and address in network
    if name is None:
        return False
    if kind == UNKNOWN:
        return not name.names
    if kind == NAME:
        return rule.rule in name.names
    return any(n.endswith(rule.rule) for n in name.names)


def decide(
    address: IpAddress, rules: Sequence[Rule], default: str, name: ClientName | None = None
) -> Decision:
    """The decision for a client: the most specific matching rule, else `default`.

    With `name` None only address rules are considered: the caller looks the
    name up only when none of them matched (see the module docstring).
    """
    matched = tuple(sorted((r for r in rules if matches(r, address, name)), key=precedence))
    if matched:
        return Decision(matched[0].action, matched[0], matched)
    return Decision(default, None, ())


def source_allowed(networks: Sequence[str], client_ip: str) -> bool:
    """Per-user source networks: none set means anywhere; an unparsable client never."""
    if not networks:
        return True
    try:
        address = client_address(client_ip)
    except ValueError:
        return False
    for text in networks:
        network = _network(text)
        if network.version == address.version and address in network:
            return True
    return False
