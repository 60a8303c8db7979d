"""The audit trail's store on real SQLite and PostgreSQL.

Rules proven here: a batch is written whole; every search (Message-ID, queue ids,
user, address, network, recipient, session, time) finds exactly its records,
newest first, at most `limit`; a user's search includes their account changes;
values longer than their column, or with NUL, never make a batch fail; pruning
deletes what is older than the cut-off (recipients with their message) in slices
and keeps the rest and the account trail.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from submitgw.rules.trail import ip_key, ip_range
from submitgw.store import CredentialStore, Database
from submitgw.store.audit import AuditQuery, AuditStore, EventRow, MessageRow

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALICE, BOB = "alice@example.org", "bob@example.org"


def message(n: int, **changes: object) -> MessageRow:
    base = MessageRow(
        at=T0 + timedelta(minutes=n),
        queue_id=f"Q{n:017d}",
        message_id=f"m{n}@example.org",
        session=f"s{n}",
        client="192.0.2.7",
        ip=ip_key("192.0.2.7"),
        user=ALICE,
        mechanism="PLAIN",
        cert_serial=None,
        cert_fingerprint=None,
        app_password=None,
        sender=ALICE,
        size=100 + n,
        recipients=(f"rcpt{n}@example.net", "Carol@Example.NET"),
        smarthost="10.0.0.25:25",
        smarthost_queue_id=f"PF{n}",
        reply=f"250 2.0.0 Ok: queued as PF{n}",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def event(n: int, kind: str = "auth", **changes: object) -> EventRow:
    base = EventRow(
        at=T0 + timedelta(minutes=n, seconds=30),
        kind=kind,
        session=f"s{n}",
        client="192.0.2.7",
        ip=ip_key("192.0.2.7"),
        user=ALICE,
        result="ok",
        detail={"mechanism": "PLAIN"},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def store(db: Database) -> AuditStore:
    return AuditStore(db)


def kinds(records: list) -> list[tuple[str, str | None]]:  # type: ignore[type-arg]
    return [(r.kind, r.fields.get("queue_id") or r.session) for r in records]


def test_a_message_reads_back_whole_with_its_recipients_in_order(store: AuditStore) -> None:
    store.write([], [message(1)])

    (found,) = store.search(AuditQuery(message_id="m1@example.org"))

    assert (found.kind, found.at, found.user, found.client, found.session) == (
        "message",
        T0 + timedelta(minutes=1),
        ALICE,
        "192.0.2.7",
        "s1",
    )
    assert found.fields["recipients"] == ["rcpt1@example.net", "carol@example.net"]
    assert found.fields["queue_id"] == "Q00000000000000001"
    assert found.fields["smarthost_queue_id"] == "PF1"
    assert found.fields["size"] == 101 and found.fields["mechanism"] == "PLAIN"


def test_each_search_finds_exactly_its_records_newest_first(store: AuditStore) -> None:
    store.write(
        [event(1), event(2, user=BOB), event(3, client="2001:db8::5", ip=ip_key("2001:db8::5"))],
        [
            message(1),
            message(2, user=BOB, client="198.51.100.9", ip=ip_key("198.51.100.9")),
            message(3, client="2001:db8::5", ip=ip_key("2001:db8::5"), recipients=("x@y.z",)),
        ],
    )

    def search(**q: object) -> list[tuple[str, str | None]]:
        return kinds(store.search(AuditQuery(**q)))  # type: ignore[arg-type]

    assert search(message_id="<m2@example.org>"[1:-1]) == [("message", "Q00000000000000002")]
    assert search(queue_id="Q00000000000000003") == [("message", "Q00000000000000003")]
    assert search(queue_id="PF1") == [("message", "Q00000000000000001")]
    assert search(user=BOB) == [("auth", "s2"), ("message", "Q00000000000000002")]
    by_ip = ip_range("192.0.2.7")
    assert search(ip_low=by_ip.low, ip_high=by_ip.high) == [
        ("auth", "s2"),
        ("auth", "s1"),
        ("message", "Q00000000000000001"),
    ]
    v4 = ip_range("0.0.0.0/0")
    assert len(search(ip_low=v4.low, ip_high=v4.high)) == 4
    v6 = ip_range("2001:db8::/32")
    assert search(ip_low=v6.low, ip_high=v6.high) == [
        ("auth", "s3"),
        ("message", "Q" + "0" * 16 + "3"),
    ]
    assert search(recipient="CAROL@example.net") == [
        ("message", "Q00000000000000002"),
        ("message", "Q00000000000000001"),
    ]
    assert search(recipient="nobody@example.net") == []
    assert search(session="s2") == [("auth", "s2"), ("message", "Q00000000000000002")]
    between = {"since": T0 + timedelta(minutes=2), "until": T0 + timedelta(minutes=3)}
    assert search(**between) == [("auth", "s2"), ("message", "Q00000000000000002")]
    assert search(user=ALICE, recipient="carol@example.net") == [("message", "Q" + "0" * 16 + "1")]
    assert search(user=BOB, since=T0 + timedelta(minutes=3)) == []
    assert len(search()) == 6
    assert search(limit=2) == [("auth", "s3"), ("message", "Q00000000000000003")]


def test_a_user_search_includes_their_account_changes(db: Database, store: AuditStore) -> None:
    store.write([event(1)], [])
    CredentialStore(db).record(ALICE, "sender-added", "admin:root", "cli on gw1", "sales@x.org")
    CredentialStore(db).record(BOB, "user-added", "admin:root", "cli on gw1")

    found = store.search(AuditQuery(user=ALICE))

    assert [r.kind for r in found] == ["account", "auth"]
    assert found[0].fields == {
        "action": "sender-added",
        "actor": "admin:root",
        "source": "cli on gw1",
        "detail": "sales@x.org",
    }
    everything = store.search(AuditQuery())
    assert sorted(r.kind for r in everything) == ["account", "account", "auth"]
    ip = ip_range("192.0.2.7")
    assert [r.kind for r in store.search(AuditQuery(ip_low=ip.low, ip_high=ip.high))] == ["auth"]


def test_event_details_read_back_as_fields(store: AuditStore) -> None:
    detail = {"fingerprint_sha256": "ab" * 32, "serial": "4F:2A", "reason": "revoked"}
    store.write([event(1, kind="certificate", result="rejected", detail=detail)], [])

    (found,) = store.search(AuditQuery())

    assert found.kind == "certificate"
    assert found.fields == {"result": "rejected", **detail}


def test_overlong_and_nul_values_are_cut_not_refused(store: AuditStore) -> None:
    long_id = "ü" * 2000 + "@example.org"
    store.write(
        [event(1, user="x\x00" * 400, result="r" * 500, session="s" * 100)],
        [
            message(
                1,
                message_id=long_id,
                sender="a\x00b@example.org",
                recipients=("r" * 600 + "@example.net",),
                cert_serial="5" * 100,
                app_password="7 " + "label" * 100,
            )
        ],
    )

    (found,) = store.search(AuditQuery(message_id=long_id))
    assert found.fields["message_id"] == long_id[:255]
    assert found.fields["sender"] == "ab@example.org"
    assert len(found.fields["recipients"][0]) == 320
    assert len(store.search(AuditQuery())) == 2


def test_prune_deletes_the_old_in_slices_and_keeps_the_new(db: Database, store: AuditStore) -> None:
    old = [message(n, at=T0 - timedelta(days=400 + n)) for n in range(5)]
    store.write(
        [event(n, at=T0 - timedelta(days=400)) for n in range(3)] + [event(9)],
        [*old, message(9)],
    )
    CredentialStore(db).record(ALICE, "user-added", "admin:root", "cli on gw1")

    assert store.prune(T0 - timedelta(days=365), batch=2) == 8

    left = store.search(AuditQuery())
    assert sorted(r.kind for r in left) == ["account", "auth", "message"]
    with db.engine.connect() as connection:
        recipients = connection.exec_driver_sql("SELECT count(*) FROM audit_recipients")
        assert recipients.scalar_one() == 2
    assert store.prune(T0 - timedelta(days=365)) == 0
