"""Engine, sessions and the schema version check.

The schema is owned by Alembic alone (never `create_all`), so a database is
either at the head revision or the admin is told exactly what to run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

import migrations
from submitgw.store.errors import StoreError

UPGRADE_HINT = "run 'submitgw db upgrade'"
# Execution option of `Database.reader`: its transactions only read.
READ_ONLY = "submitgw_read_only"


class MigrationRequired(StoreError):
    """The database schema does not match this version; the text is shown to the admin."""


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings (only journal_mode persists in the file).

    WAL lets readers proceed while a login is being recorded; busy_timeout makes a
    second writer wait instead of failing at once. With WAL, synchronous=NORMAL
    syncs the disk at checkpoints rather than at every commit: a crash of the
    process loses nothing and the file cannot be corrupted, but a power cut may
    undo the last commits (counters, last-login times, audit rows) of the moment.
    Driver autocommit hands BEGIN over to `_sqlite_begin`; the pragmas must run
    outside a transaction anyway.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Begin every transaction explicitly, DDL included; IMMEDIATE unless it only reads.

    Python's sqlite3 module opens transactions only before DML, so a failing
    migration would otherwise leave a half-changed schema behind. In WAL mode a
    deferred transaction that has read and then writes fails at once with
    "database is locked" whenever another connection committed in between (the
    busy timeout does not apply), and the gateway's audit trail commits every
    half second: so a transaction takes the write lock when it begins, waiting
    its turn, unless it comes from `Database.reader`, which never writes and so
    never waits for a writer.
    """
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _is_known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


class Database:
    """One engine per process; sessions are short and used from worker threads."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # The same pool, for transactions that only read (see `_sqlite_begin`).
        self.reader = self.engine.execution_options(**{READ_ONLY: True})
        self._readers = sessionmaker(self.reader, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed if the block succeeds, else rolled back."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session that only reads: on SQLite it never waits for a writer's turn."""
        with self._readers.begin() as session:
            yield session

    def _alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(Path(migrations.__file__).parent))
        return config

    def upgrade(self) -> None:
        """Bring the schema to the newest revision shipped with this version."""
        with self.engine.begin() as connection:
            self.upgrade_within(connection)

    def upgrade_within(self, connection: Connection) -> None:
        """`upgrade` inside the caller's transaction, which then commits or undoes it.

        `db copy` migrates a fresh target and fills it in one transaction, so a failed
        copy leaves no half-made schema behind.
        """
        config = self._alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    def current_revision(self) -> str | None:
        """The revision stamped in the database, or None if it was never migrated."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def _scripts(self) -> ScriptDirectory:
        return ScriptDirectory.from_config(self._alembic_config())

    def head_revision(self) -> str:
        head = self._scripts().get_current_head()
        if head is None:
            raise RuntimeError("no migrations found in the migrations package")
        return head

    def check_current(self) -> None:
        """Refuse to run against a schema this version was not written for."""
        current = self.current_revision()
        head = self.head_revision()
        if current == head:
            return
        if current is None:
            raise MigrationRequired(
                f"database is not initialised (this version needs revision {head}): {UPGRADE_HINT}"
            )
        if not _is_known(self._scripts(), current):
            raise MigrationRequired(
                f"database is at revision {current}, which this version does not know "
                f"(it needs {head}): was it upgraded by a newer submitgw?"
            )
        raise MigrationRequired(
            f"database is at revision {current} but this version needs {head}: {UPGRADE_HINT}"
        )

    def ping(self) -> None:
        """One small query that needs this database's schema (raises if it cannot answer).

        SQLite answers `SELECT 1` without reading its file, so the query reads a table.
        """
        with self.engine.connect() as connection:
            connection.execute(text("SELECT version_num FROM alembic_version")).all()

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, and in tests before dropping a database)."""
        self.engine.dispose()
