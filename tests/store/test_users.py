"""UserStore against real databases: a SQLite file and a throwaway PostgreSQL database."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from submitgw.store import (
    CredentialStore,
    Database,
    UserExists,
    UserNotFound,
    UserRecord,
    UserStore,
)
from submitgw.store.models import User
from submitgw.types import DEFAULT_AUTH_POLICY


@pytest.fixture
def store(db: Database) -> UserStore:
    return UserStore(db)


def assert_utc(record: UserRecord) -> None:
    for stamp in (record.created_at, record.updated_at, record.last_login_at):
        if stamp is not None:
            assert stamp.utcoffset() == timedelta(0)


def test_add_lowercases_and_fills_defaults(store: UserStore) -> None:
    record = store.add("Alice@Example.ORG", "hash-1")

    assert record.email == "alice@example.org"
    assert record.password_hash == "hash-1"
    assert record.enabled is True
    assert record.last_login_at is None
    assert record.created_at == record.updated_at
    assert_utc(record)
    assert store.get("alice@example.org") == record


def test_add_twice_in_other_case_raises_user_exists(store: UserStore) -> None:
    store.add("bob@example.org", "hash-1")

    with pytest.raises(UserExists, match=r"^user bob@example\.org already exists$"):
        store.add("BOB@example.org", "hash-2")
    assert [(user.email, user.password_hash) for user in store.list()] == [
        ("bob@example.org", "hash-1")
    ]


def test_get_ignores_case_and_returns_none_when_missing(store: UserStore) -> None:
    added = store.add("carol@example.org", "hash")

    assert store.get("CAROL@Example.Org") == added
    assert store.get("nobody@example.org") is None


def test_a_new_password_replaces_the_hash_and_bumps_updated_at(
    store: UserStore, db: Database
) -> None:
    before = store.add("dave@example.org", "old")

    CredentialStore(db).change_password("Dave@example.org", "new", keep=5)

    after = store.get("dave@example.org")
    assert after is not None
    assert after.password_hash == "new"
    assert after.created_at == before.created_at
    assert after.updated_at > before.updated_at
    assert after.password_changed_at == after.updated_at
    assert after.last_login_at is None


def test_set_enabled_toggles(store: UserStore) -> None:
    store.add("erin@example.org", "hash")

    store.set_enabled("ERIN@example.org", False)
    disabled = store.get("erin@example.org")
    store.set_enabled("erin@example.org", True)
    enabled = store.get("erin@example.org")

    assert disabled is not None and disabled.enabled is False
    assert enabled is not None and enabled.enabled is True
    assert enabled.updated_at > disabled.updated_at


def test_delete_removes_user_and_frees_address(store: UserStore) -> None:
    store.add("frank@example.org", "hash")
    store.add("grace@example.org", "hash")

    store.delete("Frank@Example.org")

    assert store.get("frank@example.org") is None
    assert [user.email for user in store.list()] == ["grace@example.org"]
    assert store.add("frank@example.org", "again").password_hash == "again"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s.set_enabled("ghost@example.org", False), id="set_enabled"),
        pytest.param(lambda s: s.record_login("ghost@example.org"), id="record_login"),
        pytest.param(lambda s: s.record_login("ghost@example.org", "h"), id="record_login_rehash"),
        pytest.param(lambda s: s.delete("Ghost@example.org"), id="delete"),
    ],
)
def test_changing_missing_user_raises_user_not_found(
    store: UserStore, change: Callable[[UserStore], None]
) -> None:
    store.add("someone@example.org", "hash")

    with pytest.raises(UserNotFound, match=r"^no user ghost@example\.org$"):
        change(store)
    assert [user.email for user in store.list()] == ["someone@example.org"]


def test_record_login_without_rehash_only_sets_last_login(store: UserStore) -> None:
    before = store.add("heidi@example.org", "hash")

    store.record_login("HEIDI@example.org")

    after = store.get("heidi@example.org")
    assert after is not None
    assert after.last_login_at is not None
    assert after.last_login_at >= before.created_at
    assert after.password_hash == "hash"
    assert after.updated_at == before.updated_at
    assert_utc(after)


def test_record_login_with_rehash_replaces_hash_but_not_updated_at(store: UserStore) -> None:
    before = store.add("ivan@example.org", "argon2-old-params")

    store.record_login("ivan@example.org", "argon2-new-params")

    after = store.get("ivan@example.org")
    assert after is not None
    assert after.password_hash == "argon2-new-params"
    assert after.last_login_at is not None
    assert after.updated_at == before.updated_at


def test_list_is_sorted_by_email_the_same_on_every_backend(store: UserStore) -> None:
    assert store.list() == []
    # Punctuation and case trip up locale collations; the order must be by code point.
    for email in ["b@example.org", "a.c@example.org", "ab@example.org", "A-z@example.org"]:
        store.add(email, "hash")

    emails = [user.email for user in store.list()]

    assert emails == ["a-z@example.org", "a.c@example.org", "ab@example.org", "b@example.org"]


def test_session_rolls_back_when_the_block_fails(db: Database, store: UserStore) -> None:
    with pytest.raises(RuntimeError, match="abort"), db.session() as session:
        session.add(User(email="leo@example.org", password_hash="hash"))
        session.flush()
        raise RuntimeError("abort")

    assert store.get("leo@example.org") is None


def test_record_repr_hides_password_hash(store: UserStore) -> None:
    record = store.add("judy@example.org", "secret-hash-value")

    assert "secret-hash-value" not in repr(record)
    assert "judy@example.org" in repr(record)


def test_concurrent_logins_from_worker_threads(store: UserStore) -> None:
    emails = [f"user{n}@example.org" for n in range(8)]
    for email in emails:
        store.add(email, "hash")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda email: store.record_login(email, f"new-{email}"), emails * 5))

    for record in store.list():
        assert record.last_login_at is not None
        assert record.password_hash == f"new-{record.email}"


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    try:
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        db.dispose()
    # WAL is a property of the file: a plain connection, without our pragmas, sees it too.
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_postgresql_timestamps_are_utc_whatever_the_session_zone(pg_url: str) -> None:
    url = make_url(pg_url).update_query_dict({"options": "-c TimeZone=Asia/Tokyo"})
    db = Database(url.render_as_string(hide_password=False))
    db.upgrade()
    try:
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW TimeZone").scalar() == "Asia/Tokyo"
        store = UserStore(db)
        added = store.add("kim@example.org", "hash")
        store.record_login("kim@example.org")
        fetched = store.get("kim@example.org")
    finally:
        db.dispose()

    assert fetched is not None
    assert fetched.created_at == added.created_at
    assert fetched.created_at.tzinfo is UTC
    assert fetched.last_login_at is not None and fetched.last_login_at.tzinfo is UTC


def test_the_tables_default_policy_is_the_gateways() -> None:
    """models.py imports nothing of the project, so it spells the default out itself."""
    column = User.__table__.c.auth_policy
    assert column.default is not None and column.server_default is not None
    assert column.default.arg == DEFAULT_AUTH_POLICY
    assert column.server_default.arg == DEFAULT_AUTH_POLICY
