"""Password logins against a real SQLite store.

What must hold: every failure looks the same (class, reply, and time taken),
argon2 never runs on the event loop, a full worker pool answers 454 at once,
and hashes made with old parameters are quietly upgraded at the next login.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import argon2
import pytest
from sqlalchemy import update

from submitgw.config import AuthConfig
from submitgw.errors import AuthBusy, AuthFailed, Refusal
from submitgw.services.authn import (
    PasswordAuthenticator,
    decode_sasl,
    login_note_due,
    make_hasher,
    split_plain,
)
from submitgw.smtp.replies import line, render
from submitgw.store import CredentialStore, Database, SenderStore, UserStore
from submitgw.store.models import User
from submitgw.types import Identity

CHEAP = AuthConfig(argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1)
# Slow enough (~0.5 s a verify) that blocking the loop or a busy pool cannot be missed.
SLOW = AuthConfig(argon2_time_cost=8, argon2_memory_kib=65536, argon2_parallelism=1)

ALICE = "alice@example.org"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def users(db: Database) -> UserStore:
    store = UserStore(db)
    store.add(ALICE, make_hasher(CHEAP).hash(PASSWORD))
    return store


@pytest.fixture
def make_auth(users: UserStore) -> Iterator[Callable[[AuthConfig], PasswordAuthenticator]]:
    made: list[PasswordAuthenticator] = []

    def make(cfg: AuthConfig = CHEAP) -> PasswordAuthenticator:
        made.append(PasswordAuthenticator(users, cfg))
        return made[-1]

    yield make
    for auth in made:
        auth.close()


@pytest.fixture
def auth(make_auth: Callable[[AuthConfig], PasswordAuthenticator]) -> PasswordAuthenticator:
    return make_auth(CHEAP)


def attempt(
    auth: PasswordAuthenticator,
    login: str | bytes,
    password: str | bytes,
    authzid: str | bytes = b"",
    mechanism: str = "PLAIN",
) -> Awaitable[Identity]:
    def raw(value: str | bytes) -> bytes:
        return value.encode("utf-8") if isinstance(value, str) else value

    return auth.login(raw(login), raw(password), raw(authzid), mechanism)


def run(coro: Awaitable[Identity]) -> Identity:
    async def main() -> Identity:
        return await coro

    return asyncio.run(main())


# --- outcomes ------------------------------------------------------------------------------


def test_good_login_gives_the_identity_and_records_it(
    auth: PasswordAuthenticator, users: UserStore
) -> None:
    assert users.get(ALICE).last_login_at is None  # type: ignore[union-attr]

    identity = run(attempt(auth, ALICE, PASSWORD, mechanism="LOGIN"))

    assert identity == Identity(user=ALICE, mechanism="LOGIN")
    assert users.get(ALICE).last_login_at is not None  # type: ignore[union-attr]


def test_a_login_carries_what_the_user_may_send_as(users: UserStore, db: Database) -> None:
    """Read in the login's trip to the database, cached login or not: MAIL needs no trip."""
    senders = SenderStore(db)
    senders.add(ALICE, "@example.net")
    auth = PasswordAuthenticator(users, CHEAP, senders=senders)
    try:
        first = run(attempt(auth, ALICE, PASSWORD))
        remembered = run(attempt(auth, ALICE, PASSWORD))
    finally:
        auth.close()
    assert auth.cache.hits == 1
    assert first.senders == remembered.senders == (ALICE, "@example.net")
    without = PasswordAuthenticator(users, CHEAP)
    try:
        assert run(attempt(without, ALICE, PASSWORD)).senders is None
    finally:
        without.close()


def test_last_login_is_written_once_a_minute(
    auth: PasswordAuthenticator, users: UserStore, db: Database
) -> None:
    """A mail client logs in for every message: one write a minute is enough."""
    run(attempt(auth, ALICE, PASSWORD))
    first = users.get(ALICE).last_login_at  # type: ignore[union-attr]

    run(attempt(auth, ALICE, PASSWORD))
    assert users.get(ALICE).last_login_at == first  # type: ignore[union-attr]

    with db.session() as session:
        session.execute(
            update(User).values(last_login_at=datetime.now(UTC) - timedelta(seconds=61))
        )
    run(attempt(auth, ALICE, PASSWORD))
    assert users.get(ALICE).last_login_at > first  # type: ignore[operator, union-attr]


@pytest.mark.parametrize(
    ("last", "ago", "due"),
    [(False, 0, True), (True, 0, False), (True, 59, False), (True, 60, True), (True, -5, True)],
)
def test_login_note_due(last: bool, ago: int, due: bool) -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    previous = now - timedelta(seconds=ago) if last else None
    assert login_note_due(previous, now) is due


@pytest.mark.parametrize(
    "login",
    ["Alice@Example.ORG", "ALICE@EXAMPLE.ORG", "  alice@example.org ", "alice@EXAMPLE.org"],
)
def test_login_names_are_case_insensitive(auth: PasswordAuthenticator, login: str) -> None:
    assert run(attempt(auth, login, PASSWORD)).user == ALICE


@pytest.mark.parametrize("authzid", [ALICE, "Alice@Example.ORG", "ALICE@EXAMPLE.ORG"])
def test_authzid_equal_to_the_login_is_allowed(auth: PasswordAuthenticator, authzid: str) -> None:
    assert run(attempt(auth, ALICE, PASSWORD, authzid)).user == ALICE


def failure_cases(users: UserStore) -> dict[str, tuple[bytes, bytes, bytes]]:
    users.add("carol@example.org", make_hasher(CHEAP).hash(PASSWORD))
    users.set_enabled("carol@example.org", False)
    users.add("bob@example.org", make_hasher(CHEAP).hash("bobs password"))
    pw = PASSWORD.encode()
    return {
        "wrong password": (ALICE.encode(), b"wrong", b""),
        "empty password": (ALICE.encode(), b"", b""),
        "password of another user": (ALICE.encode(), b"bobs password", b""),
        "unknown user": (b"nobody@example.org", pw, b""),
        "not an address": (b"alice", pw, b""),
        "empty login": (b"", pw, b""),
        "login not UTF-8": (b"alice\xff@example.org", pw, b""),
        "disabled user, right password": (b"carol@example.org", pw, b""),
        "authzid of another user": (ALICE.encode(), pw, b"bob@example.org"),
        "authzid not UTF-8": (ALICE.encode(), pw, b"\xff"),
    }


def test_every_failure_is_the_same_authfailed(
    auth: PasswordAuthenticator, users: UserStore
) -> None:
    """Which part was wrong is never revealed: same class, same reply line."""
    expected = line(AuthFailed())
    assert expected.startswith("535 5.7.8 ")

    for why, (login, password, authzid) in failure_cases(users).items():
        with pytest.raises(Refusal) as info:
            run(attempt(auth, login, password, authzid))
        assert type(info.value) is AuthFailed, why
        assert render(info.value).line == expected, why


def test_failures_do_not_count_as_logins(auth: PasswordAuthenticator, users: UserStore) -> None:
    before = users.get(ALICE)
    for login, password, authzid in failure_cases(users).values():
        with pytest.raises(AuthFailed):
            run(attempt(auth, login, password, authzid))

    after = users.get(ALICE)
    assert after == before
    assert users.get("carol@example.org").last_login_at is None  # type: ignore[union-attr]


def test_disabled_then_enabled_user_can_log_in_again(
    auth: PasswordAuthenticator, users: UserStore
) -> None:
    users.set_enabled(ALICE, False)
    with pytest.raises(AuthFailed):
        run(attempt(auth, ALICE, PASSWORD))

    users.set_enabled(ALICE, True)
    assert run(attempt(auth, ALICE, PASSWORD)).user == ALICE


def test_an_unusable_store_is_a_temporary_failure(tmp_path: Path) -> None:
    """A broken database must not look like bad credentials (the client would give up)."""
    unmigrated = Database(f"sqlite:///{tmp_path}/empty.db")
    auth = PasswordAuthenticator(UserStore(unmigrated), CHEAP)
    try:
        with pytest.raises(Refusal) as info:
            run(attempt(auth, ALICE, PASSWORD))
    finally:
        auth.close()
        unmigrated.dispose()

    assert not isinstance(info.value, AuthFailed)
    assert (render(info.value).code, render(info.value).status) == (454, "4.7.0")


# --- SASL helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        ("=", b""),
        (" = ", b""),
        (base64.b64encode(b"\x00alice@example.org\x00pw").decode(), b"\x00alice@example.org\x00pw"),
        ("dXNlcg==", b"user"),
        ("  dXNlcg==\r\n", b"user"),
        ("", b""),
    ],
)
def test_decode_sasl(blob: str, expected: bytes) -> None:
    assert decode_sasl(blob) == expected


def test_star_cancels_the_exchange() -> None:
    with pytest.raises(Refusal) as info:
        decode_sasl("*")
    assert (render(info.value).code, render(info.value).status) == (501, "5.7.0")


@pytest.mark.parametrize("blob", ["dXNlcg", "dXN lcg==", "!!!!", "dXNlcg==dXNl", "d", "**"])
def test_invalid_base64_is_501_5_5_2(blob: str) -> None:
    with pytest.raises(Refusal) as info:
        decode_sasl(blob)
    assert (render(info.value).code, render(info.value).status) == (501, "5.5.2")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00alice\x00pw", (b"", b"alice", b"pw")),
        (b"admin\x00alice\x00pw", (b"admin", b"alice", b"pw")),
        (b"\x00alice\x00", (b"", b"alice", b"")),
        (b"\x00\x00", (b"", b"", b"")),
    ],
)
def test_split_plain(payload: bytes, expected: tuple[bytes, bytes, bytes]) -> None:
    assert split_plain(payload) == expected


@pytest.mark.parametrize("payload", [b"", b"alice", b"alice\x00pw", b"\x00alice\x00p\x00w"])
def test_split_plain_needs_exactly_three_parts(payload: bytes) -> None:
    """A NUL inside the password would be ambiguous, so it is malformed, not truncated."""
    with pytest.raises(Refusal) as info:
        split_plain(payload)
    assert (render(info.value).code, render(info.value).status) == (501, "5.5.2")


# --- rehash --------------------------------------------------------------------------------


def test_login_upgrades_a_hash_made_with_old_parameters(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator], users: UserStore
) -> None:
    old_cfg = AuthConfig(argon2_time_cost=2, argon2_memory_kib=8192, argon2_parallelism=1)
    users.add("old@example.org", make_hasher(old_cfg).hash(PASSWORD))
    before = users.get("old@example.org")
    assert before is not None
    assert argon2.extract_parameters(before.password_hash).time_cost == 2

    run(attempt(make_auth(CHEAP), "old@example.org", PASSWORD))

    after = users.get("old@example.org")
    assert after is not None
    assert argon2.extract_parameters(after.password_hash).time_cost == 1
    assert argon2.PasswordHasher().verify(after.password_hash, PASSWORD)
    assert after.last_login_at is not None
    assert after.updated_at == before.updated_at, "a rehash is not an account change"


def test_a_current_hash_is_left_alone(auth: PasswordAuthenticator, users: UserStore) -> None:
    before = users.get(ALICE)
    assert before is not None

    run(attempt(auth, ALICE, PASSWORD))

    after = users.get(ALICE)
    assert after is not None
    assert after.password_hash == before.password_hash
    assert after.last_login_at is not None


def test_a_failed_login_never_rehashes(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator], users: UserStore
) -> None:
    old_cfg = AuthConfig(argon2_time_cost=2, argon2_memory_kib=8192, argon2_parallelism=1)
    users.add("old@example.org", make_hasher(old_cfg).hash(PASSWORD))
    before = users.get("old@example.org")

    with pytest.raises(AuthFailed):
        run(attempt(make_auth(CHEAP), "old@example.org", "wrong"))

    assert users.get("old@example.org") == before


# --- concurrency ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_pool_answers_454_at_once(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator], db: Database
) -> None:
    auth = make_auth(dataclasses.replace(SLOW, workers=1, max_pending=0))
    CredentialStore(db).change_password(ALICE, auth.hasher.hash(PASSWORD), keep=1)

    async def burst() -> list[Identity | BaseException]:
        return await asyncio.gather(
            *(attempt(auth, ALICE, PASSWORD) for _ in range(4)), return_exceptions=True
        )

    results = asyncio.run(burst())

    busy = [r for r in results if isinstance(r, AuthBusy)]
    good = [r for r in results if isinstance(r, Identity)]
    assert len(busy) + len(good) == 4, results
    assert busy and good
    assert all(line(b).startswith("454 4.7.0 ") for b in busy)


def test_capacity_is_workers_plus_max_pending(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator],
) -> None:
    # Without the success cache, so that the second burst is checked like the first.
    auth = make_auth(dataclasses.replace(CHEAP, workers=1, max_pending=2, success_cache_entries=0))

    async def burst() -> list[Identity | BaseException]:
        return await asyncio.gather(
            *(attempt(auth, ALICE, PASSWORD) for _ in range(5)), return_exceptions=True
        )

    results = asyncio.run(burst())

    assert [type(r) for r in results] == [Identity] * 3 + [AuthBusy] * 2
    # Slots are given back after success and failure alike.
    with pytest.raises(AuthFailed):
        run(attempt(auth, ALICE, "wrong"))
    assert [type(r) for r in asyncio.run(burst())] == [Identity] * 3 + [AuthBusy] * 2


@pytest.mark.slow
def test_verification_does_not_block_the_event_loop(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator], db: Database
) -> None:
    auth = make_auth(dataclasses.replace(SLOW, workers=2))
    CredentialStore(db).change_password(ALICE, auth.hasher.hash(PASSWORD), keep=1)

    async def measure() -> tuple[float, float, int]:
        started = time.monotonic()
        await attempt(auth, ALICE, PASSWORD)
        one_verify = time.monotonic() - started

        logins = asyncio.gather(attempt(auth, ALICE, PASSWORD), attempt(auth, ALICE, "wrong"))
        max_gap, ticks = 0.0, 0
        while not logins.done():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            max_gap = max(max_gap, time.monotonic() - before)
            ticks += 1
        results = await asyncio.gather(logins, return_exceptions=True)
        assert isinstance(results[0], BaseException)  # the "wrong" one raised AuthFailed
        return one_verify, max_gap, ticks

    one_verify, max_gap, ticks = asyncio.run(measure())

    assert max_gap < one_verify / 4, (max_gap, one_verify)
    assert ticks >= 5


@pytest.mark.slow
def test_unknown_user_costs_as_much_as_a_wrong_password(
    make_auth: Callable[[AuthConfig], PasswordAuthenticator], db: Database
) -> None:
    """Without the dummy-hash verify an unknown user would answer ~100x faster."""
    cfg = AuthConfig(argon2_time_cost=2, argon2_memory_kib=16384, argon2_parallelism=1)
    auth = make_auth(cfg)
    CredentialStore(db).change_password(ALICE, auth.hasher.hash(PASSWORD), keep=1)

    def timed(login: str) -> float:
        started = time.perf_counter()
        with pytest.raises(AuthFailed):
            run(attempt(auth, login, "wrong password"))
        return time.perf_counter() - started

    timed(ALICE)  # warm-up: first connection, first thread
    unknown, known = [], []
    for _ in range(9):
        unknown.append(timed("nobody@example.org"))
        known.append(timed(ALICE))

    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 <= ratio <= 2, (ratio, unknown, known)
