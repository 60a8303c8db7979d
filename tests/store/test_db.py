"""Transactions on one database from many threads, as the gateway runs them.

Rules proven here: a transaction that reads and then writes succeeds although
another connection commits in between (on SQLite in WAL mode a deferred
transaction would fail at once with "database is locked": the audit trail
commits every half second); a reading session never waits for a writer. On
SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import func, select

from submitgw.store import CredentialStore, Database, UserStore
from submitgw.store.audit import AuditStore, EventRow
from submitgw.store.models import AuditEvent, User


def row() -> EventRow:
    return EventRow(datetime.now(UTC), "auth", None, None, None, None, None)


def test_read_then_write_survives_a_commit_in_between(db: Database) -> None:
    UserStore(db).add("alice@example.org", "hash")
    audit = AuditStore(db)
    wrote = threading.Event()
    writer = threading.Thread(target=lambda: (audit.write([row()], []), wrote.set()))

    with db.session() as session:
        assert session.scalar(select(User.id)) is not None
        writer.start()
        wrote.wait(0.5)
        session.add(AuditEvent(at=datetime.now(UTC), kind="auth", detail="{}"))
    writer.join(10)

    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 2


def test_many_read_then_write_transactions_beside_a_busy_writer(db: Database) -> None:
    UserStore(db).add("alice@example.org", "hash")
    credentials, audit = CredentialStore(db), AuditStore(db)
    stop = threading.Event()

    def trail() -> None:
        while not stop.is_set():
            audit.write([row()], [])

    writer = threading.Thread(target=trail)
    writer.start()
    try:
        for n in range(100):
            credentials.add_app_password("alice@example.org", "phone", f"sel{n}", "hash")
    finally:
        stop.set()
        writer.join(10)

    assert len(credentials.app_passwords("alice@example.org")) == 100


def test_a_reader_does_not_wait_for_a_writer(db: Database) -> None:
    UserStore(db).add("alice@example.org", "hash")
    with db.session() as writing:
        writing.add(AuditEvent(at=datetime.now(UTC), kind="auth", detail="{}"))
        writing.flush()
        started = time.monotonic()
        assert UserStore(db).get("alice@example.org") is not None
        assert time.monotonic() - started < 1.0


def test_sqlite_commits_skip_the_disk_sync_in_wal_mode(db: Database) -> None:
    """synchronous=NORMAL: with WAL no corruption is possible, and commits stay cheap."""
    if db.engine.dialect.name != "sqlite":
        return
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1
