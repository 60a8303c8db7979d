"""Throwaway PostgreSQL databases, one per test, and the `db_url` / `db` backend matrix.

Needs a server reachable with the admin URL below (override with SUBMITGW_TEST_PG).
Unreachable means skip on a workstation but fail in CI, where nothing may be skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from submitgw.store import Database

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _admin_url() -> str:
    return os.environ.get("SUBMITGW_TEST_PG", DEFAULT_ADMIN_URL)


def _unreachable(url: str, reason: str) -> NoReturn:
    message = f"PostgreSQL not reachable at {url}: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs PostgreSQL, so `-m "not postgres"` deselects them."""
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """An autocommit engine on the maintenance database (CREATE/DROP DATABASE need it)."""
    url = _admin_url()
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": 5},
    )
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        _unreachable(shown, str(exc.orig).strip().splitlines()[0])
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin: Engine) -> Iterator[str]:
    """URL of a new, empty database that is dropped (connections and all) after the test."""
    name = f"sgw_test_{secrets.token_hex(6)}"
    with pg_admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(_admin_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        with pg_admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_migrated(pg_admin: Engine) -> Iterator[str]:
    """One database per run, migrated once; `pg_migrated_url` empties it for each test."""
    name = f"sgw_test_{secrets.token_hex(6)}"
    with pg_admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(_admin_url()).set(database=name).render_as_string(hide_password=False)
    try:
        database = Database(url)
        database.upgrade()
        database.dispose()
        yield url
    finally:
        with pg_admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_migrated_url(pg_migrated: str) -> str:
    """URL of a database at the latest migration with every table empty.

    Creating and dropping a database costs about a second each on a busy machine;
    emptying the tables of one migrated database costs milliseconds.
    """
    empty_database(pg_migrated)
    return pg_migrated


def empty_database(url: str) -> None:
    """Every table but Alembic's emptied, identities restarted."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            tables = [
                name
                for (name,) in connection.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'alembic_version'"
                )
            ]
            if tables:
                listed = ", ".join(f'"{name}"' for name in tables)
                connection.exec_driver_sql(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "submitgw.db"
    database = Database(f"sqlite:///{path}")
    database.upgrade()
    database.dispose()
    return path


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on each supported backend: an empty SQLite file, then an empty
    PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'submitgw.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def db(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database at the latest migration on each backend, disposed of afterwards.

    Migrating costs far more than copying: the schema is migrated once per run; each
    test gets a copy of the SQLite file, or the PostgreSQL database with its tables emptied.
    """
    if backend == "sqlite":
        path = tmp_path / "submitgw.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:
        url = str(request.getfixturevalue("pg_migrated_url"))
    database = Database(url)
    yield database
    database.dispose()
