"""The database trail's sink and writer thread, on real SQLite and PostgreSQL.

Rules proven here: `record` only queues (fast, never raises, never touches the
database); a batch is written once `batch_size` events wait or `flush_interval`
has passed; while the database fails the writer retries and loses nothing that
fits in the queue; beyond `max_queue` the oldest events are dropped and counted
in one error line; `close` writes everything still queued, or says how much it
could not within its time; the daily prune removes only what is past retention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from submitgw.config import AuditConfig
from submitgw.services.trail import DatabaseTrail, to_row
from submitgw.store import Database
from submitgw.store.audit import AuditQuery, AuditStore, EventRow, MessageRow

FAST = AuditConfig(flush_interval=0.05, batch_size=100, max_queue=1000, shutdown_timeout=5.0)


def message_event(n: int) -> dict[str, Any]:
    return {
        "event": "message",
        "session": f"s{n}",
        "client": "192.0.2.7",
        "user": "alice@example.org",
        "mechanism": "PLAIN",
        "cert_serial": None,
        "cert_fingerprint": None,
        "app_password": None,
        "queue_id": f"Q{n:017d}",
        "message_id": f"m{n}@example.org",
        "sender": "alice@example.org",
        "recipients": 2,
        "recipient_list": [f"r{n}@example.net", "carol@example.net"],
        "size": 1000,
        "smarthost": "10.0.0.25:25",
        "smarthost_queue_id": f"PF{n}",
        "reply": f"250 2.0.0 Ok: queued as PF{n}",
    }


def auth_event(n: int) -> dict[str, Any]:
    return {
        "event": "auth",
        "session": f"s{n}",
        "client": "2001:db8::7",
        "mechanism": "LOGIN",
        "user": "bob@example.org",
        "result": "failed",
    }


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def count(store: AuditStore) -> int:
    return len(store.search(AuditQuery(limit=10_000)))


@pytest.fixture
def store(db: Database) -> AuditStore:
    return AuditStore(db)


@pytest.fixture
def make_trail(store: AuditStore) -> Iterator[Callable[..., DatabaseTrail]]:
    made: list[DatabaseTrail] = []

    def make(cfg: AuditConfig = FAST, **kw: Any) -> DatabaseTrail:
        trail = DatabaseTrail(store, cfg, **kw)
        made.append(trail)
        return trail

    yield make
    for trail in made:
        trail.close(1.0)


def hide_table(db: Database, hidden: bool) -> None:
    """The database "fails" for the trail: its table is there under another name only."""
    old, new = ("audit_events", "audit_hidden") if hidden else ("audit_hidden", "audit_events")
    with db.engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")


def test_events_reach_the_database_within_the_flush_interval(
    make_trail: Callable[..., DatabaseTrail], store: AuditStore
) -> None:
    trail = make_trail()
    trail.start()
    trail.record(message_event(1))
    trail.record(auth_event(1))
    trail.record({"event": "account", "user": "x@example.org", "action": "password-changed"})
    trail.record({"event": "site-connection", "requests": 3})

    wait_until(lambda: trail.written == 2)
    found = store.search(AuditQuery())
    assert [r.kind for r in found] == ["auth", "message"]
    assert found[1].fields["recipients"] == ["r1@example.net", "carol@example.net"]
    assert found[0].fields == {"result": "failed", "mechanism": "LOGIN"}


def test_a_full_batch_is_written_without_waiting_for_the_interval(
    make_trail: Callable[..., DatabaseTrail], store: AuditStore
) -> None:
    trail = make_trail(AuditConfig(flush_interval=60.0, batch_size=5, max_queue=100))
    trail.start()
    for n in range(5):
        trail.record(auth_event(n))

    wait_until(lambda: count(store) == 5, timeout=5)


def test_record_only_queues_and_never_touches_the_database(
    make_trail: Callable[..., DatabaseTrail], store: AuditStore
) -> None:
    """What it costs is measured by scripts/bench.py, not here: the machine is shared."""
    trail = make_trail(AuditConfig(max_queue=5_000, batch_size=5_000))
    for n in range(5_000):
        trail.record(auth_event(n))

    assert trail.waiting == 5_000 and count(store) == 0


def test_a_failing_database_loses_nothing_that_fits_in_the_queue(
    db: Database,
    make_trail: Callable[..., DatabaseTrail],
    store: AuditStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trail = make_trail()
    hide_table(db, True)
    trail.start()
    for n in range(20):
        trail.record(auth_event(n))
    wait_until(lambda: "cannot write to the database" in caplog.text)
    time.sleep(0.3)
    assert trail.waiting == 20

    hide_table(db, False)

    wait_until(lambda: count(store) == 20, timeout=15)
    assert caplog.text.count("cannot write to the database") == 1
    assert "writing to the database again" in caplog.text


def test_beyond_max_queue_the_oldest_are_dropped_and_counted_once(
    make_trail: Callable[..., DatabaseTrail],
    store: AuditStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trail = make_trail(AuditConfig(flush_interval=0.05, batch_size=5, max_queue=5))
    for n in range(12):
        trail.record(auth_event(n))

    assert trail.waiting == 5
    assert caplog.text.count("dropping the oldest") == 1
    trail.start()
    wait_until(lambda: count(store) == 5)
    assert sorted(r.session or "" for r in store.search(AuditQuery())) == [
        "s10",
        "s11",
        "s7",
        "s8",
        "s9",
    ]
    (line,) = [r for r in caplog.records if "were dropped" in r.getMessage()]
    assert line.levelno == logging.ERROR and "7 events were dropped" in line.getMessage()


def test_close_writes_everything_still_queued(
    make_trail: Callable[..., DatabaseTrail], store: AuditStore
) -> None:
    trail = make_trail(AuditConfig(flush_interval=60.0, batch_size=7, max_queue=1000))
    trail.start()
    for n in range(30):
        trail.record(message_event(n))

    assert trail.close() is True
    assert count(store) == 30


def test_close_without_a_thread_still_writes(
    make_trail: Callable[..., DatabaseTrail], store: AuditStore
) -> None:
    trail = make_trail()
    trail.record(auth_event(1))

    assert trail.close() is True
    assert count(store) == 1


def test_close_gives_up_in_time_when_the_database_stays_down(
    db: Database,
    make_trail: Callable[..., DatabaseTrail],
    caplog: pytest.LogCaptureFixture,
) -> None:
    trail = make_trail()
    hide_table(db, True)
    try:
        trail.start()
        for n in range(3):
            trail.record(auth_event(n))
        started = time.monotonic()

        assert trail.close(1.0) is False
        assert time.monotonic() - started < 3.0
        assert "3 events could not be written" in caplog.text
    finally:
        hide_table(db, False)


def test_record_never_raises_and_a_strange_event_costs_only_itself(
    make_trail: Callable[..., DatabaseTrail], store: AuditStore
) -> None:
    trail = make_trail()
    trail.start()
    trail.record({"event": "message", "size": "not a number"})
    trail.record({"event": "limit", "client": object(), "user": None, "limit": "ip messages"})
    trail.record(auth_event(1))

    wait_until(lambda: count(store) == 2)


def test_the_daily_prune_deletes_only_what_is_past_retention(
    make_trail: Callable[..., DatabaseTrail], store: AuditStore
) -> None:
    now = datetime.now(UTC)
    old = to_row(now - timedelta(days=40), auth_event(1))
    recent = to_row(now - timedelta(days=20), auth_event(2))
    assert isinstance(old, EventRow) and isinstance(recent, EventRow)
    store.write([old, recent], [])
    cfg = AuditConfig(flush_interval=0.05, retention_days=30)

    make_trail(cfg, first_prune=0.0).start()

    wait_until(lambda: count(store) == 1)
    assert [r.session for r in store.search(AuditQuery())] == ["s2"]


def test_events_become_rows_with_searchable_columns() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    row = to_row(at, message_event(3))
    assert isinstance(row, MessageRow)
    assert row.recipients == ("r3@example.net", "carol@example.net")
    assert row.ip == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])

    access = to_row(
        at,
        {"event": "access", "session": "s", "client": "x", "decision": "deny", "rule_id": 4},
    )
    assert isinstance(access, EventRow)
    assert (access.kind, access.result, access.ip, access.detail) == (
        "access",
        "deny",
        None,
        {"rule_id": 4},
    )
    tls = to_row(
        at,
        {"event": "tls", "session": "s", "client": "::1", "result": "failed", "reason": "eof"},
    )
    assert isinstance(tls, EventRow)
    assert (tls.result, tls.detail) == ("eof", {})
