"""The PROXY protocol header (v1 text, v2 binary): which client a load balancer speaks for.

A load balancer that hands on TCP connections makes every client look like the
balancer itself. With the PROXY protocol it speaks first, one header naming the
client it accepted, then passes the client's bytes on untouched. This module
reads that header from the bytes received so far: it is complete (what it
consumed, the client it names), incomplete (wait for more), or refused (why).

Only trusted balancers may send one (`TrustedProxies`); from anyone else the
header would let a client pick the address that access rules and limits see.
A LOCAL (v2) or UNKNOWN (v1) header names no client: the balancer's own
connection, such as a health check, which then counts as the balancer's.

Nothing here does I/O: `submitgw.smtp.connections` feeds the socket's bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
# The longest v1 line the specification allows, CRLF included.
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
# What the v2 length field may announce: the addresses (216 bytes at most, for
# UNIX sockets) and a fair amount of TLVs, which are skipped. A balancer never
# needs more; a peer announcing more is not one.
V2_MAX_PAYLOAD = 1024
MAX_HEADER = V2_FIXED + V2_MAX_PAYLOAD

# Why a connection was refused, as the `connection` event's reason.
UNTRUSTED = "proxy-untrusted"
MISSING = "proxy-header-missing"
MALFORMED = "proxy-header-malformed"
TOO_LONG = "proxy-header-too-long"
UNSUPPORTED = "proxy-header-unsupported"
TRUNCATED = "proxy-header-truncated"
LATE = "proxy-header-timeout"

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6 = 0x0, 0x1, 0x2
_STREAM = 0x1


@dataclass(frozen=True)
class Header:
    """A complete header: `consumed` bytes long; `client` None when it names no client."""

    consumed: int
    client: tuple[str, int] | None


@dataclass(frozen=True)
class Refused:
    reason: str


def parse(data: bytes) -> Header | Refused | None:
    """Read the header at the start of `data`; None: it may still come, send more bytes.

    Whatever follows the header is the client's and is not looked at.
    """
    if not data:
        return None
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _v2(data) if len(data) >= V2_FIXED else None
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _v1(data)
    return Refused(MISSING)


def _v1(data: bytes) -> Header | Refused | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            return Refused(TOO_LONG)
        if any(not 0x20 <= byte < 0x7F for byte in data.rstrip(b"\r")):
            return Refused(MALFORMED)
        return None
    line = data[:end]
    if any(not 0x20 <= byte < 0x7F for byte in line):
        return Refused(MALFORMED)
    words = line.decode("ascii").split(" ")
    consumed = end + 2
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return Header(consumed, None)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        return Refused(MALFORMED)
    _, family, source, destination, source_port, destination_port = words
    version = 4 if family == "TCP4" else 6
    client = _address(source, version)
    ports = [_port(source_port), _port(destination_port)]
    if client is None or _address(destination, version) is None or None in ports:
        return Refused(MALFORMED)
    return Header(consumed, (client, int(source_port)))


def _address(text: str, version: int) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version != version:
        return None
    return _unmapped(address)


def _port(text: str) -> int | None:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        return None
    port = int(text)
    return port if port < 65536 else None


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An IPv4 client behind an IPv6 balancer is an IPv4 client to access rules and limits."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _v2(data: bytes) -> Header | Refused | None:
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = int.from_bytes(data[14:16], "big")
    if version != 2 or command not in (_V2_LOCAL, _V2_PROXY):
        return Refused(MALFORMED)
    if length > V2_MAX_PAYLOAD:
        return Refused(TOO_LONG)
    if len(data) < V2_FIXED + length:
        return None
    consumed = V2_FIXED + length
    if command == _V2_LOCAL or family == _AF_UNSPEC:
        return Header(consumed, None)
    if transport != _STREAM or family not in (_AF_INET, _AF_INET6):
        return Refused(UNSUPPORTED)
    size = 4 if family == _AF_INET else 16
    if length < 2 * size + 4:
        return Refused(MALFORMED)
    payload = data[V2_FIXED:consumed]
    raw = payload[:size]
    address = ipaddress.IPv4Address(raw) if family == _AF_INET else ipaddress.IPv6Address(raw)
    port = int.from_bytes(payload[2 * size : 2 * size + 2], "big")
    return Header(consumed, (_unmapped(address), port))


class TrustedProxies:
    """The balancers a listener accepts PROXY headers from: addresses and networks."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(entry) for entry in entries)

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, str):
            return False
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
