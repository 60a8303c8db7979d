"""A real DNS server on loopback for reverse-DNS tests: UDP, answering from a dict.

The gateway's resolver talks to it over a socket exactly as to a real server
(`[dns] nameservers = ["127.0.0.1:PORT"]`), so the tests cover dnspython's
parsing and timeouts too. It answers what a test configured (PTR, A, AAAA) and
NXDOMAIN otherwise; `silent` makes it drop queries, to test timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest

POLL = 0.1  # seconds between checks of the stop flag
STOP_TIMEOUT = 5.0


class LoopbackDns:
    """Records are (owner name, type) -> values, with the TTL `ttl` unless set per record."""

    def __init__(self, ttl: int = 300) -> None:
        self.ttl = ttl
        self.records: dict[tuple[str, str], list[str]] = {}
        self.ttls: dict[tuple[str, str], int] = {}
        self.queries: list[tuple[str, str]] = []
        self.silent = False
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(POLL)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="loopback-dns", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, value: str, ttl: int | None = None) -> None:
        key = (dns.name.from_text(name).to_text().lower(), rdtype)
        with self._lock:
            self.records.setdefault(key, []).append(value)
            if ttl is not None:
                self.ttls[key] = ttl

    def ptr(self, ip: str, name: str, ttl: int | None = None) -> None:
        owner = dns.reversename.from_address(ip).to_text()
        self.add(owner, "PTR", name.rstrip(".") + ".", ttl)

    def a(self, name: str, ip: str, ttl: int | None = None) -> None:
        self.add(name, "AAAA" if ":" in ip else "A", ip, ttl)

    def host(self, ip: str, name: str) -> None:
        """A forward-confirmed host: PTR and A/AAAA agree."""
        self.ptr(ip, name)
        self.a(name, ip)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.ttls.clear()

    def count(self, rdtype: str | None = None) -> int:
        with self._lock:
            return sum(1 for _, t in self.queries if rdtype is None or t == rdtype)

    def start(self) -> LoopbackDns:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):
                reply = self._answer(wire)
                if reply is not None:
                    self._sock.sendto(reply, peer)

    def _answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        owner = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((owner, rdtype))
            values = list(self.records.get((owner, rdtype), []))
            ttl = self.ttls.get((owner, rdtype), self.ttl)
            name_exists = any(o == owner for o, _ in self.records)
            silent = self.silent
        if silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if values:
            response.answer.append(
                dns.rrset.from_text_list(question.name, ttl, "IN", rdtype, values)
            )
        elif not name_exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


@pytest.fixture
def dns_server() -> Iterator[LoopbackDns]:
    server = LoopbackDns().start()
    try:
        yield server
    finally:
        server.stop()
