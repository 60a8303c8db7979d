"""Password history, app passwords and the account trail on real SQLite and PostgreSQL.

Rules proven here: the history keeps exactly the configured number of
passwords, newest first, current one included; an app password belongs to one
user, is found only by that user's selector, and is gone once revoked or with
its user; the trail is newest first, keyed by address, and outlives the user.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from submitgw.store import (
    AppPasswordNotFound,
    CredentialStore,
    Database,
    UserNotFound,
    UserRecord,
    UserStore,
)

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
def users(db: Database) -> UserStore:
    store = UserStore(db)
    store.add(ALICE, "hash-0")
    store.add(BOB, "bob-hash")
    return store


@pytest.fixture
def creds(db: Database, users: UserStore) -> CredentialStore:
    return CredentialStore(db)


def rows(db: Database, table: str) -> int:
    with db.engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def user(users: UserStore, email: str) -> UserRecord:
    record = users.get(email)
    assert record is not None
    return record


def recent_enough(moment: datetime | None) -> bool:
    assert moment is not None
    assert moment.tzinfo is not None
    return abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


# --- password history ----------------------------------------------------------------------


def test_recent_hashes_are_the_current_one_then_older_newest_first(
    creds: CredentialStore,
) -> None:
    for n in range(1, 4):
        creds.change_password(ALICE, f"hash-{n}", keep=5)

    assert creds.recent_hashes(ALICE, 5) == ["hash-3", "hash-2", "hash-1", "hash-0"]
    assert creds.recent_hashes("Alice@Example.ORG", 2) == ["hash-3", "hash-2"]
    assert creds.recent_hashes(ALICE, 1) == ["hash-3"]
    assert creds.recent_hashes(BOB, 5) == ["bob-hash"], "histories are per user"


def test_history_is_trimmed_to_keep_minus_the_current_one(
    db: Database, creds: CredentialStore
) -> None:
    for n in range(1, 8):
        creds.change_password(ALICE, f"hash-{n}", keep=3)
    creds.change_password(BOB, "bob-hash-2", keep=3)

    assert creds.recent_hashes(ALICE, 10) == ["hash-7", "hash-6", "hash-5"]
    assert rows(db, "password_history") == 2 + 1


def test_change_password_sets_the_date_and_clears_a_forced_expiry(
    users: UserStore, creds: CredentialStore
) -> None:
    creds.expire_password(ALICE)
    assert user(users, ALICE).password_expired

    creds.change_password(ALICE, "hash-1", keep=5)

    record = user(users, ALICE)
    assert record.password_hash == "hash-1"
    assert not record.password_expired
    assert recent_enough(record.password_changed_at)


def test_expire_password_touches_only_that_user(users: UserStore, creds: CredentialStore) -> None:
    creds.expire_password("ALICE@example.org")

    assert user(users, ALICE).password_expired
    assert not user(users, BOB).password_expired
    assert user(users, ALICE).password_hash == "hash-0", "the password itself stays"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.recent_hashes("ghost@example.org", 5), id="recent_hashes"),
        pytest.param(lambda c: c.change_password("ghost@example.org", "h", keep=5), id="change"),
        pytest.param(lambda c: c.expire_password("ghost@example.org"), id="expire"),
        pytest.param(lambda c: c.add_app_password("ghost@example.org", "x", "abcd", "h"), id="add"),
        pytest.param(lambda c: c.app_passwords("ghost@example.org"), id="list"),
        pytest.param(lambda c: c.revoke_app_password("ghost@example.org", 1), id="revoke"),
    ],
)
def test_unknown_users_raise_user_not_found(
    creds: CredentialStore, call: Callable[[CredentialStore], Any]
) -> None:
    with pytest.raises(UserNotFound):
        call(creds)


# --- app passwords -------------------------------------------------------------------------


def test_app_passwords_are_added_listed_oldest_first_and_per_user(
    creds: CredentialStore,
) -> None:
    laptop = creds.add_app_password(ALICE, "Thunderbird laptop", "abcd", "hash-laptop")
    phone = creds.add_app_password("ALICE@example.org", "Phone", "efgh", "hash-phone")
    creds.add_app_password(BOB, "Bob's phone", "ijkm", "hash-bob")

    assert laptop.label == "Thunderbird laptop"
    assert laptop.last_used_at is None
    assert recent_enough(laptop.created_at)
    assert laptop.id != phone.id
    assert [(r.id, r.label) for r in creds.app_passwords(ALICE)] == [
        (laptop.id, "Thunderbird laptop"),
        (phone.id, "Phone"),
    ]
    assert [r.label for r in creds.app_passwords(BOB)] == ["Bob's phone"]


def test_find_by_selector_sees_only_the_users_own(creds: CredentialStore) -> None:
    laptop = creds.add_app_password(ALICE, "laptop", "abcd", "hash-laptop")
    creds.add_app_password(BOB, "bob", "wxyz", "hash-bob")

    found = creds.find_app_password("Alice@example.org", "abcd")

    assert found is not None
    assert (found.id, found.label, found.password_hash) == (laptop.id, "laptop", "hash-laptop")
    assert "hash-laptop" not in repr(found), "hashes stay out of reprs and logs"
    assert creds.find_app_password(ALICE, "wxyz") is None, "bob's selector is not alice's"
    assert creds.find_app_password(BOB, "abcd") is None
    assert creds.find_app_password("ghost@example.org", "abcd") is None


def test_a_selector_is_unique_per_user_only(creds: CredentialStore) -> None:
    creds.add_app_password(ALICE, "one", "abcd", "h1")

    with pytest.raises(ValueError, match="selector"):
        creds.add_app_password(ALICE, "two", "abcd", "h2")
    creds.add_app_password(BOB, "bob's", "abcd", "h3")

    assert [r.label for r in creds.app_passwords(ALICE)] == ["one"]
    found = creds.find_app_password(BOB, "abcd")
    assert found is not None
    assert found.password_hash == "h3"


def test_last_use_is_recorded_per_app_password(creds: CredentialStore) -> None:
    laptop = creds.add_app_password(ALICE, "laptop", "abcd", "h1")
    creds.add_app_password(ALICE, "phone", "efgh", "h2")

    creds.app_password_used(laptop.id)

    used = {r.label: r.last_used_at for r in creds.app_passwords(ALICE)}
    assert recent_enough(used["laptop"])
    assert used["phone"] is None


def test_revoke_removes_it_and_returns_its_label(creds: CredentialStore) -> None:
    laptop = creds.add_app_password(ALICE, "laptop", "abcd", "h1")
    phone = creds.add_app_password(ALICE, "phone", "efgh", "h2")

    assert creds.revoke_app_password("Alice@example.org", laptop.id) == "laptop"

    assert [r.id for r in creds.app_passwords(ALICE)] == [phone.id]
    assert creds.find_app_password(ALICE, "abcd") is None
    with pytest.raises(AppPasswordNotFound) as info:
        creds.revoke_app_password(ALICE, laptop.id)
    assert str(info.value) == f"alice@example.org has no app password {laptop.id}"


def test_nobody_revokes_another_users_app_password(creds: CredentialStore) -> None:
    bobs = creds.add_app_password(BOB, "bob's phone", "abcd", "h")

    with pytest.raises(AppPasswordNotFound):
        creds.revoke_app_password(ALICE, bobs.id)

    assert [r.id for r in creds.app_passwords(BOB)] == [bobs.id]


def test_deleting_a_user_deletes_their_history_and_app_passwords(
    db: Database, users: UserStore, creds: CredentialStore
) -> None:
    creds.change_password(ALICE, "hash-1", keep=5)
    creds.add_app_password(ALICE, "laptop", "abcd", "h1")
    creds.change_password(BOB, "bob-hash-2", keep=5)
    creds.add_app_password(BOB, "bob's", "abcd", "h2")
    assert (rows(db, "password_history"), rows(db, "app_passwords")) == (2, 2)

    users.delete(ALICE)

    assert (rows(db, "password_history"), rows(db, "app_passwords")) == (1, 1)
    assert creds.find_app_password(ALICE, "abcd") is None
    assert creds.find_app_password(BOB, "abcd") is not None
    users.add(ALICE, "fresh-hash")
    assert creds.recent_hashes(ALICE, 5) == ["fresh-hash"], "a new account starts clean"
    assert creds.app_passwords(ALICE) == []


# --- the account trail ---------------------------------------------------------------------


def test_events_are_newest_first_limited_and_per_address(creds: CredentialStore) -> None:
    for n in range(5):
        creds.record(ALICE, f"action-{n}", "admin:root", "cli on gw1", f"detail {n}")
    creds.record(BOB, "user-added", "admin:root", "cli on gw1")

    events = creds.events("Alice@Example.org")

    assert [e.action for e in events] == [f"action-{n}" for n in range(4, -1, -1)]
    assert [e.action for e in creds.events(ALICE, limit=2)] == ["action-4", "action-3"]
    newest = events[0]
    assert (newest.email, newest.actor, newest.source, newest.detail) == (
        ALICE,
        "admin:root",
        "cli on gw1",
        "detail 4",
    )
    assert recent_enough(newest.at)
    assert [e.action for e in creds.events(BOB)] == ["user-added"]
    assert creds.events(BOB)[0].detail == ""


def test_overlong_trail_fields_are_cut_not_refused(creds: CredentialStore) -> None:
    """A change must not fail because its description is long."""
    creds.record(ALICE, "app-password-added", "a" * 500, "s" * 500, "d" * 1000)

    (event,) = creds.events(ALICE)

    assert (len(event.actor), len(event.source), len(event.detail)) == (320, 200, 400)


def test_the_trail_outlives_the_user(users: UserStore, creds: CredentialStore) -> None:
    creds.record(ALICE, "user-added", "admin:root", "cli on gw1")
    users.delete(ALICE)
    creds.record(ALICE, "user-deleted", "admin:root", "cli on gw1")

    assert [e.action for e in creds.events(ALICE)] == ["user-deleted", "user-added"]


def test_events_of_an_address_never_seen_are_empty(creds: CredentialStore) -> None:
    assert creds.events("ghost@example.org") == []
