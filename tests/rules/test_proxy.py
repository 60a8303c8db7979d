"""The PROXY header parser: v1 and v2, complete, incomplete or refused, never an exception."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from submitgw.rules import proxy
from submitgw.rules.proxy import Header, Refused, TrustedProxies, parse

TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def v2(
    command: int = 0x1,
    family: int = 0x1,
    transport: int = 0x1,
    payload: bytes | None = None,
    *,
    client: str = "192.0.2.7",
    port: int = 40000,
    tlvs: bytes = b"",
) -> bytes:
    if payload is None:
        source = ipaddress.ip_address(client).packed
        destination = (b"\x00" * 15 + b"\x01") if len(source) == 16 else bytes([10, 0, 0, 1])
        payload = source + destination + struct.pack("!HH", port, 465) + tlvs
    head = proxy.V2_SIGNATURE + bytes([0x20 | command, family << 4 | transport])
    return head + struct.pack("!H", len(payload)) + payload


# --- v1 ------------------------------------------------------------------------------


def test_v1_tcp4_names_the_client_and_leaves_what_follows() -> None:
    line = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 587\r\n"
    assert parse(line + b"EHLO x\r\n") == Header(len(line), ("192.0.2.7", 40000))


def test_v1_tcp6() -> None:
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 465\r\n"
    assert parse(line + TLS_HELLO) == Header(len(line), ("2001:db8::7", 65535))


def test_v1_mapped_ipv4_counts_as_ipv4() -> None:
    line = b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 587\r\n"
    assert parse(line) == Header(len(line), ("192.0.2.7", 1))


def test_v1_unknown_names_no_client() -> None:
    line = b"PROXY UNKNOWN whatever follows\r\n"
    assert parse(line) == Header(len(line), None)
    assert parse(b"PROXY UNKNOWN\r\n") == Header(15, None)


@pytest.mark.parametrize("size", [1, 5, 6, 20, 40])
def test_v1_incomplete_waits(size: int) -> None:
    assert parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 587\r\n"[:size]) is None


def test_v1_waits_for_the_line_feed_after_a_carriage_return() -> None:
    assert parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 587\r") is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 587 x\r\n",
        b"PROXY TCP5 192.0.2.7 10.0.0.1 40000 587\r\n",
        b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 587\r\n",
        b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 587\r\n",
        b"PROXY TCP4 192.0.2.300 10.0.0.1 40000 587\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.x 40000 587\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 587\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 040000 587\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 587\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 \xd9\xa1\r\n",
        b"PROXY TCP4  192.0.2.7 10.0.0.1 40000 587\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 587\n",
        b"PROXY TCP4\t192.0.2.7 10.0.0.1 40000 587\r\n",
        b"PROXY \r\n",
    ],
)
def test_v1_malformed_is_refused(line: bytes) -> None:
    assert parse(line) == Refused(proxy.MALFORMED)


def test_v1_longer_than_107_bytes_is_refused_without_waiting_for_its_end() -> None:
    assert parse(b"PROXY UNKNOWN " + b"x" * 93) == Refused(proxy.TOO_LONG)
    longest = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(longest) == proxy.V1_MAX
    assert parse(longest) == Header(proxy.V1_MAX, None)


# --- v2 ------------------------------------------------------------------------------


def test_v2_ipv4_names_the_client_and_leaves_what_follows() -> None:
    header = v2()
    assert parse(header + TLS_HELLO) == Header(len(header), ("192.0.2.7", 40000))


def test_v2_ipv6() -> None:
    header = v2(family=0x2, client="2001:db8::7", port=1)
    assert parse(header) == Header(len(header), ("2001:db8::7", 1))


def test_v2_tlvs_are_skipped() -> None:
    tlvs = b"\x04\x00\x03abc" + b"\x20\x00\x05\x01\x00\x00\x00\x00"
    header = v2(tlvs=tlvs)
    assert parse(header + b"EHLO") == Header(len(header), ("192.0.2.7", 40000))


def test_v2_local_is_the_balancers_own_connection() -> None:
    header = v2(command=0x0, family=0x0, transport=0x0, payload=b"")
    assert parse(header + b"EHLO") == Header(16, None)
    # LOCAL ignores whatever addresses come with it.
    assert parse(v2(command=0x0)) == Header(len(v2()), None)


def test_v2_unspec_family_names_no_client() -> None:
    assert parse(v2(family=0x0, transport=0x0, payload=b"")) == Header(16, None)


@pytest.mark.parametrize(
    ("family", "transport"), [(0x1, 0x2), (0x2, 0x2), (0x3, 0x1), (0x1, 0x0), (0x4, 0x1)]
)
def test_v2_other_transports_and_families_are_refused(family: int, transport: int) -> None:
    header = v2(family=family, transport=transport, payload=b"\x00" * 216)
    assert parse(header) == Refused(proxy.UNSUPPORTED)


@pytest.mark.parametrize("size", [1, 11, 12, 15, 16, 27])
def test_v2_incomplete_waits(size: int) -> None:
    assert parse(v2()[:size]) is None


@pytest.mark.parametrize(
    "header",
    [
        v2(payload=b"\x00" * 11),  # IPv4 needs 12 bytes of addresses
        v2(family=0x2, payload=b"\x00" * 35),  # IPv6 needs 36
        v2(command=0x2),
        b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1
    ],
)
def test_v2_malformed_is_refused(header: bytes) -> None:
    assert parse(header) == Refused(proxy.MALFORMED)


def test_v2_longer_than_allowed_is_refused_on_its_length_field() -> None:
    assert parse(v2(tlvs=b"\x00" * (proxy.V2_MAX_PAYLOAD - 12))) == Header(
        proxy.MAX_HEADER, ("192.0.2.7", 40000)
    )
    too_long = v2(tlvs=b"\x00" * (proxy.V2_MAX_PAYLOAD - 11))
    assert parse(too_long[:16]) == Refused(proxy.TOO_LONG)


# --- neither -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO client\r\n",
        TLS_HELLO,
        b"proxy TCP4",
        b"PROXX",
        b"\r\n\r\n\x00\r\nQUIT\r",
        b"\x00",
        b"PROXY\r\n",
    ],
)
def test_anything_else_is_a_missing_header(data: bytes) -> None:
    assert parse(data) == Refused(proxy.MISSING)


def test_nothing_yet_waits() -> None:
    assert parse(b"") is None


# --- properties ----------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_any_bytes_give_an_answer_and_never_an_exception(data: bytes) -> None:
    result = parse(data)
    assert result is None or isinstance(result, Header | Refused)
    if isinstance(result, Header):
        assert 0 < result.consumed <= min(len(data), proxy.MAX_HEADER)


@given(st.binary(min_size=1, max_size=300))
def test_a_complete_header_does_not_depend_on_what_follows(tail: bytes) -> None:
    for header in (v2(), b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 587\r\n"):
        assert parse(header + tail) == parse(header)


@given(
    st.ip_addresses(),
    st.integers(min_value=0, max_value=65535),
    st.booleans(),
    st.binary(max_size=50),
)
def test_both_versions_round_trip_any_client(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, text: bool, tail: bytes
) -> None:
    six = address.version == 6
    if text:
        other = "::1" if six else "10.0.0.1"
        header = f"PROXY TCP{address.version} {address} {other} {port} 587\r\n".encode()
    else:
        header = v2(family=0x2 if six else 0x1, client=str(address), port=port)
    expected = str(getattr(address, "ipv4_mapped", None) or address)
    assert parse(header + tail) == Header(len(header), (expected, port))


@given(st.binary(max_size=120))
def test_every_prefix_of_a_header_waits(data: bytes) -> None:
    for header in (v2(tlvs=data), b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 587\r\n"):
        for size in range(len(header)):
            assert parse(header[:size]) is None


# --- trusted proxies -----------------------------------------------------------------


def test_trusted_proxies_match_addresses_and_networks() -> None:
    trusted = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"])
    assert "127.0.0.1" in trusted
    assert "10.200.3.4" in trusted
    assert "fd12::1" in trusted
    assert "::ffff:10.1.1.1" in trusted
    assert "fd12::1%eth0" in trusted
    assert "127.0.0.2" not in trusted
    assert "192.0.2.7" not in trusted
    assert "?" not in trusted
    assert "::1" not in trusted
