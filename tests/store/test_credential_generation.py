"""`users.credential_generation`: moved on by every change to how a user may log in.

Gateways remember recent successful logins and trust one only while the user's row
still carries the generation it was verified under (`services.logincache`), so every
store change that could turn a remembered login into a refused one must move it on,
in its own transaction. Against a SQLite file and a PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from submitgw.store import CredentialStore, Database, UserNetworkStore, UserStore

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
def users(db: Database) -> UserStore:
    store = UserStore(db)
    store.add(ALICE, "hash")
    store.add(BOB, "hash")
    return store


def generation(users: UserStore, email: str = ALICE) -> int:
    record = users.get(email)
    assert record is not None
    return record.credential_generation


def add_app_password(db: Database) -> None:
    CredentialStore(db).add_app_password(ALICE, "phone", "abcd", "hash")


def revoke_app_password(db: Database) -> None:
    credentials = CredentialStore(db)
    credentials.add_app_password(ALICE, "phone", "abcd", "hash")
    (app,) = credentials.app_passwords(ALICE)
    before = generation(UserStore(db))
    credentials.revoke_app_password(ALICE, app.id)
    assert generation(UserStore(db)) == before + 1


CHANGES: dict[str, Callable[[Database], None]] = {
    "password changed": lambda db: CredentialStore(db).change_password(ALICE, "new", keep=5),
    "password expired": lambda db: CredentialStore(db).expire_password(ALICE),
    "app password added": add_app_password,
    "app password revoked": revoke_app_password,
    "disabled": lambda db: UserStore(db).set_enabled(ALICE, False),
    "enabled": lambda db: UserStore(db).set_enabled(ALICE, True),
    "policy set": lambda db: UserStore(db).set_auth_policy(ALICE, "certificate"),
    "networks set": lambda db: UserNetworkStore(db).set(ALICE, ["192.0.2.0/24"]),
    "networks cleared": lambda db: UserNetworkStore(db).set(ALICE, []),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_every_credential_change_moves_the_generation_on(
    db: Database, users: UserStore, change: Callable[[Database], None]
) -> None:
    before, bobs = generation(users), generation(users, BOB)

    change(db)

    assert generation(users) > before
    assert generation(users, BOB) == bobs, "only the changed user's"


def test_a_login_is_not_a_change_even_with_a_rehash(users: UserStore) -> None:
    before = generation(users)

    users.record_login(ALICE)
    users.record_login(ALICE, "a hash with new parameters")

    assert generation(users) == before


def test_a_refused_change_leaves_the_generation(db: Database, users: UserStore) -> None:
    credentials = CredentialStore(db)
    credentials.add_app_password(ALICE, "phone", "abcd", "hash")
    before = generation(users)

    with pytest.raises(ValueError, match="selector"):
        credentials.add_app_password(ALICE, "tablet", "abcd", "hash")

    assert generation(users) == before


def test_a_user_added_again_does_not_take_up_the_old_generation(users: UserStore) -> None:
    """SQLite may even give the new row the old id: the generation must still differ."""
    users.delete(BOB)
    old = users.get(ALICE)
    assert old is not None
    users.delete(ALICE)

    again = users.add(ALICE, "hash")

    assert (again.id, again.credential_generation) != (old.id, old.credential_generation)
    assert generation(users) == again.credential_generation
