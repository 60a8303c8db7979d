"""Forward-confirmed reverse DNS against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from submitgw.config import ConfigError, DnsConfig, parse_nameserver
from submitgw.rules.access import CONFIRMED, DNS_ERROR, NO_PTR, NOT_CONFIRMED, ClientName
from submitgw.services.dns import MAX_TTL, NEGATIVE_TTL, ReverseDns
from tests.support.dns import LoopbackDns


class Clock:
    """A monotonic clock the test moves by hand, so TTL expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(server: LoopbackDns, *, timeout: float = 2.0, **kwargs: object) -> ReverseDns:
    return ReverseDns(DnsConfig((server.address,), timeout), **kwargs)  # type: ignore[arg-type]


def lookup(rdns: ReverseDns, ip: str) -> ClientName:
    return asyncio.run(rdns.lookup(ip))


def test_confirmed_when_ptr_and_a_agree(dns_server: LoopbackDns) -> None:
    dns_server.host("127.0.0.2", "Good.Example.NET")

    name = lookup(resolver(dns_server), "127.0.0.2")

    assert name == ClientName(("good.example.net",), CONFIRMED)
    assert name.name == "good.example.net"


def test_ptr_claiming_a_name_without_its_a_record_is_not_confirmed(
    dns_server: LoopbackDns,
) -> None:
    """Whoever controls the PTR of an address cannot borrow someone else's name."""
    dns_server.ptr("127.0.0.3", "good.example.net")

    name = lookup(resolver(dns_server), "127.0.0.3")

    assert name.names == ()
    assert name.status == NOT_CONFIRMED
    assert "good.example.net has no A record" in name.detail


def test_ptr_to_a_name_whose_a_is_another_address_is_not_confirmed(
    dns_server: LoopbackDns,
) -> None:
    dns_server.host("127.0.0.2", "good.example.net")
    dns_server.ptr("127.0.0.3", "good.example.net")

    name = lookup(resolver(dns_server), "127.0.0.3")

    assert name.status == NOT_CONFIRMED
    assert name.detail == "PTR good.example.net has A 127.0.0.2, not 127.0.0.3"


def test_no_ptr(dns_server: LoopbackDns) -> None:
    name = lookup(resolver(dns_server), "127.0.0.4")

    assert (name.names, name.status) == ((), NO_PTR)
    assert dns_server.count("A") == 0


def test_only_the_confirmed_names_of_several_ptrs_count(dns_server: LoopbackDns) -> None:
    dns_server.host("127.0.0.2", "real.example.net")
    dns_server.ptr("127.0.0.2", "claimed.example.org")

    name = lookup(resolver(dns_server), "127.0.0.2")

    assert name.names == ("real.example.net",)
    assert name.status == CONFIRMED


def test_ipv6_client_is_confirmed_by_aaaa(dns_server: LoopbackDns) -> None:
    dns_server.host("::1", "v6.example.net")
    dns_server.a("v4only.example.net", "127.0.0.1")
    dns_server.ptr("::1", "v4only.example.net")

    name = lookup(resolver(dns_server), "::1")

    assert name.names == ("v6.example.net",)
    assert dns_server.count("A") == 0
    assert dns_server.count("AAAA") == 2


def test_timeout_makes_the_client_unknown_within_the_bound(dns_server: LoopbackDns) -> None:
    dns_server.host("127.0.0.2", "good.example.net")
    dns_server.silent = True

    started = time.monotonic()
    name = lookup(resolver(dns_server, timeout=0.5), "127.0.0.2")
    elapsed = time.monotonic() - started

    assert (name.names, name.status) == ((), DNS_ERROR)
    assert "no answer within 0.5s" in name.detail
    assert elapsed < 2.0


def test_errors_are_not_cached(dns_server: LoopbackDns) -> None:
    dns_server.host("127.0.0.2", "good.example.net")
    rdns = resolver(dns_server, timeout=0.3)
    dns_server.silent = True
    assert lookup(rdns, "127.0.0.2").status == DNS_ERROR

    dns_server.silent = False

    assert lookup(rdns, "127.0.0.2").status == CONFIRMED


def test_answers_are_cached_for_their_ttl(dns_server: LoopbackDns) -> None:
    dns_server.ttl = 30
    dns_server.host("127.0.0.2", "good.example.net")
    clock = Clock()
    rdns = resolver(dns_server, clock=clock)
    assert lookup(rdns, "127.0.0.2").names == ("good.example.net",)
    asked = dns_server.count()
    dns_server.clear()
    dns_server.host("127.0.0.2", "new.example.net")

    clock.now += 29
    assert lookup(rdns, "127.0.0.2").names == ("good.example.net",)
    assert dns_server.count() == asked

    clock.now += 2
    assert lookup(rdns, "127.0.0.2").names == ("new.example.net",)
    assert dns_server.count() == asked + 2


@pytest.mark.parametrize(("ptr_ttl", "a_ttl"), [(10, 300), (300, 10)])
def test_the_shortest_ttl_of_ptr_and_a_applies(
    dns_server: LoopbackDns, ptr_ttl: int, a_ttl: int
) -> None:
    dns_server.ptr("127.0.0.2", "good.example.net", ttl=ptr_ttl)
    dns_server.a("good.example.net", "127.0.0.2", ttl=a_ttl)
    clock = Clock()
    rdns = resolver(dns_server, clock=clock)
    lookup(rdns, "127.0.0.2")
    asked = dns_server.count()

    clock.now += 9
    lookup(rdns, "127.0.0.2")
    assert dns_server.count() == asked
    clock.now += 2
    lookup(rdns, "127.0.0.2")
    assert dns_server.count() == asked + 2


def test_long_ttls_are_capped(dns_server: LoopbackDns) -> None:
    dns_server.ttl = 86400
    dns_server.host("127.0.0.2", "good.example.net")
    clock = Clock()
    rdns = resolver(dns_server, clock=clock)
    lookup(rdns, "127.0.0.2")
    asked = dns_server.count()

    clock.now += MAX_TTL + 1
    lookup(rdns, "127.0.0.2")

    assert dns_server.count() == asked + 2


def test_negative_answers_are_cached_too(dns_server: LoopbackDns) -> None:
    clock = Clock()
    rdns = resolver(dns_server, clock=clock)
    assert lookup(rdns, "127.0.0.4").status == NO_PTR
    dns_server.host("127.0.0.4", "late.example.net")

    assert lookup(rdns, "127.0.0.4").status == NO_PTR
    clock.now += NEGATIVE_TTL + 1
    assert lookup(rdns, "127.0.0.4").status == CONFIRMED


def test_cache_size_is_bounded(dns_server: LoopbackDns) -> None:
    for last in (2, 3, 4):
        dns_server.host(f"127.0.0.{last}", f"h{last}.example.net")
    rdns = resolver(dns_server, cache_size=2)
    for last in (2, 3, 4):
        lookup(rdns, f"127.0.0.{last}")
    asked = dns_server.count()

    lookup(rdns, "127.0.0.4")
    assert dns_server.count() == asked
    lookup(rdns, "127.0.0.2")
    assert dns_server.count() == asked + 2


def test_concurrent_lookups_of_one_address_share_one_query(dns_server: LoopbackDns) -> None:
    dns_server.host("127.0.0.2", "good.example.net")
    rdns = resolver(dns_server)

    async def many() -> list[ClientName]:
        return await asyncio.gather(*(rdns.lookup("127.0.0.2") for _ in range(10)))

    names = asyncio.run(many())

    assert {n.status for n in names} == {CONFIRMED}
    assert dns_server.count("PTR") == 1


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_nameserver(text: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize("text", ["dns.example.net", "dns.example.net:53", "127.0.0.1:0", ""])
def test_parse_nameserver_refuses_names_and_bad_ports(text: str) -> None:
    with pytest.raises(ConfigError, match="nameserver"):
        parse_nameserver(text)
