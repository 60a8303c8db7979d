"""Fair shares of the argon2 pool and the count of successful logins, without a gateway.

What must hold: no client address or login name holds more than its few places
of the pool; a place is given back exactly once, when its check is over (even
if the client stopped waiting); successful logins are counted in one write and
refused, unchecked, once over their limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from submitgw.config import AuthConfig, ConfigError, LimitsConfig, from_dict
from submitgw.errors import AuthBusy, AuthFailed, TooManyLogins
from submitgw.rules.limits import (
    account_key,
    ip_key,
    success_key,
    success_limit_reached,
)
from submitgw.services.authn import PasswordAuthenticator, make_hasher
from submitgw.services.limiter import Limiter
from submitgw.services.pool import PoolShares
from submitgw.smtp.replies import line
from submitgw.store import CredentialStore, Database, UserStore
from submitgw.store.counters import CounterStore
from submitgw.types import Identity

CHEAP = AuthConfig(argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1)
# ~0.5 s a verify: long enough to hang up in the middle of one.
SLOW = AuthConfig(argon2_time_cost=8, argon2_memory_kib=65536, argon2_parallelism=1)
ALICE = "alice@example.org"
BOB = "bob@example.org"
PASSWORD = "correct horse battery staple"


# --- the bookkeeping ------------------------------------------------------------------------


def test_a_client_holds_at_most_its_share_and_others_still_get_in() -> None:
    shares = PoolShares(capacity=10, per_client=2, per_account=5)

    held = [shares.claim("10.0.0.1", f"acct:{n}") for n in range(3)]

    assert held[2] is None and all(held[:2])
    assert shares.refusal("10.0.0.1", "acct:x") == "ip"
    assert shares.claim("10.0.0.2", "acct:x") is not None
    assert (shares.holding(), shares.holding(client="10.0.0.1")) == (3, 2)


def test_a_login_name_holds_at_most_its_share_from_any_address() -> None:
    shares = PoolShares(capacity=10, per_client=5, per_account=2)

    held = [shares.claim(f"10.0.0.{n}", "acct:alice") for n in range(3)]

    assert held[2] is None and all(held[:2])
    assert shares.refusal("10.0.0.9", "acct:alice") == "account"
    assert shares.claim("10.0.0.9", "acct:bob") is not None


def test_the_pool_capacity_still_bounds_everyone_together() -> None:
    shares = PoolShares(capacity=3, per_client=2, per_account=2)

    held = [shares.claim(f"10.0.0.{n}", f"acct:{n}") for n in range(4)]

    assert held[3] is None and all(held[:3])
    assert shares.refusal("10.0.0.9", "acct:9") == "pool"
    # Work that belongs to nobody (self-service changes) counts against the pool only.
    assert shares.claim() is None


def test_a_place_is_given_back_exactly_once() -> None:
    shares = PoolShares(capacity=2, per_client=1, per_account=1)
    share = shares.claim("10.0.0.1", "acct:alice")
    other = shares.claim("10.0.0.2", "acct:bob")
    assert share is not None and other is not None

    share.release()
    share.release()

    assert shares.holding() == 1
    assert shares.holding(client="10.0.0.1") == 0
    assert shares.holding(account="acct:alice") == 0
    assert shares.holding(client="10.0.0.2") == 1
    assert shares.claim("10.0.0.1", "acct:alice") is not None
    assert shares.claim("10.0.0.3", "acct:carol") is None


def test_anonymous_work_leaves_client_and_account_counts_alone() -> None:
    shares = PoolShares(capacity=3, per_client=1, per_account=1)
    share = shares.claim()
    assert share is not None

    assert shares.claim("10.0.0.1", "acct:alice") is not None
    share.release()
    assert shares.holding() == 1


def test_successful_logins_are_limited_by_name_then_by_address() -> None:
    cfg = LimitsConfig(auth_successes_per_account=3, auth_successes_per_ip=5)

    assert success_limit_reached(2, 4, cfg) is None
    assert success_limit_reached(3, 0, cfg) == "account"
    assert success_limit_reached(0, 5, cfg) == "ip"


def test_successes_are_counted_apart_from_failures() -> None:
    assert success_key(account_key("Alice@Example.org")) == "ok:acct:alice@example.org"
    assert success_key(ip_key("2001:db8::1")) == "ok:ip:2001:db8::/64"
    assert line(TooManyLogins()) == "454 4.7.0 Too many logins, try again later"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("auth", "max_pending_per_ip"),
        ("auth", "max_pending_per_account"),
        ("limits", "auth_successes_per_account"),
        ("limits", "auth_successes_per_ip"),
    ],
)
def test_shares_and_success_limits_must_be_positive(section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        from_dict({section: {key: 0}}, Path("/"))


# --- the authenticator ----------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def users(sqlite_db: Database) -> UserStore:
    store = UserStore(sqlite_db)
    for email in (ALICE, BOB):
        store.add(email, make_hasher(CHEAP).hash(PASSWORD))
    return store


@pytest.fixture
def make_auth(users: UserStore) -> Iterator[Callable[[AuthConfig], PasswordAuthenticator]]:
    made: list[PasswordAuthenticator] = []

    def make(cfg: AuthConfig) -> PasswordAuthenticator:
        made.append(PasswordAuthenticator(users, cfg))
        return made[-1]

    yield make
    for auth in made:
        auth.close()


def login(
    auth: PasswordAuthenticator, user: str, ip: str, password: str = PASSWORD
) -> asyncio.Task:
    return asyncio.ensure_future(
        auth.login(user.encode(), password.encode(), b"", "PLAIN", client_ip=ip)
    )


def test_one_address_cannot_take_the_pool_from_another(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator],
) -> None:
    auth = make_auth(dataclasses.replace(CHEAP, workers=1, max_pending=4, max_pending_per_ip=2))

    async def burst() -> tuple[list[object], object]:
        flood = [login(auth, ALICE, "127.0.0.2") for _ in range(5)]
        other = login(auth, BOB, "127.0.0.3")
        results = await asyncio.gather(*flood, return_exceptions=True)
        return results, await other

    flood, other = asyncio.run(burst())

    assert [type(r) for r in flood] == [Identity] * 2 + [AuthBusy] * 3
    assert isinstance(other, Identity) and other.user == BOB
    assert auth.shares.holding() == 0


def test_places_come_back_after_failures_and_refusals(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator],
) -> None:
    auth = make_auth(dataclasses.replace(CHEAP, max_pending_per_ip=1, max_pending_per_account=1))

    async def go() -> list[object]:
        return await asyncio.gather(
            login(auth, ALICE, "127.0.0.2", "wrong"),
            login(auth, ALICE, "127.0.0.3"),
            return_exceptions=True,
        )

    assert [type(r) for r in asyncio.run(go())] == [AuthFailed, AuthBusy]
    assert auth.shares.holding() == 0
    assert isinstance(
        asyncio.run(auth.login(ALICE.encode(), PASSWORD.encode(), b"", "PLAIN")), Identity
    )


@pytest.mark.slow
def test_hanging_up_mid_check_keeps_the_place_until_argon2_is_done(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator], sqlite_db: Database
) -> None:
    """Else a client could hang up and retry to keep every worker busy beyond its share."""
    auth = make_auth(dataclasses.replace(SLOW, workers=1, max_pending_per_ip=1))
    CredentialStore(sqlite_db).change_password(ALICE, auth.hasher.hash(PASSWORD), keep=1)

    async def hang_up() -> tuple[int, type, int]:
        task = login(auth, ALICE, "127.0.0.2")
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held_after_cancel = auth.shares.holding(client="127.0.0.2")
        (again,) = await asyncio.gather(login(auth, ALICE, "127.0.0.2"), return_exceptions=True)
        refused = type(again)
        deadline = time.monotonic() + 10
        while auth.shares.holding() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return held_after_cancel, refused, auth.shares.holding()

    held, refused, left = asyncio.run(hang_up())

    assert held == 1
    assert refused is AuthBusy
    assert left == 0


# --- the limiter: successful logins ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_successes_are_refused_unchecked_once_over_the_limit(sqlite_db: Database) -> None:
    store = CounterStore(sqlite_db)
    clock = Clock()
    limiter = Limiter(
        LimitsConfig(auth_successes_per_account=2, auth_successes_per_ip=3), store, clock
    )
    checked: list[str] = []

    def verify(who: str) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            checked.append(who)
            return who

        return check

    async def attempt(user: str, ip: str) -> object:
        try:
            return await limiter.login(user.encode(), ip, verify(user))
        except TooManyLogins as err:
            return line(err)

    async def go() -> list[object]:
        return [
            await attempt(ALICE, "127.0.0.2"),
            await attempt(ALICE, "127.0.0.2"),
            await attempt(ALICE, "127.0.0.4"),  # the name is used up, from anywhere
            await attempt(BOB, "127.0.0.2"),
            await attempt(BOB, "127.0.0.2"),  # now the address is used up
            await attempt(BOB, "127.0.0.3"),
        ]

    refused = "454 4.7.0 Too many logins, try again later"
    assert asyncio.run(go()) == [ALICE, ALICE, refused, BOB, refused, BOB]
    assert checked == [ALICE, ALICE, BOB, BOB]

    # A window later everything is free again.
    clock.now += 2 * limiter.logins.seconds
    assert asyncio.run(attempt(ALICE, "127.0.0.2")) == ALICE


def test_a_success_is_one_write_that_also_forgets_the_names_failures(db: Database) -> None:
    """On each backend (the shared `db` fixture)."""
    store = CounterStore(db)
    store.record_failure(["acct:alice", "ip:127.0.0.2"], 100, 0)

    store.record_success(["ok:acct:alice", "ok:ip:127.0.0.2"], 100, forget="acct:alice")
    store.record_success(["ok:acct:alice", "ok:ip:127.0.0.2"], 160)

    state = store.login_state(["acct:alice", "ip:127.0.0.2", "ok:acct:alice", "ok:ip:127.0.0.2"], 0)
    assert state.failures == {"ip:127.0.0.2": 1, "ok:acct:alice": 2, "ok:ip:127.0.0.2": 2}
