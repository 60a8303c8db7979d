"""The audit trail's pure parts: address keys sort like addresses, times read as typed,
smarthost replies give up their queue ids."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from submitgw.rules.trail import ip_key, ip_range, parse_time, smarthost_queue_id

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def test_keys_are_16_bytes_and_ipv4_is_its_mapped_form() -> None:
    assert ip_key("192.0.2.7") == ipaddress.IPv6Address("::ffff:192.0.2.7").packed
    assert ip_key("::ffff:192.0.2.7") == ip_key("192.0.2.7")
    assert ip_key("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1").packed
    assert all(len(ip_key(a) or b"") == 16 for a in ("0.0.0.0", "::", "255.255.255.255"))


@pytest.mark.parametrize("text", ["", "unknown", "192.0.2", "example.org", "1.2.3.4/24"])
def test_what_is_not_an_address_has_no_key(text: str) -> None:
    assert ip_key(text) is None


def test_keys_sort_as_the_addresses_do() -> None:
    addresses = ["10.0.0.1", "9.255.255.255", "192.0.2.7", "2001:db8::1", "::1", "fe80::1"]
    keys = [ip_key(a) for a in addresses]
    as_v6 = sorted(
        addresses, key=lambda a: int(ipaddress.ip_address(a)) + (0xFFFF << 32) * ("." in a)
    )
    assert sorted(k for k in keys if k) == [ip_key(a) for a in as_v6]


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("192.0.2.0/24", ["192.0.2.0", "192.0.2.255", "::ffff:192.0.2.9"], ["192.0.3.0", "::1"]),
        ("192.0.2.7", ["192.0.2.7"], ["192.0.2.6", "192.0.2.8"]),
        ("192.0.2.77/24", ["192.0.2.1"], ["192.0.1.255"]),
        ("2001:db8::/32", ["2001:db8::", "2001:db8:ffff::1"], ["2001:db9::", "192.0.2.1"]),
        ("0.0.0.0/0", ["0.0.0.0", "255.255.255.255"], ["::1", "2001:db8::1"]),
    ],
)
def test_a_network_is_the_range_of_its_keys(
    text: str, inside: list[str], outside: list[str]
) -> None:
    r = ip_range(text)
    assert all(r.low <= (ip_key(a) or b"") <= r.high for a in inside)
    assert not any(r.low <= (ip_key(a) or b"") <= r.high for a in outside)


@pytest.mark.parametrize("text", ["", "x", "192.0.2.0/33", "2001:db8::/129"])
def test_a_bad_network_names_itself(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        ip_range(text)


@pytest.mark.parametrize(
    ("text", "end", "expected"),
    [
        ("2h", False, NOW - timedelta(hours=2)),
        ("30m", False, NOW - timedelta(minutes=30)),
        ("7d", False, NOW - timedelta(days=7)),
        ("2W", False, NOW - timedelta(days=14)),
        ("45s", False, NOW - timedelta(seconds=45)),
        ("2026-12-01", False, datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01", True, datetime(2026, 12, 2, tzinfo=UTC)),
        ("2026-12-01T10:30", True, datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
        ("2026-12-01T10:30:00+01:00", False, datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
        ("2026-12-01T10:30:00Z", False, datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
    ],
)
def test_times_read_as_ages_or_iso(text: str, end: bool, expected: datetime) -> None:
    assert parse_time(text, NOW, end=end) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "-2h", "1y", "2026-13-01"])
def test_a_bad_time_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="30m, 2h, 7d or 2w"):
        parse_time(text, NOW)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 2.0.0 Ok: queued as 4XyZ1b2C3d", "4XyZ1b2C3d"),
        ("250 2.0.0 Ok: queued as 4XyZ1b2C3d.", "4XyZ1b2C3d"),
        ("250 2.0.0 Queued as <A1B2@mx.example>", "A1B2@mx.example"),
        ("250 OK id=1tAbCd-000aBc-Xy", "1tAbCd-000aBc-Xy"),
        ("250 2.0.0 5B1AbC123456 Message accepted for delivery", "5B1AbC123456"),
        ("250 2.0.0 OK", None),
        ("250 Message accepted", None),
        ("451 4.3.0 queued as NOT", None),
        ("", None),
    ],
)
def test_the_smarthost_queue_id_is_read_from_its_reply(reply: str, expected: str | None) -> None:
    assert smarthost_queue_id(reply) == expected
