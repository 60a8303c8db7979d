"""The login success cache of `PasswordAuthenticator`, against a real SQLite store.

Argon2 work is counted with a real `PasswordHasher` that counts its verifications;
the only thing faked is the cache's clock. What must hold: a repeated correct login
skips argon2 and gets the same identity; nothing else gets faster (a wrong
password, or a right one refused for another reason, still costs a verification);
every change to the account voids what was remembered; the cache stays within its
size and age; a hit needs no place in the argon2 pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import argon2
import pytest
from sqlalchemy import update

from submitgw.config import AuthConfig, LimitsConfig, PasswordsConfig
from submitgw.errors import AuthBusy, AuthFailed, LoginLocked, PasswordExpired
from submitgw.services.accounts import AccountService, Actor
from submitgw.services.authn import Hashing, PasswordAuthenticator, make_hasher
from submitgw.services.limiter import Limiter
from submitgw.store import CredentialStore, Database, UserNetworkStore, UserStore
from submitgw.store.counters import CounterStore
from submitgw.store.models import User
from submitgw.types import Identity

CHEAP = AuthConfig(argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1)
ALICE = "alice@example.org"
BOB = "bob@example.org"
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase 42"
ADMIN = Actor("admin:test", "test")


class CountingHasher(argon2.PasswordHasher):
    """A real hasher that counts how often it verified a hash."""

    def __init__(self, cfg: AuthConfig) -> None:
        made = make_hasher(cfg)
        super().__init__(
            time_cost=made.time_cost,
            memory_cost=made.memory_cost,
            parallelism=made.parallelism,
            hash_len=made.hash_len,
            salt_len=made.salt_len,
            type=made.type,
        )
        self.verifications = 0
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.verifications += 1
        return super().verify(hash, password)


class Clock:
    """The cache's clock (monotonic seconds), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def accounts(db: Database) -> AccountService:
    service = AccountService(db, CHEAP, PasswordsConfig())
    for email in (ALICE, BOB):
        service.create_user(email, PASSWORD, "password", ADMIN)
    return service


@dataclasses.dataclass
class Setup:
    auth: PasswordAuthenticator
    hasher: CountingHasher
    clock: Clock
    db: Database

    def login(
        self,
        user: str = ALICE,
        password: str = PASSWORD,
        *,
        authzid: str = "",
        client_ip: str = "192.0.2.7",
    ) -> Awaitable[Identity]:
        return self.auth.login(
            user.encode(), password.encode(), authzid.encode(), "PLAIN", client_ip=client_ip
        )

    def run(self, *args: Any, **kwargs: Any) -> Identity:
        """One login, run to its end."""

        async def main() -> Identity:
            return await self.login(*args, **kwargs)

        return asyncio.run(main())

    def verifies(self, *args: Any, **kwargs: Any) -> int:
        """Argon2 verifications one login took, whatever its outcome."""
        before = self.hasher.verifications
        with contextlib.suppress(AuthFailed, PasswordExpired):
            self.run(*args, **kwargs)
        return self.hasher.verifications - before


@pytest.fixture
def make_setup(db: Database, accounts: AccountService) -> Iterator[Callable[..., Setup]]:
    made: list[PasswordAuthenticator] = []

    def make(cfg: AuthConfig = CHEAP, passwords: PasswordsConfig | None = None) -> Setup:
        hasher, clock = CountingHasher(cfg), Clock()
        auth = PasswordAuthenticator(
            UserStore(db),
            cfg,
            UserNetworkStore(db),
            CredentialStore(db),
            passwords,
            hashing=Hashing(hasher, hasher.hash("a dummy")),
            clock=clock,
        )
        made.append(auth)
        return Setup(auth, hasher, clock, db)

    yield make
    for auth in made:
        auth.close()


@pytest.fixture
def setup(make_setup: Callable[..., Setup]) -> Setup:
    return make_setup()


# --- hits ----------------------------------------------------------------------------------


def test_a_repeated_correct_login_skips_argon2_and_is_the_same_identity(setup: Setup) -> None:
    first = setup.run()
    assert setup.hasher.verifications == 1

    again = [setup.run() for _ in range(5)]

    assert setup.hasher.verifications == 1
    assert again == [first] * 5 == [Identity(ALICE, "PLAIN")] * 5
    assert setup.auth.cache.hits == 5
    # The login name is compared as the gateway stores it.
    assert setup.verifies(" Alice@EXAMPLE.org") == 0


def test_an_app_password_is_remembered_as_that_app_password(
    setup: Setup, accounts: AccountService
) -> None:
    record, secret = accounts.add_app_password(ALICE, "phone", ADMIN)

    first = setup.run(password=secret)
    again = setup.run(password=secret)
    typed_otherwise = setup.run(password=secret.upper().replace("-", " "))

    assert first == again == Identity(ALICE, "PLAIN", app_password=f"{record.id} phone")
    # Another spelling is another key: verified once more, then remembered too.
    assert typed_otherwise == first
    assert setup.hasher.verifications == 2
    # The account password is a credential of its own.
    assert setup.run() == Identity(ALICE, "PLAIN")
    assert setup.hasher.verifications == 3


def test_a_hit_still_records_the_login_and_the_app_passwords_use(
    setup: Setup, accounts: AccountService
) -> None:
    _, secret = accounts.add_app_password(ALICE, "phone", ADMIN)
    setup.run(password=secret)
    setup.run()
    users = UserStore(setup.db)
    with setup.db.session() as session:
        session.execute(update(User).values(last_login_at=None))

    setup.run(password=secret)
    setup.run()

    assert setup.hasher.verifications == 2
    assert users.get(ALICE).last_login_at is not None  # type: ignore[union-attr]
    (app,) = accounts.credentials.app_passwords(ALICE)
    assert app.last_used_at is not None


# --- failures never get faster -------------------------------------------------------------


def test_a_wrong_password_costs_argon2_with_a_warm_cache(setup: Setup) -> None:
    setup.run()

    for wrong in ("wrong", PASSWORD + " ", PASSWORD.upper(), ""):
        with pytest.raises(AuthFailed):
            setup.run(password=wrong)

    assert setup.hasher.verifications == 1 + 4
    assert setup.verifies() == 0, "the right one is still remembered"


def test_another_users_password_is_not_a_hit(setup: Setup) -> None:
    setup.run(ALICE)
    with pytest.raises(AuthFailed):
        setup.run(BOB, "not bobs password")

    assert setup.verifies(BOB) == 1, "bob's own success is verified once"
    assert setup.verifies(BOB) == 0


@pytest.mark.parametrize(
    ("why", "login"),
    [
        ("authzid of another user", {"authzid": BOB}),
        ("outside the user's networks", {"client_ip": "198.51.100.1"}),
    ],
)
def test_a_right_password_refused_for_another_reason_costs_argon2(
    setup: Setup, why: str, login: dict[str, str]
) -> None:
    """Answering such a refusal from the cache would tell a guesser outside the user's
    networks, by its speed, that the password is right."""
    UserNetworkStore(setup.db).set(ALICE, ["192.0.2.0/24"])
    setup.run()
    assert setup.verifies() == 0

    with pytest.raises(AuthFailed):
        setup.run(**login)

    assert setup.hasher.verifications == 2, why


def test_lockout_applies_to_a_remembered_password(setup: Setup) -> None:
    """Wrong passwords are counted and cost argon2 as ever; once the name is locked even
    the remembered right one is refused, before any check."""
    limiter = Limiter(LimitsConfig(auth_delay=0.001, auth_max_delay=0.002), CounterStore(setup.db))

    async def login(password: str) -> Identity:
        return await limiter.login(
            ALICE.encode(), "192.0.2.7", lambda: setup.login(password=password)
        )

    async def main() -> list[object]:
        outcomes: list[object] = [await login(PASSWORD), await login(PASSWORD)]
        for _ in range(limiter.cfg.auth_failures_per_account):
            try:
                await login("wrong")
            except AuthFailed as err:
                outcomes.append(type(err))
        try:
            await login(PASSWORD)
        except LoginLocked as err:
            outcomes.append(type(err))
        return outcomes

    outcomes = asyncio.run(main())

    failures = limiter.cfg.auth_failures_per_account
    assert outcomes == [Identity(ALICE, "PLAIN")] * 2 + [AuthFailed] * failures + [LoginLocked]
    assert setup.hasher.verifications == 1 + failures


# --- every change voids what was remembered ------------------------------------------------


def change_password(accounts: AccountService) -> None:
    accounts.change_password(ALICE, NEW_PASSWORD, ADMIN)


CHANGES: dict[str, tuple[Callable[[AccountService, Database], object], type[Exception]]] = {
    "password changed": (lambda a, db: change_password(a), AuthFailed),
    "password expired": (lambda a, db: a.expire_password(ALICE, ADMIN), PasswordExpired),
    "disabled": (lambda a, db: a.users.set_enabled(ALICE, False), AuthFailed),
    "set to certificate": (lambda a, db: a.users.set_auth_policy(ALICE, "certificate"), AuthFailed),
    "networks set": (lambda a, db: UserNetworkStore(db).set(ALICE, ["10.0.0.0/8"]), AuthFailed),
    "deleted": (lambda a, db: a.users.delete(ALICE), AuthFailed),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_to_the_account_voids_the_remembered_login(
    setup: Setup,
    accounts: AccountService,
    change: tuple[Callable[[AccountService, Database], object], type[Exception]],
) -> None:
    make_change, refusal = change
    setup.run()
    assert setup.verifies() == 0

    make_change(accounts, setup.db)

    with pytest.raises(refusal):
        setup.run()
    assert setup.hasher.verifications == 2, "verified again, like any login after a change"


def test_a_revoked_app_password_is_refused_at_once(setup: Setup, accounts: AccountService) -> None:
    record, secret = accounts.add_app_password(ALICE, "phone", ADMIN)
    setup.run(password=secret)
    assert setup.verifies(password=secret) == 0

    accounts.revoke_app_password(ALICE, record.id, ADMIN)

    with pytest.raises(AuthFailed):
        setup.run(password=secret)
    assert setup.hasher.verifications == 2


def test_a_change_to_another_user_leaves_the_entry(setup: Setup, accounts: AccountService) -> None:
    setup.run()

    accounts.users.set_enabled(BOB, False)
    accounts.add_app_password(BOB, "phone", ADMIN)

    assert setup.verifies() == 0


def test_a_user_deleted_and_added_again_is_verified_again(
    setup: Setup, accounts: AccountService
) -> None:
    """Even with the same password (and on SQLite possibly the same row id), the new
    account's first login is verified: nothing of the old account is trusted."""
    setup.run()
    accounts.users.delete(BOB)
    accounts.users.delete(ALICE)
    accounts.create_user(ALICE, PASSWORD, "password", ADMIN)

    assert setup.verifies() == 1
    assert setup.verifies() == 0


def test_a_success_after_a_change_is_remembered_under_the_new_generation(
    setup: Setup, accounts: AccountService
) -> None:
    setup.run()
    change_password(accounts)

    assert setup.verifies(password=NEW_PASSWORD) == 1
    assert setup.verifies(password=NEW_PASSWORD) == 0
    with pytest.raises(AuthFailed):
        setup.run()


def test_expiry_by_age_applies_to_a_remembered_password(
    make_setup: Callable[..., Setup],
) -> None:
    """Age needs no change to the row's generation: it is judged at every login."""
    setup = make_setup(CHEAP, PasswordsConfig(max_age_days=1))
    setup.run()
    with setup.db.session() as session:
        old = datetime.now(UTC) - timedelta(days=2)
        session.execute(update(User).where(User.email == ALICE).values(password_changed_at=old))

    with pytest.raises(PasswordExpired):
        setup.run()
    assert setup.hasher.verifications == 1, "the password is still the right one"


# --- bounds --------------------------------------------------------------------------------


def test_the_cache_keeps_at_most_its_entries_least_recently_used_first(
    make_setup: Callable[..., Setup], accounts: AccountService
) -> None:
    setup = make_setup(dataclasses.replace(CHEAP, success_cache_entries=3))
    users = [f"user{n}@example.org" for n in range(5)]
    for email in users:
        accounts.create_user(email, PASSWORD, "password", ADMIN)

    for email in users[:3]:
        setup.run(email)
    assert setup.verifies(users[0]) == 0  # now the most recently used
    for email in users[3:]:
        setup.run(email)

    assert len(setup.auth.cache) == 3
    assert setup.verifies(users[0]) == 0, "kept: used recently"
    assert setup.verifies(users[1]) == 1, "dropped: least recently used"
    assert len(setup.auth.cache) == 3


def test_an_entry_is_not_used_after_success_cache_seconds(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup(dataclasses.replace(CHEAP, success_cache_seconds=300.0))
    setup.run()

    setup.clock.now += 299.0
    assert setup.verifies() == 0
    setup.clock.now += 1.0
    assert setup.verifies() == 1, "300 s after its verification, whatever its use meanwhile"
    setup.clock.now += 10.0
    assert setup.verifies() == 0, "remembered anew"


def test_zero_entries_turns_the_cache_off(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup(dataclasses.replace(CHEAP, success_cache_entries=0))

    assert [setup.verifies() for _ in range(4)] == [1] * 4
    assert len(setup.auth.cache) == 0


# --- the argon2 pool -----------------------------------------------------------------------


def test_a_hit_needs_no_place_in_the_argon2_pool(
    make_setup: Callable[..., Setup], accounts: AccountService
) -> None:
    """While the pool's only place verifies a slow hash, a remembered login goes through
    at once; a login that needs argon2 gets 454 as ever."""
    setup = make_setup(dataclasses.replace(CHEAP, workers=1, max_pending=0))
    setup.run()
    slow = AuthConfig(argon2_time_cost=8, argon2_memory_kib=65536, argon2_parallelism=1)
    accounts.credentials.change_password(BOB, make_hasher(slow).hash(NEW_PASSWORD), keep=1)

    async def main() -> tuple[Identity, float, type[BaseException], bool]:
        busy = asyncio.ensure_future(setup.login(BOB, NEW_PASSWORD, client_ip="192.0.2.8"))
        while setup.auth.shares.holding() == 0:
            await asyncio.sleep(0.001)
        started = time.monotonic()
        hit = await setup.login()
        took = time.monotonic() - started
        try:
            await setup.login(password="wrong")
        except AuthBusy as err:
            refused: type[BaseException] = type(err)
        still_busy = not busy.done()
        await busy
        return hit, took, refused, still_busy

    hit, took, refused, still_busy = asyncio.run(main())

    assert hit == Identity(ALICE, "PLAIN")
    assert refused is AuthBusy
    assert still_busy, f"the slow verification ended first ({took:.3f} s): the test proves nothing"


def test_a_reload_applies_new_bounds_at_once(
    make_setup: Callable[..., Setup], accounts: AccountService
) -> None:
    setup = make_setup()
    accounts.create_user("carol@example.org", PASSWORD, "password", ADMIN)
    for email in (ALICE, BOB, "carol@example.org"):
        setup.run(email)

    setup.auth.reconfigure(
        dataclasses.replace(CHEAP, success_cache_entries=1), PasswordsConfig(), None
    )
    assert len(setup.auth.cache) == 1
    assert setup.verifies("carol@example.org") == 0, "the most recently used stays"
    assert setup.verifies(ALICE) == 1

    setup.auth.reconfigure(
        dataclasses.replace(CHEAP, success_cache_entries=0), PasswordsConfig(), None
    )
    assert len(setup.auth.cache) == 0
    assert [setup.verifies(ALICE) for _ in range(2)] == [1, 1]
