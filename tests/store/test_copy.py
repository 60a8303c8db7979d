"""Copying every table into a new database, on real SQLite files and PostgreSQL databases.

Rules proven here: every row of every table arrives equal, ids included, on each pair
of backends; PostgreSQL's sequences continue past the copied ids; a target that holds
anything, cannot be reached or is the source itself is refused and left as it was; a
copy that fails half-way leaves the target without a single table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, insert, inspect, select, text, update
from sqlalchemy.engine import make_url

from submitgw.store import Database, MigrationRequired
from submitgw.store.copy import CopyRefused, copy_database, open_target, same_database
from submitgw.store.models import Base
from tests.store.test_migrations import alembic_command

T0 = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$1rJQ4dDp8rG7bS0dWvH+0kP8tIYmFJQ5m3Y9cY0xK2s"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"

# Every table with rows that exercise its columns: gaps in the ids, NULLs, booleans both
# ways, non-ASCII text, microseconds, 64-bit buckets and the longest counter key.
ROWS: dict[str, list[dict[str, Any]]] = {
    "users": [
        {
            "id": 3,
            "email": "alice@example.org",
            "password_hash": HASH,
            "enabled": True,
            "created_at": T0,
            "updated_at": T0 + timedelta(days=1),
            "last_login_at": None,
            "auth_policy": "password",
            "password_changed_at": T0,
            "password_expired": False,
            "credential_generation": 2**62 + 5,
        },
        {
            "id": 9,
            "email": "zoë@bücher.example",
            "password_hash": "",
            "enabled": False,
            "created_at": T0,
            "updated_at": T0,
            "last_login_at": T0 + timedelta(microseconds=1),
            "auth_policy": "certificate",
            "password_changed_at": None,
            "password_expired": True,
            "credential_generation": 0,
        },
    ],
    "certificates": [
        {
            "id": 4,
            "serial": "7f" * 20,
            "user_id": 9,
            "fingerprint_sha256": "ab" * 32,
            "subject": "CN=zoë@bücher.example",
            "not_before": T0,
            "not_after": T0 + timedelta(days=365),
            "issued_at": T0,
            "revoked_at": T0 + timedelta(hours=1),
            "revocation_reason": "keyCompromise",
            "pem": PEM,
        },
        {
            "id": 6,
            "serial": "01",
            "user_id": 9,
            "fingerprint_sha256": "cd" * 32,
            "subject": "CN=zoë@bücher.example",
            "not_before": T0,
            "not_after": T0 + timedelta(days=30),
            "issued_at": T0,
            "revoked_at": None,
            "revocation_reason": None,
            "pem": PEM,
        },
    ],
    "access_rules": [
        {"id": 2, "action": "deny", "rule": "192.0.2.0/24", "comment": "ümlaut", "created_at": T0},
        {"id": 7, "action": "allow", "rule": "2001:db8::/32", "comment": "", "created_at": T0},
    ],
    "user_networks": [{"id": 5, "user_id": 3, "cidr": "198.51.100.0/24"}],
    "rate_counters": [
        {"key": "acct:" + "k" * 395, "bucket": 2**40, "messages": 3, "recipients": 12},
    ],
    "auth_failures": [{"key": "ip:203.0.113.9", "bucket": 477_000, "failures": 4}],
    "auth_lockouts": [
        {
            "key": "acct:alice@example.org",
            "locked_at": T0,
            "locked_until": T0 + timedelta(minutes=15),
            "failures": 10,
        },
    ],
    "user_limits": [
        {"user_id": 3, "messages_per_hour": None, "recipients_per_hour": 0, "updated_at": T0},
    ],
    "password_history": [{"id": 8, "user_id": 3, "password_hash": HASH, "replaced_at": T0}],
    "app_passwords": [
        {
            "id": 11,
            "user_id": 3,
            "label": "phone ☎",
            "selector": "abcd",
            "password_hash": HASH,
            "created_at": T0,
            "last_used_at": None,
        },
    ],
    "account_events": [
        {
            "id": 13,
            "email": "alice@example.org",
            "action": "password-set",
            "actor": "admin:root",
            "source": "cli on host",
            "detail": "",
            "at": T0,
        },
        {
            "id": 14,
            "email": "gone@example.org",
            "action": "deleted",
            "actor": "self",
            "source": "web 198.51.100.7",
            "detail": "détail",
            "at": T0 + timedelta(seconds=1),
        },
    ],
    "sender_bindings": [
        {"id": 15, "user_id": 3, "pattern": "@bücher.example", "created_at": T0},
    ],
    "audit_events": [
        {
            "id": 2**33,
            "at": T0,
            "kind": "auth",
            "session": "0a29d9731723",
            "client": "2001:db8::7",
            "ip": bytes.fromhex("20010db8000000000000000000000007"),
            "username": "zoë@bücher.example",
            "result": "failed",
            "detail": '{"mechanism": "PLAIN"}',
        },
        {
            "id": 2**33 + 5,
            "at": T0,
            "kind": "connection",
            "session": None,
            "client": "not an address",
            "ip": None,
            "username": None,
            "result": "too-many-connections",
            "detail": "{}",
        },
    ],
    "audit_messages": [
        {
            "id": 17,
            "at": T0 + timedelta(microseconds=7),
            "queue_id": "01M8YBHZ0MJFQYDYG2",
            "message_id": "ünï@bücher.example",
            "session": "0a29d9731723",
            "client": "192.0.2.7",
            "ip": bytes(10) + b"\xff\xff\xc0\x00\x02\x07",
            "username": "alice@example.org",
            "mechanism": "EXTERNAL",
            "cert_serial": "7f" * 20,
            "cert_fingerprint": "ab" * 32,
            "app_password": None,
            "sender": "alice@example.org",
            "size": 2**35,
            "recipient_count": 2,
            "smarthost": "10.0.0.25:25",
            "smarthost_queue_id": None,
            "reply": "250 2.0.0 Ok",
        },
    ],
    "audit_recipients": [
        {"message": 17, "position": 0, "address": "bob@example.net", "at": T0},
        {"message": 17, "position": 1, "address": "zoë@bücher.example", "at": T0},
    ],
}


def fill(db: Database) -> None:
    with db.engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if ROWS[table.name]:
                connection.execute(insert(table), ROWS[table.name])


def contents(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    with db.engine.connect() as connection:
        return {
            table.name: [
                tuple(row)
                for row in connection.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in Base.metadata.sorted_tables
        }


def table_names(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database that does not exist yet (SQLite) or has no tables (PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'target.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def target(target_url: str) -> Iterator[Database]:
    database = Database(target_url)
    yield database
    database.dispose()


def test_the_fixture_fills_every_table() -> None:
    """A table added to the models must be added here, or the copy goes untested for it."""
    assert set(ROWS) == {table.name for table in Base.metadata.sorted_tables}
    assert all(ROWS.values())


def test_every_row_arrives_equal_with_its_id(db: Database, target: Database) -> None:
    fill(db)
    before = contents(db)

    copied = copy_database(db, target)

    assert [(c.table, c.rows) for c in copied] == [
        (table.name, len(ROWS[table.name])) for table in Base.metadata.sorted_tables
    ]
    after = contents(target)
    assert after == before
    assert target.current_revision() == target.head_revision()
    assert contents(db) == before, "the source is only read"


def test_strings_arrive_byte_identical_and_timestamps_utc(db: Database, target: Database) -> None:
    fill(db)

    copy_database(db, target)

    with target.engine.connect() as connection:
        users = {t.name: t for t in Base.metadata.sorted_tables}["users"]
        rows = connection.execute(select(users).order_by(users.c.id)).all()
    assert [row.password_hash.encode() for row in rows] == [
        row["password_hash"].encode() for row in ROWS["users"]
    ]
    assert rows[1].email.encode() == "zoë@bücher.example".encode()
    assert rows[0].updated_at == T0 + timedelta(days=1)
    assert rows[0].updated_at.utcoffset() == timedelta(0)
    assert rows[1].last_login_at.microsecond == 123457


def test_an_empty_source_gives_a_migrated_empty_target(db: Database, target: Database) -> None:
    copied = copy_database(db, target)

    assert {c.rows for c in copied} == {0}
    target.check_current()


@pytest.mark.postgres
def test_postgresql_sequences_continue_after_the_copied_ids(db: Database, pg_url: str) -> None:
    fill(db)
    target = Database(pg_url)
    try:
        copy_database(db, target)
        with target.engine.begin() as connection:
            for table in Base.metadata.sorted_tables:
                column = table.autoincrement_column
                if column is None:
                    continue
                highest = max(row[column.name] for row in ROWS[table.name])
                following = connection.scalar(
                    text("SELECT nextval(pg_get_serial_sequence(:t, :c))"),
                    {"t": table.name, "c": column.name},
                )
                assert following == highest + 1, table.name
    finally:
        target.dispose()


# --- refusals ------------------------------------------------------------------------------


def test_a_target_holding_rows_is_refused_and_kept(db: Database, target: Database) -> None:
    fill(db)
    target.upgrade()
    with target.engine.begin() as connection:
        connection.execute(insert(Base.metadata.tables["access_rules"]), ROWS["access_rules"][:1])

    with pytest.raises(CopyRefused, match=r"not empty \(1 row in access_rules\)"):
        copy_database(db, target)

    assert contents(target)["access_rules"] == [tuple(ROWS["access_rules"][0].values())]
    assert not any(rows for name, rows in contents(target).items() if name != "access_rules")


def test_a_migrated_empty_target_is_accepted(db: Database, target: Database) -> None:
    """`submitgw db upgrade` on the new database first is harmless."""
    fill(db)
    target.upgrade()

    copy_database(db, target)

    assert contents(target) == contents(db)


def test_a_target_at_another_revision_is_refused(db: Database, target: Database) -> None:
    target.upgrade()
    alembic_command(target, "downgrade", "0006")

    with pytest.raises(CopyRefused, match="at revision 0006"):
        copy_database(db, target)

    assert target.current_revision() == "0006"


def test_a_target_with_foreign_tables_is_refused(db: Database, target: Database) -> None:
    with target.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")

    with pytest.raises(CopyRefused, match="not a submitgw database"):
        copy_database(db, target)

    assert table_names(target) == {"invoices"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://nobody:secret@127.0.0.1:1/submitgw",
        "sqlite:////nonexistent-folder/submitgw.db",
    ],
)
def test_an_unreachable_target_is_refused_without_its_password(db: Database, url: str) -> None:
    target = Database(url)
    try:
        with pytest.raises(CopyRefused, match="cannot connect to the target database") as refused:
            copy_database(db, target)
    finally:
        target.dispose()
    assert "secret" not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_url_no_driver_takes_is_refused() -> None:
    with pytest.raises(CopyRefused, match="cannot use"):
        open_target("nosuchdialect://x/y")


def test_copying_onto_itself_is_refused(db: Database) -> None:
    fill(db)
    url = db.engine.url
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        alias = Path(url.database)
        same = Database(f"sqlite:///{alias.parent}/../{alias.parent.name}/{alias.name}")
    else:
        same = Database(url.set(host="localhost").render_as_string(hide_password=False))
    try:
        with pytest.raises(CopyRefused, match="is the configured database itself"):
            copy_database(db, same)
    finally:
        same.dispose()
    assert contents(db)["users"] == [tuple(row.values()) for row in ROWS["users"]]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("postgresql+psycopg://u@127.0.0.1/gw", "postgresql://v:pw@localhost:5432/gw", True),
        ("postgresql+psycopg://u@127.0.0.1/gw", "postgresql+psycopg://u@127.0.0.1/gw2", False),
        ("postgresql+psycopg://u@127.0.0.1/gw", "postgresql+psycopg://u@127.0.0.1:5433/gw", False),
        ("postgresql+psycopg://u@db1/gw", "postgresql+psycopg://u@db2/gw", False),
        ("sqlite:////srv/gw/submitgw.db", "sqlite:////srv/gw/../gw/submitgw.db", True),
        ("sqlite:////srv/gw/submitgw.db", "sqlite:////srv/gw/copy.db", False),
        ("sqlite:////srv/gw/submitgw.db", "postgresql+psycopg://u@127.0.0.1/gw", False),
        ("sqlite://", "sqlite://", False),
    ],
)
def test_same_database(a: str, b: str, same: bool) -> None:
    assert same_database(make_url(a), make_url(b)) is same


def test_a_source_behind_is_refused(tmp_path: Path, target: Database) -> None:
    source = Database(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    try:
        with pytest.raises(MigrationRequired):
            copy_database(source, target)
    finally:
        source.dispose()
    assert table_names(target) == set()


# --- a failure half-way --------------------------------------------------------------------


@pytest.mark.postgres
def test_a_failure_half_way_leaves_the_target_without_tables(
    tmp_path: Path, sqlite_template: Path, pg_url: str
) -> None:
    """SQLite keeps a string longer than its column; PostgreSQL refuses it on the last table."""
    path = tmp_path / "source.db"
    path.write_bytes(sqlite_template.read_bytes())
    source, target = Database(f"sqlite:///{path}"), Database(pg_url)
    try:
        fill(source)
        networks: Table = Base.metadata.tables["user_networks"]
        assert Base.metadata.sorted_tables[-1] is networks, "the failure should come last"
        with source.engine.begin() as connection:
            connection.execute(update(networks).values(cidr="1" * 51))

        with pytest.raises(CopyRefused, match="while copying user_networks and was undone"):
            copy_database(source, target)

        assert table_names(target) == set()
    finally:
        source.dispose()
        target.dispose()
