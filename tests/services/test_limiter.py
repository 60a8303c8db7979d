"""The sending side of `Limiter`: reading the counters at MAIL and reusing a reading.

Two limiters on one real SQLite database play two gateways; only the clock is
faked. What must hold: a gateway always sees every message it counted itself; a
reading is reused only while it is fresh and far from every limit; near a limit,
once it is stale, after a reload, or with `usage_reuse_seconds = 0`, MAIL reads
the database and so sees what other gateways counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from submitgw.config import LimitsConfig
from submitgw.errors import Kind, Refusal
from submitgw.rules.limits import Quota
from submitgw.services.limiter import Limiter
from submitgw.store import Database
from submitgw.store.counters import CounterStore

ALICE = "alice@example.org"
CLIENT = "192.0.2.7"


class Clock:
    """Wall-clock seconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.upgrade()
    yield database
    database.dispose()


def limiter(db: Database, clock: Clock, **limits: float) -> Limiter:
    return Limiter(LimitsConfig(**limits), CounterStore(db), clock=clock)  # type: ignore[arg-type]


async def used(gateway: Limiter, user: str = ALICE, client: str = CLIENT) -> int:
    """The user's messages as the gateway's MAIL check sees them."""
    current: Quota = await gateway.check_message(user, client, "s1")
    return current.counts[0].messages


async def count(gateway: Limiter, messages: int, user: str = ALICE) -> None:
    """Messages the smarthost accepted, counted and committed."""
    for _ in range(messages):
        gateway.count_message(user, CLIENT, 1)
    await gateway.flush()


def test_far_from_the_limits_a_fresh_reading_is_reused_with_the_gateways_own_counts(
    db: Database,
) -> None:
    clock = Clock()
    one, other = limiter(db, clock), limiter(db, clock)

    async def main() -> list[int]:
        seen = [await used(one)]
        await count(one, 3)
        await count(other, 20)
        seen.append(await used(one))  # reused: its own 3, not yet the other's 20
        one.count_message(ALICE, CLIENT, 1)  # not yet committed: counted all the same
        seen.append(await used(one))
        clock.now += 1.01
        seen.append(await used(one))  # stale: read again
        clock.now -= 60  # a clock stepped back: the reading is not trusted either
        await count(other, 1)
        seen.append(await used(one))
        return seen

    assert asyncio.run(main()) == [0, 3, 4, 24, 25]


def test_near_a_limit_every_mail_reads_and_sees_the_other_gateways(db: Database) -> None:
    """Room is a tenth of the limit and at least 10: 30 messages leave room down to 20 used."""
    clock = Clock()
    one, other = limiter(db, clock, messages_per_user=30), limiter(db, clock)

    async def main() -> tuple[list[int], Refusal]:
        seen = [await used(one)]
        await count(other, 5)
        await count(one, 20)
        seen.append(await used(one))  # 20 of its own: 10 left, still reused
        await count(one, 1)
        seen.append(await used(one))  # 9 left: read, the other's 5 are in
        await count(other, 4)
        with pytest.raises(Refusal) as refused:
            await one.check_message(ALICE, CLIENT, "s1")
        return seen, refused.value

    seen, refusal = asyncio.run(main())
    assert seen == [0, 20, 26]
    assert refusal.kind is Kind.LIMIT_REACHED


def test_the_client_limit_needs_room_as_well(db: Database) -> None:
    """Another user of the same address: the address's reading alone is near its limit."""
    clock = Clock()
    one, other = limiter(db, clock, messages_per_ip=25), limiter(db, clock)

    async def main() -> list[int]:
        await used(one)
        await count(one, 16)  # 9 left for the address
        await count(other, 3, user="bob@example.org")
        current = await one.check_message(ALICE, CLIENT, "s1")
        return [current.counts[0].messages, current.counts[1].messages]

    assert asyncio.run(main()) == [16, 19]


def test_with_usage_reuse_seconds_0_every_mail_reads(db: Database) -> None:
    clock = Clock()
    one, other = limiter(db, clock, usage_reuse_seconds=0), limiter(db, clock)

    async def main() -> list[int]:
        seen = [await used(one)]
        await count(other, 7)
        seen.append(await used(one))
        return seen

    assert asyncio.run(main()) == [0, 7]


def test_a_reload_forgets_the_readings(db: Database) -> None:
    clock = Clock()
    one, other = limiter(db, clock), limiter(db, clock)

    async def main() -> list[int]:
        seen = [await used(one)]
        await count(other, 7)
        one.reconfigure(LimitsConfig(messages_per_user=500))
        seen.append(await used(one))
        return seen

    assert asyncio.run(main()) == [0, 7]


def test_a_message_counted_while_mail_reads_is_never_missed(db: Database) -> None:
    """The read waits for the count in flight; one counted during the wait may or may not
    be in what it reads, and is in the kept reading either way."""
    clock = Clock()
    one = limiter(db, clock)

    async def main() -> tuple[int, int, int]:
        one.count_message(ALICE, CLIENT, 1)  # being written
        reading = asyncio.ensure_future(used(one))
        await asyncio.sleep(0)  # the MAIL is waiting for that write
        one.count_message(ALICE, CLIENT, 1)
        first = await reading
        again = await used(one)  # reused
        await one.flush()
        clock.now += 2
        return first, again, await used(one)

    first, again, exact = asyncio.run(main())
    assert first >= 1
    assert again >= 2
    assert exact == 2
