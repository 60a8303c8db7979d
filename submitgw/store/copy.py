"""Copy every table into a new, empty database: the move from SQLite to PostgreSQL.

Rows travel as they are, primary keys included, so password hashes, certificates,
rules, bindings and the account and audit trails are the same data on the other side and every
reference between rows still holds. The target is migrated and filled in one
transaction: a copy either arrives whole or leaves the target as empty as it was.
It is never merged into a database that already holds rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Table, func, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from submitgw.store.db import Database
from submitgw.store.errors import StoreError
from submitgw.store.models import Base

# Rows read and inserted at a time: memory stays flat however long the trail is.
BATCH_ROWS = 1000
# Host names that all mean "this machine" (no host: PostgreSQL's local socket).
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
FRESH_ONLY = "copy only into a new, empty database"


class CopyRefused(StoreError):
    """The copy cannot start, or was undone; the target holds nothing of it."""


@dataclass(frozen=True)
class TableCopied:
    table: str
    rows: int


def shown_url(url: str | URL) -> str:
    """A database URL fit for the screen: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "(not a database URL)"


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def open_target(url: str) -> Database:
    """A handle on the target; a URL no driver takes is a refusal, not a traceback."""
    try:
        return Database(url)
    except (SQLAlchemyError, ImportError) as exc:
        raise CopyRefused(f"cannot use {shown_url(url)} as the target: {_first_line(exc)}") from exc


def _sqlite_file(url: URL) -> Path | None:
    name = url.database or ""
    if name in ("", ":memory:") or name.startswith("file:"):
        return None
    return Path(name).resolve()


def same_database(a: URL, b: URL) -> bool:
    """Whether two URLs name one database: the same file, or the same server and name."""
    backend = a.get_backend_name()
    if backend != b.get_backend_name():
        return False
    if backend == "sqlite":
        first, second = _sqlite_file(a), _sqlite_file(b)
        if first is None or second is None:
            return False
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
        return first == second

    def where(url: URL) -> tuple[str, int | None, str | None]:
        host = (url.host or "").lower()
        return (
            "local" if host in LOCAL_HOSTS else host,
            url.port or DEFAULT_PORTS.get(backend),
            url.database,
        )

    return where(a) == where(b)


def _prepare_target(target: Database, connection: Connection, head: str) -> None:
    """Migrate an empty target, or accept one at `head` whose tables are all empty."""
    tables = inspect(connection).get_table_names()
    if not tables:
        target.upgrade_within(connection)
        return
    revision = MigrationContext.configure(connection).get_current_revision()
    if revision != head:
        what = f"at revision {revision}" if revision else "not a submitgw database"
        raise CopyRefused(
            f"the target database is not empty ({len(tables)} tables, {what}): {FRESH_ONLY}"
        )
    for table in Base.metadata.sorted_tables:
        rows = connection.scalar(select(func.count()).select_from(table))
        if rows:
            raise CopyRefused(
                f"the target database is not empty ({rows} row{'' if rows == 1 else 's'} "
                f"in {table.name}): {FRESH_ONLY}"
            )


def _copy_table(source: Connection, target: Connection, table: Table) -> int:
    rows = 0
    query = select(table).order_by(*table.primary_key.columns)
    result = source.execution_options(yield_per=BATCH_ROWS).execute(query)
    for batch in result.partitions():
        target.execute(table.insert(), [row._asdict() for row in batch])
        rows += len(batch)
    return rows


def _advance_sequences(connection: Connection) -> None:
    """Set PostgreSQL's id sequences past the copied ids, so the next insert gets a new one.

    Inserting explicit ids does not move a sequence; SQLite needs nothing, it takes
    the highest id plus one.
    """
    if connection.dialect.name != "postgresql":
        return
    for table in Base.metadata.sorted_tables:
        column = table.autoincrement_column
        if column is None:
            continue
        highest = connection.scalar(select(func.max(column)))
        if highest is not None:
            connection.execute(
                text("SELECT setval(pg_get_serial_sequence(:table, :column), :value)"),
                {"table": table.name, "column": column.name, "value": highest},
            )


def copy_database(source: Database, target: Database) -> list[TableCopied]:
    """Copy every table of `source` (at the head revision) into a new, empty `target`.

    Parents before children, in one transaction on the target: migrations, rows and
    sequences commit together or not at all. The source is read in one snapshot and
    never written. Rate counters and lockouts are copied too: a lockout in force stays
    in force, and the hour's sending counts carry over.
    """
    if same_database(source.engine.url, target.engine.url):
        raise CopyRefused(
            f"the target {shown_url(target.engine.url)} is the configured database itself"
        )
    source.check_current()
    head = source.head_revision()
    try:
        connection = target.engine.connect()
    except SQLAlchemyError as exc:
        raise CopyRefused(
            f"cannot connect to the target database {shown_url(target.engine.url)}: "
            f"{_first_line(exc)}"
        ) from exc
    copied: list[TableCopied] = []
    step = "preparing the target"
    try:
        with connection, connection.begin():
            _prepare_target(target, connection, head)
            with _snapshot(source) as reading, reading.begin():
                for table in Base.metadata.sorted_tables:
                    step = f"copying {table.name}"
                    copied.append(TableCopied(table.name, _copy_table(reading, connection, table)))
            step = "setting the id sequences"
            _advance_sequences(connection)
            step = "committing"
    except SQLAlchemyError as exc:
        raise CopyRefused(
            f"the copy failed while {step} and was undone: {_first_line(exc)}"
        ) from exc
    return copied


def _snapshot(source: Database) -> Connection:
    """A connection whose transaction sees the source as it was when the copy began.

    SQLite's WAL readers keep their snapshot for the transaction anyway; PostgreSQL
    needs REPEATABLE READ for that (read only: the copy never writes to its source).
    """
    connection = source.reader.connect()
    if connection.dialect.name == "postgresql":
        connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return connection
