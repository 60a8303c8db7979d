"""What the audit trail decides without I/O: address keys, search times, smarthost queue ids.

Client addresses are searched by network, so each is kept as a fixed-width key
that sorts like the address itself: 16 bytes, IPv4 as its IPv4-mapped IPv6 form
(::ffff:a.b.c.d). A CIDR is then a range of keys, one index range scan on every
database.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_RELATIVE = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# How smarthosts name the queue entry in their 250 after DATA:
# Postfix "250 2.0.0 Ok: queued as 4Xyz", Exim "250 OK id=1abCd-000aBc-Xy",
# Sendmail "250 2.0.0 5B1AbC123456 Message accepted for delivery".
_QUEUED_AS = re.compile(r"\bqueued as:?\s+<?([A-Za-z0-9][A-Za-z0-9._:@+/=-]{0,99})", re.I)
_EXIM_ID = re.compile(r"^250[ -](?:OK )?id=([A-Za-z0-9-]{1,100})", re.I)
_SENDMAIL_ID = re.compile(r"^250[ -]2\.0\.0 ([A-Za-z0-9]{6,40}) Message accepted", re.I)


def ip_key(text: str) -> bytes | None:
    """The 16-byte key of a client address; None for anything that is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 4:
        return _MAPPED_PREFIX + address.packed
    return address.packed


@dataclass(frozen=True)
class KeyRange:
    """The keys of every address in a network, both ends included."""

    low: bytes
    high: bytes


def ip_range(text: str) -> KeyRange:
    """`192.0.2.7`, `192.0.2.0/24` or `2001:db8::/32` as a key range (host bits are ignored).

    Raises ValueError naming what is wrong.
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network") from None
    low = ip_key(str(network.network_address))
    high = ip_key(str(network.broadcast_address))
    assert low is not None and high is not None
    return KeyRange(low, high)


def parse_time(text: str, now: datetime, *, end: bool = False) -> datetime:
    """A search bound: `2h`, `30m`, `7d`, `2w` ago, or an ISO date or date and time (UTC
    unless it names a zone).

    A bare date is midnight at its start, or with `end` the midnight after it, so
    `--since 2026-12-01 --until 2026-12-01` is that whole day.
    """
    word = text.strip()
    relative = _RELATIVE.fullmatch(word.lower())
    if relative:
        return now - timedelta(seconds=int(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        when = datetime.fromisoformat(word)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time like 2026-12-01 or 2026-12-01T10:00 "
            "nor an age like 30m, 2h, 7d or 2w"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if end and len(word) == 10:
        when += timedelta(days=1)
    return when.astimezone(UTC)


def smarthost_queue_id(reply: str) -> str | None:
    """The smarthost's own id for the message from its 250 after DATA; None if it gave none
    we know how to read."""
    if not reply.startswith("2"):
        return None
    for pattern in (_QUEUED_AS, _EXIM_ID, _SENDMAIL_ID):
        m = pattern.search(reply)
        if m:
            return m.group(1).rstrip(".") or None
    return None
