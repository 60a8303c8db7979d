"""Stored access rules and per-user networks, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

import migrations
from submitgw.store import (
    AccessRuleStore,
    Database,
    RuleExists,
    RuleNotFound,
    UserNetworkStore,
    UserNotFound,
    UserStore,
)

MIGRATIONS_DIR = Path(migrations.__file__).parent


def test_rules_are_stored_as_given_and_listed_oldest_first(db: Database) -> None:
    """Normalising is `rules.access.parse_rule`'s (tests/rules); the store keeps its result."""
    store = AccessRuleStore(db)

    first = store.add("deny", "10.1.0.0/16", "abuse ticket 42")
    second = store.add("allow", "mail.example.net")
    third = store.add("deny", "192.0.2.1")

    listed = store.list()
    assert [s.rule for s in listed] == [first.rule, second.rule, third.rule]
    assert [(r.action, r.rule, r.comment) for r in store.rules()] == [
        ("deny", "10.1.0.0/16", "abuse ticket 42"),
        ("allow", "mail.example.net", ""),
        ("deny", "192.0.2.1", ""),
    ]
    assert listed[0].created_at.tzinfo is not None


def test_same_rule_twice_is_refused_naming_the_existing_one(db: Database) -> None:
    store = AccessRuleStore(db)
    existing = store.add("allow", "example.net").rule

    with pytest.raises(RuleExists, match=f"#{existing.id} \\(allow\\): remove it first"):
        store.add("deny", "example.net")

    assert len(store.list()) == 1


def test_invalid_actions_are_refused(db: Database) -> None:
    store = AccessRuleStore(db)

    with pytest.raises(ValueError, match="action"):
        store.add("block", "10.0.0.0/8")

    assert store.list() == []


def test_the_database_refuses_unknown_actions(db: Database) -> None:
    with pytest.raises(IntegrityError), db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO access_rules (action, rule, comment, created_at) "
            "VALUES ('block', '10.0.0.0/8', '', '2026-01-01 00:00:00+00:00')"
        )


def test_remove(db: Database) -> None:
    store = AccessRuleStore(db)
    rule = store.add("deny", "unknown").rule

    assert store.remove(rule.id) == rule
    assert store.rules() == []
    with pytest.raises(RuleNotFound, match=f"no access rule #{rule.id}"):
        store.remove(rule.id)


def test_user_networks_replace_clear_and_cascade(db: Database) -> None:
    users, networks = UserStore(db), UserNetworkStore(db)
    users.add("alice@example.org", "hash")
    users.add("bob@example.org", "hash")

    stored = networks.set("Alice@Example.org", ["2001:db8::/32", "192.0.2.7/32", "10.0.0.0/8"])
    assert stored == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    assert networks.get("alice@example.org") == stored
    networks.set("bob@example.org", ["198.51.100.0/24"])

    assert networks.set("alice@example.org", ["192.0.2.0/24", "192.0.2.0/24"]) == ["192.0.2.0/24"]
    assert networks.by_user() == {
        "alice@example.org": ["192.0.2.0/24"],
        "bob@example.org": ["198.51.100.0/24"],
    }
    assert networks.set("alice@example.org", []) == []
    assert networks.get("alice@example.org") == []

    users.delete("bob@example.org")
    assert networks.by_user() == {}
    with db.engine.connect() as connection:
        left = connection.exec_driver_sql("SELECT count(*) FROM user_networks").scalar()
    assert left == 0


def test_user_networks_errors(db: Database) -> None:
    networks = UserNetworkStore(db)
    UserStore(db).add("alice@example.org", "hash")
    networks.set("alice@example.org", ["192.0.2.0/24"])

    with pytest.raises(UserNotFound):
        networks.set("nobody@example.org", ["192.0.2.0/24"])

    assert networks.get("alice@example.org") == ["192.0.2.0/24"]
    assert networks.get("nobody@example.org") == []


def test_user_and_networks_reads_the_account_with_its_networks(db: Database) -> None:
    networks = UserNetworkStore(db)
    users = UserStore(db)
    users.add("alice@example.org", "hash-a")
    users.add("bob@example.org", "hash-b")
    networks.set("alice@example.org", ["198.51.100.0/24", "192.0.2.0/24"])

    alice, alice_networks = networks.user_and_networks("Alice@Example.ORG")
    bob, bob_networks = networks.user_and_networks("bob@example.org")

    assert alice == users.get("alice@example.org")
    assert (
        alice_networks == networks.get("alice@example.org") == ["192.0.2.0/24", "198.51.100.0/24"]
    )
    assert bob == users.get("bob@example.org")
    assert bob_networks == []
    assert networks.user_and_networks("nobody@example.org") == (None, [])


def _alembic(db: Database, name: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, name)(config, revision)


def test_migration_0004_tables_constraints_and_downgrade(db: Database) -> None:
    inspector = inspect(db.engine)
    assert {c["name"] for c in inspector.get_unique_constraints("access_rules")} == {
        "uq_access_rules_rule"
    }
    assert [c["name"] for c in inspector.get_check_constraints("access_rules")] == [
        "ck_access_rules_action"
    ]
    assert [fk["name"] for fk in inspector.get_foreign_keys("user_networks")] == [
        "fk_user_networks_user_id_users"
    ]
    UserStore(db).add("keep@example.org", "hash")

    _alembic(db, "downgrade", "0003")

    tables = set(inspect(db.engine).get_table_names())
    assert not {"access_rules", "user_networks"} & tables
    with db.engine.connect() as connection:
        emails = connection.execute(text("SELECT email FROM users")).scalars().all()
    assert emails == ["keep@example.org"]
    db.upgrade()
    assert UserStore(db).get("keep@example.org") is not None
    assert AccessRuleStore(db).list() == []
