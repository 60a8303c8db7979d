"""Sender bindings against real SQLite and PostgreSQL databases, and their migration.

Rules proven here: a binding belongs to an existing user, is stored in its
comparison form so that spellings of one binding cannot be added twice, and goes
with its user; migration 0003 adds the table without touching users or certificates.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

import migrations
import pki
from submitgw.rules.binding import normalise_pattern
from submitgw.store import (
    CertificateStore,
    Database,
    SenderExists,
    SenderNotFound,
    SenderStore,
    UserNotFound,
    UserStore,
)

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
def senders(db: Database) -> SenderStore:
    users = UserStore(db)
    for email in (ALICE, BOB):
        users.add(email, "hash")
    return SenderStore(db)


def binding_rows(db: Database) -> int:
    with db.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT count(*) FROM sender_bindings").scalar_one()


def test_a_new_user_may_send_as_their_own_address_only(senders: SenderStore) -> None:
    assert senders.list(ALICE) == []
    assert senders.allowed(ALICE) == [ALICE]


def test_bindings_are_stored_lower_case_and_listed_domains_first(senders: SenderStore) -> None:
    assert senders.add(ALICE, normalise_pattern("Sales@Example.NET")) == "sales@example.net"
    assert senders.add(ALICE, normalise_pattern("@Example.COM")) == "@example.com"
    assert senders.add(ALICE, normalise_pattern("  @BÜCHER.example ")) == "@bücher.example"

    assert senders.list(ALICE) == ["@bücher.example", "@example.com", "sales@example.net"]
    assert senders.allowed(ALICE) == [ALICE, "@bücher.example", "@example.com", "sales@example.net"]
    assert senders.allowed("ALICE@example.org")[0] == ALICE
    assert senders.list(BOB) == [], "bindings are per user"


@pytest.mark.parametrize(
    "spelling", ["sales@example.net", "SALES@EXAMPLE.NET", "Sales@example.Net"]
)
def test_one_binding_cannot_be_added_twice_in_another_case(
    senders: SenderStore, spelling: str
) -> None:
    senders.add(ALICE, normalise_pattern("Sales@Example.net"))

    with pytest.raises(SenderExists, match=r"^sales@example\.net is already bound to alice@"):
        senders.add(ALICE, normalise_pattern(spelling))
    assert senders.list(ALICE) == ["sales@example.net"]


def test_the_same_binding_may_belong_to_two_users(senders: SenderStore) -> None:
    senders.add(ALICE, "@example.net")
    senders.add(BOB, "@example.net")

    assert senders.list(BOB) == ["@example.net"]


def test_own_address_is_never_stored_as_a_binding(senders: SenderStore) -> None:
    """`user sender add` refuses it (tests/gateway/test_senders.py); so nothing can remove it."""
    with pytest.raises(SenderNotFound):
        senders.remove(ALICE, ALICE)


def test_unknown_user(senders: SenderStore) -> None:
    for call in (
        lambda: senders.add("nobody@example.org", "@example.net"),
        lambda: senders.remove("nobody@example.org", "@example.net"),
        lambda: senders.list("nobody@example.org"),
        lambda: senders.allowed("nobody@example.org"),
    ):
        with pytest.raises(UserNotFound, match=r"^no user nobody@example\.org$"):
            call()


def test_remove_in_any_spelling(senders: SenderStore) -> None:
    senders.add(ALICE, "sales@example.net")
    senders.add(ALICE, "@example.com")

    assert senders.remove(ALICE, normalise_pattern("SALES@Example.NET")) == "sales@example.net"
    assert senders.list(ALICE) == ["@example.com"]
    with pytest.raises(SenderNotFound, match=r"^sales@example\.net is not bound to alice@"):
        senders.remove(ALICE, "sales@example.net")


def test_remove_takes_only_that_users_binding(senders: SenderStore) -> None:
    senders.add(ALICE, "@example.net")
    senders.add(BOB, "@example.net")

    senders.remove(BOB, "@example.net")

    assert senders.list(ALICE) == ["@example.net"]
    with pytest.raises(SenderNotFound):
        senders.remove(BOB, "@example.net")


def test_deleting_a_user_deletes_their_bindings(db: Database, senders: SenderStore) -> None:
    senders.add(ALICE, "@example.net")
    senders.add(ALICE, "sales@example.com")
    senders.add(BOB, "@example.net")

    UserStore(db).delete(ALICE)

    assert binding_rows(db) == 1, "only bob's binding is left"
    UserStore(db).add(ALICE, "hash")
    assert senders.allowed(ALICE) == [ALICE], "a new account with the same address starts empty"


# --- migration 0003 --------------------------------------------------------------------------


def alembic_command(db: Database, name: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, name)(config, revision)


@pytest.fixture
def bare_db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def test_upgrade_from_0002_keeps_users_and_certificates(bare_db: Database) -> None:
    """Later migrations only add tables and columns: rebuilding `users` on SQLite would
    cascade-delete certificates. Rows are written as the 0002 schema knew them."""
    alembic_command(bare_db, "upgrade", "0002")
    cert = pki.CA.create("migration test CA").issue_client_cert(ALICE).cert
    serial = pki.format_serial(cert.serial_number)
    with bare_db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (email, password_hash, enabled, created_at, updated_at, "
                "auth_policy) VALUES (:e, 'hash', true, :t, :t, 'certificate')"
            ),
            {"e": ALICE, "t": datetime(2026, 1, 2, tzinfo=UTC)},
        )
        connection.execute(
            text(
                "INSERT INTO certificates (serial, user_id, fingerprint_sha256, subject, "
                "not_before, not_after, issued_at, pem) SELECT :s, id, :f, 'x', :t, :t, :t, 'pem' "
                "FROM users WHERE email = :e"
            ),
            {
                "s": serial,
                "f": pki.fingerprint_sha256(cert),
                "t": datetime(2026, 1, 2, tzinfo=UTC),
                "e": ALICE,
            },
        )

    bare_db.upgrade()

    assert "sender_bindings" in inspect(bare_db.engine).get_table_names()
    assert [c.serial for c in CertificateStore(bare_db).list(ALICE)] == [serial]
    record = UserStore(bare_db).get(ALICE)
    assert record is not None and record.auth_policy == "certificate"
    assert SenderStore(bare_db).allowed(ALICE) == [ALICE]


def test_downgrade_to_0002_drops_only_the_bindings(bare_db: Database) -> None:
    bare_db.upgrade()
    UserStore(bare_db).add(ALICE, "hash")
    SenderStore(bare_db).add(ALICE, "@example.net")

    alembic_command(bare_db, "downgrade", "0002")

    assert "sender_bindings" not in inspect(bare_db.engine).get_table_names()
    with bare_db.engine.connect() as connection:
        assert connection.execute(text("SELECT email FROM users")).scalars().all() == [ALICE]


def test_bindings_table_constraints_have_deterministic_names(db: Database) -> None:
    inspector = inspect(db.engine)

    assert inspector.get_pk_constraint("sender_bindings")["name"] == "pk_sender_bindings"
    assert [c["name"] for c in inspector.get_unique_constraints("sender_bindings")] == [
        "uq_sender_bindings_user_id"
    ]
    (fk,) = inspector.get_foreign_keys("sender_bindings")
    assert fk["name"] == "fk_sender_bindings_user_id_users"
    assert fk["options"].get("ondelete") == "CASCADE"
