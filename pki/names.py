"""The names a server certificate may be issued for: DNS host names and IP addresses.

A certificate binds whatever names it carries, so anything that is not a name a
TLS client could ask for (spaces, `!`, `_`, a lone `*`, a number that clients read
as an IPv4 address) is refused before signing rather than certified.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from cryptography import x509

MAX_NAME_LENGTH = 253  # RFC 1035 2.3.4: 255 octets on the wire, without the final dot
MAX_LABEL_LENGTH = 63
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def _a_label(label: str) -> bool:
    """An `xn--` label must be valid Punycode for something non-ASCII (RFC 5890 2.3.2.1)."""
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    return (
        bool(decoded)
        and not decoded.isascii()
        and decoded.encode("punycode") == (label[4:].encode("ascii"))
    )


def _label_error(label: str) -> str | None:
    if not label:
        return "an empty label (two dots in a row, or a leading dot)"
    if len(label) > MAX_LABEL_LENGTH:
        return f"a label longer than {MAX_LABEL_LENGTH} characters"
    if not _LDH_LABEL.fullmatch(label):
        return (
            f"label {label!r} is not letters, digits and inner hyphens"
            if label != "*"
            else "a wildcard that is not the whole left-most label"
        )
    if label[2:4] == "--" and not (label.startswith("xn--") and _a_label(label)):
        return f"label {label!r} has '--' in positions 3 and 4 but is not a valid xn-- label"
    return None


def _dns_name(text: str) -> str:
    if not text.isascii():
        raise ValueError(
            f"{text!r} is not ASCII: give an internationalised name in its xn-- (A-label) form"
        )
    name = text.lower().removesuffix(".")
    if not name:
        raise ValueError("a server name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{text!r} is longer than {MAX_NAME_LENGTH} characters")
    labels = name.split(".")
    if labels[0] == "*":
        if len(labels) < 3:
            raise ValueError(f"{text!r}: a wildcard needs at least two labels after it")
        labels = labels[1:]
    for label in labels:
        why = _label_error(label)
        if why is not None:
            raise ValueError(f"{text!r} is not a DNS name: {why}")
    if labels[-1].isdigit():
        raise ValueError(f"{text!r} is not a DNS name: its last label is a number")
    return name


def server_name(text: str) -> x509.DNSName | x509.IPAddress:
    """The subjectAltName entry for one server name, or ValueError saying why not.

    IPv4 and IPv6 literals become IP address entries; anything else must be a DNS
    name of letters, digits and hyphens (RFC 1123, RFC 5890 A-labels), lower-cased,
    a final dot dropped, optionally with `*` as its whole left-most label.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return x509.DNSName(_dns_name(text))
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ValueError(f"{text!r}: an IPv6 address with a zone cannot be certified")
    return x509.IPAddress(address)


def server_names(texts: list[str]) -> list[x509.DNSName | x509.IPAddress]:
    """`server_name` of each, duplicates (after normalising) dropped, in order."""
    entries: list[x509.DNSName | x509.IPAddress] = []
    for text in texts:
        entry = server_name(text)
        if entry not in entries:
            entries.append(entry)
    return entries


# --- name constraints: a CA that may vouch for these servers only -------------------------

_EVERY_DNS_NAME = x509.DNSName("")  # RFC 5280 4.2.1.10: the empty name matches every name
_EVERY_IP = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def server_subtrees(
    texts: list[str],
) -> tuple[list[x509.GeneralName], list[x509.GeneralName]]:
    """(permitted, excluded) NameConstraints subtrees allowing exactly these servers.

    A DNS name permits itself and the names below it (`*.gw.example` is covered by
    `gw.example`); an IP address permits itself alone. A name form with no permitted
    entry is excluded outright (every DNS name, every IPv4 or IPv6 address), since
    verifiers leave a name form without any subtree unconstrained.
    """
    entries = server_names(texts)
    if not entries:
        raise ValueError("a constrained CA needs at least one server name")
    permitted: list[x509.GeneralName] = []
    for entry in entries:
        subtree: x509.GeneralName
        if isinstance(entry, x509.DNSName):
            subtree = x509.DNSName(entry.value.removeprefix("*."))
        else:
            subtree = x509.IPAddress(ipaddress.ip_network(entry.value))
        if subtree not in permitted:
            permitted.append(subtree)
    excluded: list[x509.GeneralName] = []
    if not any(isinstance(n, x509.DNSName) for n in permitted):
        excluded.append(_EVERY_DNS_NAME)
    versions = {n.value.version for n in permitted if isinstance(n, x509.IPAddress)}
    excluded += [x509.IPAddress(_EVERY_IP[v]) for v in (4, 6) if v not in versions]
    return permitted, excluded


def _dns_within(name: str, base: str) -> bool:
    base = base.lower()
    if not base:
        return True
    if base.startswith("."):
        return name.endswith(base)
    return name == base or name.endswith("." + base)


def _within(entry: x509.GeneralName, subtree: x509.GeneralName) -> bool:
    if isinstance(entry, x509.DNSName) and isinstance(subtree, x509.DNSName):
        return _dns_within(entry.value, subtree.value)
    if isinstance(entry, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
        network = subtree.value
        return (
            isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network)
            and entry.value.version == network.version
            and entry.value in network
        )
    return False


def check_server_names(
    constraints: x509.NameConstraints, entries: Iterable[x509.DNSName | x509.IPAddress]
) -> None:
    """ValueError naming the first entry verifiers would reject under `constraints`."""
    permitted = list(constraints.permitted_subtrees or [])
    excluded = list(constraints.excluded_subtrees or [])
    for entry in entries:
        same_form = [s for s in permitted if type(s) is type(entry)]
        if any(_within(entry, s) for s in excluded) or (
            same_form and not any(_within(entry, s) for s in same_form)
        ):
            allowed = ", ".join(str(getattr(s, "value", s)) for s in same_form) or "none"
            raise ValueError(
                f"the CA may not certify server name {entry.value} (it permits: {allowed}); "
                "a CA for more names must be made anew"
            )
