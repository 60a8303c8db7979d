"""The Alembic history: it builds the schema the models describe, on every backend."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, inspect
from sqlalchemy.exc import IntegrityError

import migrations
from submitgw.store import Database, MigrationRequired, UserStore
from submitgw.store.models import Base

MIGRATIONS_DIR = Path(migrations.__file__).parent
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def alembic_command(db: Database, name: str, revision: str) -> None:
    """Run an Alembic command (downgrade, stamp) the way `Database.upgrade` runs upgrades."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, name)(config, revision)


def table_names(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names())


def test_upgrade_on_empty_database_reaches_head(db: Database) -> None:
    assert db.current_revision() is None

    db.upgrade()

    assert db.head_revision() == "0009"
    assert db.current_revision() == "0009"
    assert {"users", "certificates"} <= table_names(db)
    db.check_current()


def test_upgrade_at_head_changes_nothing(db: Database) -> None:
    db.upgrade()
    db.upgrade()

    assert db.current_revision() == db.head_revision()


def test_schema_changes_roll_back_with_their_transaction(db: Database) -> None:
    """Migrations are all-or-nothing only if DDL is transactional, SQLite included."""
    with pytest.raises(RuntimeError, match="abort"), db.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE scratch (x INTEGER)")
        raise RuntimeError("abort")

    assert "scratch" not in table_names(db)


def test_models_and_migrations_agree(db: Database) -> None:
    db.upgrade()

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)

    assert diff == []


def test_model_drift_would_be_detected(db: Database) -> None:
    """Guards the test above against passing vacuously."""
    db.upgrade()
    drifted = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["users"].append_column(Column("nickname", String(40)))

    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), drifted)

    assert [(change[0], change[3].name) for change in diff] == [("add_column", "nickname")]


def test_constraints_get_deterministic_names(db: Database) -> None:
    db.upgrade()
    inspector = inspect(db.engine)

    assert inspector.get_pk_constraint("users")["name"] == "pk_users"
    unique_names = {c["name"] for c in inspector.get_unique_constraints("users")}
    assert unique_names == {"uq_users_email"}
    assert [c["name"] for c in inspector.get_check_constraints("users")] == ["ck_users_auth_policy"]
    assert inspector.get_pk_constraint("certificates")["name"] == "pk_certificates"
    assert {c["name"] for c in inspector.get_unique_constraints("certificates")} == {
        "uq_certificates_serial",
        "uq_certificates_fingerprint_sha256",
    }
    assert [fk["name"] for fk in inspector.get_foreign_keys("certificates")] == [
        "fk_certificates_user_id_users"
    ]
    indexes = inspector.get_indexes("certificates")
    # PostgreSQL also lists the indexes behind unique constraints.
    assert [ix["name"] for ix in indexes if not ix.get("duplicates_constraint")] == [
        "ix_certificates_user_id"
    ]


def test_check_current_on_empty_database_says_not_initialised(db: Database) -> None:
    with pytest.raises(MigrationRequired) as raised:
        db.check_current()

    message = str(raised.value)
    assert "not initialised" in message
    assert "run 'submitgw db upgrade'" in message
    assert "\n" not in message


def test_downgrade_to_base_then_check_current_asks_for_upgrade(db: Database) -> None:
    db.upgrade()

    alembic_command(db, "downgrade", "base")

    assert db.current_revision() is None
    assert "users" not in table_names(db)
    with pytest.raises(MigrationRequired, match=r"run 'submitgw db upgrade'$"):
        db.check_current()
    db.upgrade()
    db.check_current()


def test_stamp_absent_revision_is_reported_without_suggesting_upgrade(db: Database) -> None:
    db.upgrade()
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")

    with pytest.raises(MigrationRequired) as raised:
        db.check_current()

    message = str(raised.value)
    assert message.startswith("database is at revision 9999")
    assert "needs 0009" in message
    assert "db upgrade" not in message


def test_revision_template_renders_formatted_python(tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    config = Config()
    config.set_main_option("script_location", str(scripts))

    command.revision(config, message="add widgets", rev_id="0010")

    (rendered,) = (scripts / "versions").glob("0010_*.py")
    text = rendered.read_text()
    assert 'revision = "0010"' in text
    assert 'down_revision = "0009"' in text
    compile(text, str(rendered), "exec")
    # Imports stay unused until the author writes the upgrade, so F401 is expected here.
    config_file = str(PROJECT_ROOT / "pyproject.toml")
    for args in (["format", "--check"], ["check", "--ignore", "F401"]):
        ruff = [sys.executable, "-m", "ruff", *args, "--config", config_file, str(rendered)]
        result = subprocess.run(ruff, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_upgrade_from_0001_keeps_users_and_gives_them_password_logins(db: Database) -> None:
    """A gateway upgraded in place: nobody's login may change or break."""
    alembic_command(db, "upgrade", "0001")
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO users (email, password_hash, enabled, created_at, updated_at) "
            "VALUES ('old@example.org', 'argon2-hash', true, "
            "'2026-01-02 03:04:05+00:00', '2026-01-02 03:04:05+00:00')"
        )

    db.upgrade()

    assert db.current_revision() == db.head_revision()
    record = UserStore(db).get("old@example.org")
    assert record is not None
    assert (record.password_hash, record.enabled, record.auth_policy) == (
        "argon2-hash",
        True,
        "password",
    )
    assert record.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    # 0006: the password counts as set when the account last changed, and is not expired.
    assert record.password_changed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert record.password_expired is False


def test_downgrade_to_0001_keeps_users(db: Database) -> None:
    db.upgrade()
    UserStore(db).add("keep@example.org", "hash", auth_policy="certificate")

    alembic_command(db, "downgrade", "0001")

    assert "certificates" not in table_names(db)
    assert "auth_policy" not in {c["name"] for c in inspect(db.engine).get_columns("users")}
    with db.engine.connect() as connection:
        emails = connection.exec_driver_sql("SELECT email FROM users").scalars().all()
    assert emails == ["keep@example.org"]


def test_auth_policy_check_constraint_rejects_unknown_values(db: Database) -> None:
    """The database itself refuses a policy the gateway would not understand."""
    db.upgrade()
    UserStore(db).add("c@example.org", "hash")

    with pytest.raises(IntegrityError), db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET auth_policy = 'passwrd'")


# --- 0007: the password-or-certificate policy ----------------------------------------------

STAMP = "'2026-01-02 03:04:05+00:00'"
OLD_POLICIES = {
    "pw@example.org": "password",
    "cert@example.org": "certificate",
    "both@example.org": "password+certificate",
}
# One row in every table that references users at 0006: a SQLite rebuild of `users`
# would cascade-delete them unless the migration keeps them.
USER_ROWS = {
    "certificates": "(serial, user_id, fingerprint_sha256, subject, not_before, not_after, "
    f"issued_at, pem) VALUES ('0A', {{id}}, '{'f' * 64}', 'CN=x', {STAMP}, {STAMP}, {STAMP}, "
    "'pem')",
    "user_networks": "(user_id, cidr) VALUES ({id}, '192.0.2.0/24')",
    "sender_bindings": f"(user_id, pattern, created_at) VALUES ({{id}}, '@example.net', {STAMP})",
    "user_limits": f"(user_id, messages_per_hour, updated_at) VALUES ({{id}}, 7, {STAMP})",
    "password_history": f"(user_id, password_hash, replaced_at) VALUES ({{id}}, 'old', {STAMP})",
    "app_passwords": "(user_id, label, selector, password_hash, created_at) "
    f"VALUES ({{id}}, 'phone', 'abcd', 'hash', {STAMP})",
}


def policies(db: Database) -> dict[str, str]:
    with db.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT email, auth_policy FROM users").all()
    return {email: policy for email, policy in rows}


def user_rows(db: Database) -> dict[str, int]:
    with db.engine.connect() as connection:
        return {
            table: connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            for table in USER_ROWS
        }


def users_at_0006(db: Database, users: dict[str, str]) -> None:
    """Users as 0006 stored them, in raw SQL so that later model changes cannot break it."""
    alembic_command(db, "upgrade", "0006")
    with db.engine.begin() as connection:
        for email, policy in users.items():
            connection.exec_driver_sql(
                "INSERT INTO users (email, password_hash, enabled, created_at, updated_at, "
                f"auth_policy) VALUES ('{email}', 'hash', true, {STAMP}, {STAMP}, '{policy}')"
            )
        first = connection.exec_driver_sql("SELECT min(id) FROM users").scalar_one()
        for table, values in USER_ROWS.items():
            connection.exec_driver_sql(f"INSERT INTO {table} {values.format(id=first)}")


def test_0007_keeps_every_users_policy_and_rows(db: Database) -> None:
    """An upgrade must not widen anyone's access: old users keep the policy they had."""
    users_at_0006(db, OLD_POLICIES)

    alembic_command(db, "upgrade", "0007")

    assert policies(db) == OLD_POLICIES
    assert user_rows(db) == dict.fromkeys(USER_ROWS, 1)


def test_0007_new_users_get_password_or_certificate(db: Database) -> None:
    users_at_0006(db, OLD_POLICIES)
    alembic_command(db, "upgrade", "0007")

    # The column's own default, as a row written without the ORM gets it.
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO users (email, password_hash, enabled, created_at, updated_at) "
            f"VALUES ('raw@example.org', 'hash', true, {STAMP}, {STAMP})"
        )
    db.upgrade()  # the models are those of the head revision
    store = UserStore(db)
    store.add("new@example.org", "hash")

    assert policies(db) == {
        **OLD_POLICIES,
        "raw@example.org": "password-or-certificate",
        "new@example.org": "password-or-certificate",
    }
    # The constraint, rebuilt, still refuses what the gateway would not understand.
    with pytest.raises(IntegrityError), db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET auth_policy = 'password or certificate'")


def test_0007_downgrade_makes_password_or_certificate_users_password_users(db: Database) -> None:
    users_at_0006(db, OLD_POLICIES)
    db.upgrade()  # the models are those of the head revision
    UserStore(db).add("new@example.org", "hash")

    alembic_command(db, "downgrade", "0006")

    assert db.current_revision() == "0006"
    assert policies(db) == {**OLD_POLICIES, "new@example.org": "password"}
    assert user_rows(db) == dict.fromkeys(USER_ROWS, 1)
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO users (email, password_hash, enabled, created_at, updated_at) "
            f"VALUES ('raw@example.org', 'hash', true, {STAMP}, {STAMP})"
        )
    assert policies(db)["raw@example.org"] == "password"
    with pytest.raises(IntegrityError), db.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE users SET auth_policy = 'password-or-certificate' "
            "WHERE email = 'raw@example.org'"
        )


# --- 0008: the credential generation --------------------------------------------------------


def test_0008_gives_existing_users_a_generation_and_keeps_their_rows(db: Database) -> None:
    users_at_0006(db, OLD_POLICIES)
    alembic_command(db, "upgrade", "0007")

    alembic_command(db, "upgrade", "0008")

    records = UserStore(db).list()
    assert {r.email: r.credential_generation for r in records} == dict.fromkeys(OLD_POLICIES, 0)
    assert policies(db) == OLD_POLICIES
    assert user_rows(db) == dict.fromkeys(USER_ROWS, 1)


def test_0008_downgrade_drops_the_column_and_keeps_every_row(db: Database) -> None:
    users_at_0006(db, OLD_POLICIES)
    db.upgrade()
    UserStore(db).set_enabled("pw@example.org", False)

    alembic_command(db, "downgrade", "0007")

    columns = {c["name"] for c in inspect(db.engine).get_columns("users")}
    assert "credential_generation" not in columns
    assert policies(db) == OLD_POLICIES
    assert user_rows(db) == dict.fromkeys(USER_ROWS, 1)
