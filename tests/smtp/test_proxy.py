"""The connection table behind a balancer: counted in all at accept, under the client once
its header names it, released once whichever way it ends."""

from __future__ import annotations

from typing import Any

from submitgw.services.audit import Recorder
from submitgw.smtp.connections import Connection, ConnectionTable


def connection(table: ConnectionTable, ip: str) -> Connection:
    def no_session(_: Connection) -> Any:
        raise AssertionError("no session in these tests")

    c = Connection(table, "submission", no_session, greet_refusals=True, recorder=Recorder())
    c.client_ip = ip
    return c


def test_a_balancers_connection_counts_in_all_but_under_no_address() -> None:
    table = ConnectionTable(max_total=10, max_per_client=1)
    pending = [connection(table, "10.0.0.1") for _ in range(3)]

    assert [table.admit(c, client_known=False) for c in pending] == [None] * 3

    assert (table.total, dict(table.per_client)) == (3, {})


def test_settling_counts_the_client_and_applies_its_cap() -> None:
    table = ConnectionTable(max_total=10, max_per_client=1)
    first, second = connection(table, "10.0.0.1"), connection(table, "10.0.0.1")
    table.admit(first, client_known=False)
    table.admit(second, client_known=False)
    first.client_ip = second.client_ip = "192.0.2.7"

    assert table.settle(first) is None
    assert table.settle(second) == "too-many-connections-from-client"

    assert dict(table.per_client) == {"192.0.2.7": 1}
    table.release(second)
    table.release(first)
    assert (table.total, dict(table.per_client), table.released) == (0, {}, 2)


def test_release_forgets_the_address_it_was_counted_under() -> None:
    table = ConnectionTable(max_total=10, max_per_client=5)
    c = connection(table, "10.0.0.1")
    table.admit(c, client_known=False)
    c.client_ip = "192.0.2.7"
    table.settle(c)
    c.client_ip = "?"  # whatever the connection says later, the table kept the key

    table.release(c)

    assert dict(table.per_client) == {}


def test_settling_after_shutdown_began_is_refused() -> None:
    table = ConnectionTable(max_total=10, max_per_client=5)
    c = connection(table, "10.0.0.1")
    table.admit(c, client_known=False)
    table.closed = True
    c.client_ip = "192.0.2.7"

    assert table.settle(c) == "shutting-down"


def test_a_header_not_yet_read_is_not_evicted_for_a_newcomer() -> None:
    """It belongs to no address yet; strangers with an address go first."""
    table = ConnectionTable(max_total=2, max_per_client=5)
    pending, stranger = connection(table, "10.0.0.1"), connection(table, "192.0.2.7")
    table.admit(pending, client_known=False)
    table.admit(stranger)
    evicted: list[Connection] = []

    def evict(c: Connection) -> None:
        evicted.append(c)
        table.release(c)

    pending.evict = lambda: evict(pending)  # type: ignore[method-assign]
    stranger.evict = lambda: evict(stranger)  # type: ignore[method-assign]

    assert table.admit(connection(table, "192.0.2.8")) is None
    assert evicted == [stranger]

    table.max_total = 1
    table.release(next(c for c in table.live if c is not pending))
    assert table.admit(connection(table, "192.0.2.9")) == "too-many-connections"
    assert evicted == [stranger]
    assert list(table.live) == [pending]


def test_a_balancers_connection_is_admitted_once_its_client_is_known() -> None:
    """Metrics read `admitted`: a connection refused at its header was never admitted."""
    table = ConnectionTable(max_total=10, max_per_client=1)
    first, second = connection(table, "10.0.0.1"), connection(table, "10.0.0.1")
    table.admit(first, client_known=False)
    table.admit(second, client_known=False)
    assert (dict(table.admitted), dict(table.open_per_listener())) == ({}, {"submission": 2})

    first.client_ip = second.client_ip = "192.0.2.7"
    table.settle(first)
    table.settle(second)  # over the client's cap

    assert dict(table.admitted) == {"submission": 1}
    table.release(second)
    assert dict(table.open_per_listener()) == {"submission": 1}
