"""Forward-confirmed reverse DNS (FCrDNS): the client name that domain access rules see.

Whoever controls a client's address block controls its PTR record, so a PTR
name alone proves nothing: `spammer.example` can publish a PTR saying
`mail.trusted.example`. A name counts only when its own A (IPv4 clients) or
AAAA (IPv6 clients) records contain the client's address again, which only
the owner of that name can arrange.

Outcomes (`ClientName.status`): `confirmed` (one or more names), `no-ptr`,
`not-confirmed` (PTR names, none of whose addresses is the client's) and
`dns-error` (timeout, SERVFAIL, no resolver). All but the first make the client
`unknown` to the rules, so a DNS outage can never make a client look like a
name it might not have; the `unknown` rule (or `policy.default`) decides.

Each query may take `dns.timeout` seconds; the PTR query comes first, then
the forward queries of up to `MAX_NAMES` names at once, so a client waits at
most about twice `dns.timeout`. Answers are cached per client address for
their TTL (capped at `MAX_TTL`; `NEGATIVE_TTL` when a negative answer carries
no SOA); errors are not cached, so a DNS outage ends at the next connection
after it does. Concurrent connections from one address share one lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from submitgw.config import DnsConfig, parse_nameserver
from submitgw.rules.access import (
    CONFIRMED,
    DNS_ERROR,
    NO_PTR,
    NOT_CONFIRMED,
    ClientName,
    IpAddress,
    client_address,
)

log = logging.getLogger(__name__)

MAX_NAMES = 5  # PTR names checked per client; more are ignored (and logged in `detail`)
MAX_TTL = 3600.0  # a long TTL still lets a changed record count within the hour
NEGATIVE_TTL = 60.0  # for NXDOMAIN/NODATA answers without an SOA to take it from
CACHE_SIZE = 10_000  # client addresses remembered; the least recently used go first


class _DnsFailure(Exception):
    """A query that got no usable answer (timeout, SERVFAIL, refused, no resolver)."""


@dataclass(frozen=True)
class _Lookup:
    """One query's result: the records (empty for NXDOMAIN/NODATA) and how long to keep it."""

    values: tuple[str, ...]
    ttl: float


def make_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    """A resolver for `[dns]`: the listed servers, else the system's resolv.conf.

    A missing or unusable resolv.conf is not fatal: every lookup then fails,
    which is the documented `dns-error` outcome, and it is logged once here.
    """
    try:
        resolver = dns.asyncresolver.Resolver(configure=not cfg.nameservers)
    except (dns.resolver.NoResolverConfiguration, OSError) as exc:
        log.warning("no DNS resolver configured (%s): every client name is 'unknown'", exc)
        resolver = dns.asyncresolver.Resolver(configure=False)
    if cfg.nameservers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(text)) for text in cfg.nameservers
        ]
    resolver.timeout = cfg.timeout
    resolver.lifetime = cfg.timeout
    resolver.cache = None  # this module caches whole verdicts, per client address
    return resolver


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308: a negative answer lives for min(SOA TTL, SOA MINIMUM)."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_TTL


class ReverseDns:
    """FCrDNS with a bounded TTL cache; one instance per gateway process."""

    def __init__(
        self,
        cfg: DnsConfig,
        *,
        resolver: dns.asyncresolver.Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._resolver = resolver or make_resolver(cfg)
        self._timeout = cfg.timeout
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[IpAddress, tuple[float, ClientName]] = OrderedDict()
        self._pending: dict[IpAddress, asyncio.Future[ClientName]] = {}

    def reconfigure(self, cfg: DnsConfig, resolver: dns.asyncresolver.Resolver) -> None:
        """Live reload: later lookups ask `resolver` (made by `make_resolver(cfg)`, which
        reads resolv.conf, so off the event loop); the names cached so far are forgotten.
        Lookups under way are not interrupted."""
        self._resolver = resolver
        self._timeout = cfg.timeout
        self._cache.clear()

    async def lookup(self, client_ip: str) -> ClientName:
        """The client's forward-confirmed name(s), from the cache when still fresh."""
        address = client_address(client_ip)
        cached = self._cache.get(address)
        if cached is not None:
            expires, name = cached
            if self._clock() < expires:
                self._cache.move_to_end(address)
                return name
            del self._cache[address]
        pending = self._pending.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve_and_cache(address))
            self._pending[address] = pending
            pending.add_done_callback(lambda _: self._pending.pop(address, None))
        # Shielded: one client giving up must not cancel the lookup others wait for.
        return await asyncio.shield(pending)

    async def _resolve_and_cache(self, address: IpAddress) -> ClientName:
        # A safety net over the per-query lifetimes: PTR, then forward queries in parallel.
        try:
            name, ttl = await asyncio.wait_for(self._resolve(address), 2 * self._timeout + 1)
        except TimeoutError:
            return ClientName((), DNS_ERROR, f"no answer within {2 * self._timeout + 1:g}s")
        if ttl is not None and ttl > 0:
            self._cache[address] = (self._clock() + min(ttl, MAX_TTL), name)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return name

    async def _query(self, qname: dns.name.Name | str, rdtype: str) -> _Lookup:
        try:
            answer = await self._resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            response = exc.responses().get(exc.qnames()[0]) if exc.qnames() else None
            return _Lookup((), _negative_ttl(response))
        except dns.exception.Timeout as exc:
            raise _DnsFailure(f"{rdtype} {qname}: no answer within {self._timeout:g}s") from exc
        except (dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
            raise _DnsFailure(f"{rdtype} {qname}: {type(exc).__name__}") from exc
        if answer.rrset is None:
            return _Lookup((), _negative_ttl(answer.response))
        values = tuple(
            rdata.target.to_text(omit_final_dot=True).lower()
            if rdtype == "PTR"
            else rdata.to_text()
            for rdata in answer.rrset
        )
        return _Lookup(values, float(answer.chaining_result.minimum_ttl))

    async def _resolve(self, address: IpAddress) -> tuple[ClientName, float | None]:
        """The verdict and how long it may be cached (None: not at all)."""
        try:
            ptr = await self._query(dns.reversename.from_address(str(address)), "PTR")
        except _DnsFailure as exc:
            return ClientName((), DNS_ERROR, str(exc)), None
        if not ptr.values:
            return ClientName((), NO_PTR, f"no PTR record for {address}"), ptr.ttl
        names = sorted(set(ptr.values))
        checked = names[:MAX_NAMES]
        rdtype = "A" if address.version == 4 else "AAAA"
        results = await asyncio.gather(
            *(self._query(name, rdtype) for name in checked), return_exceptions=True
        )
        confirmed: list[str] = []
        notes: list[str] = []
        failed = False
        ttl = ptr.ttl
        for name, result in zip(checked, results, strict=True):
            if isinstance(result, _DnsFailure):
                failed = True
                notes.append(str(result))
                continue
            if isinstance(result, BaseException):
                raise result
            ttl = min(ttl, result.ttl)
            if _contains(result.values, address):
                confirmed.append(name)
            elif result.values:
                notes.append(f"{name} has {rdtype} {', '.join(result.values)}, not {address}")
            else:
                notes.append(f"{name} has no {rdtype} record")
        if len(names) > MAX_NAMES:
            notes.append(f"{len(names) - MAX_NAMES} more PTR name(s) not checked")
        if confirmed:
            return ClientName(tuple(confirmed), CONFIRMED, "; ".join(notes)), ttl
        if failed:
            return ClientName((), DNS_ERROR, "; ".join(notes)), None
        return ClientName((), NOT_CONFIRMED, "PTR " + "; ".join(notes)), ttl


def _contains(values: Sequence[str], address: IpAddress) -> bool:
    for value in values:
        try:
            if ipaddress.ip_address(value) == address:
                return True
        except ValueError:
            continue
    return False
