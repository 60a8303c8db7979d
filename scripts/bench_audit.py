#!/usr/bin/env python3
"""Benchmark: `submitgw audit search` over a million messages, on SQLite and PostgreSQL.

Builds a throwaway database per backend (a temporary SQLite file; a PostgreSQL database
of its own, created and dropped through the admin URL), migrates it as `db upgrade`
does, then fills it with --rows messages of 1 to 3 recipients each, spread over
--users users, --clients client addresses (IPv4 in a few /16s, some IPv6) and --days
days. The bulk load takes the secondary indexes off and puts them back afterwards
(PostgreSQL: COPY, then ANALYZE as autovacuum would; SQLite: executemany, no ANALYZE,
as a gateway's file has none), so the schema searched is exactly the migrated one.

Each search kind then runs through `AuditStore.search`, the code `audit search` runs,
with the filters built by the same rules (Message-ID and address normalising, CIDR
ranges, relative times); each is run --repeat times with different values, and the
table gives the slowest and the median. This is not a test: it prints figures.
Run it with the project's venv: `.venv/bin/python scripts/bench_audit.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Connection, Table, create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from submitgw.rules.message import new_queue_id, normalise_message_id  # noqa: E402
from submitgw.rules.trail import ip_key, ip_range, parse_time  # noqa: E402
from submitgw.store import Database  # noqa: E402
from submitgw.store.audit import AuditQuery, AuditStore  # noqa: E402
from submitgw.store.models import AuditMessage, AuditRecipient  # noqa: E402

DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CHUNK = 50_000
NETWORKS_V4 = ["198.51.{}.{}", "203.0.{}.{}", "10.20.{}.{}", "172.16.{}.{}"]
MESSAGE_COLUMNS = [c.name for c in AuditMessage.__table__.columns]
RECIPIENT_COLUMNS = [c.name for c in AuditRecipient.__table__.columns]


@dataclass(frozen=True)
class Population:
    users: list[str]
    clients: list[str]
    recipients: list[str]
    now: datetime
    days: int


def population(args: argparse.Namespace, rng: random.Random) -> Population:
    users = [f"user{n:05d}@example.org" for n in range(args.users)]
    clients = []
    for n in range(args.clients):
        if n % 10 == 9:
            clients.append(str(ipaddress.IPv6Address(f"2001:db8:{n % 16:x}::{n:x}")))
        else:
            net = NETWORKS_V4[n % len(NETWORKS_V4)]
            clients.append(net.format(rng.randrange(256), rng.randrange(1, 255)))
    recipients = [f"rcpt{n:06d}@example.net" for n in range(args.recipients)]
    now = datetime.now(UTC).replace(microsecond=0)
    return Population(users, clients, recipients, now, args.days)


def generate(
    pop: Population, rows: int, rng: random.Random
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Messages and their recipients, CHUNK messages at a time, ids from 1, oldest first."""
    span = pop.days * 86400
    start = pop.now - timedelta(seconds=span)
    step = span / rows
    keys = {client: ip_key(client) for client in pop.clients}
    for first in range(0, rows, CHUNK):
        messages, recipients = [], []
        for n in range(first, min(first + CHUNK, rows)):
            at = start + timedelta(seconds=n * step + rng.random() * step)
            client = rng.choice(pop.clients)
            user = rng.choice(pop.users)
            to = [rng.choice(pop.recipients) for _ in range(1 + int(rng.random() * 3))]
            ident = n + 1
            messages.append(
                {
                    "id": ident,
                    "at": at,
                    "queue_id": new_queue_id(at.timestamp()),
                    "message_id": f"{rng.getrandbits(80):020x}@mail.example.org",
                    "session": f"{rng.getrandbits(48):012x}",
                    "client": client,
                    "ip": keys[client],
                    "username": user,
                    "mechanism": "PLAIN",
                    "cert_serial": None,
                    "cert_fingerprint": None,
                    "app_password": None,
                    "sender": user,
                    "size": rng.randrange(500, 200_000),
                    "recipient_count": len(to),
                    "smarthost": "10.0.0.25:25",
                    "smarthost_queue_id": f"{rng.getrandbits(40):010X}",
                    "reply": "250 2.0.0 Ok: queued as X",
                }
            )
            recipients += [
                {"message": ident, "position": p, "address": a, "at": at} for p, a in enumerate(to)
            ]
        yield messages, recipients


def _without_indexes(connection: Connection) -> list[Callable[[], None]]:
    """Drop the audit tables' secondary indexes (and the recipients' foreign key on
    PostgreSQL); the calls that put them back."""
    restore: list[Callable[[], None]] = []
    for table in (AuditMessage.__table__, AuditRecipient.__table__):
        assert isinstance(table, Table)
        for index in table.indexes:
            index.drop(connection)
            restore.append(functools.partial(index.create, connection))
    if connection.dialect.name == "postgresql":
        fk = "fk_audit_recipients_message_audit_messages"
        connection.exec_driver_sql(f"ALTER TABLE audit_recipients DROP CONSTRAINT {fk}")

        def add_fk() -> None:
            connection.exec_driver_sql(
                f"ALTER TABLE audit_recipients ADD CONSTRAINT {fk} FOREIGN KEY (message) "
                "REFERENCES audit_messages (id) ON DELETE CASCADE"
            )

        restore.append(add_fk)
    return restore


def _copy(
    connection: Connection, table: str, columns: list[str], rows: list[dict[str, Any]]
) -> None:
    raw = connection.connection.driver_connection
    assert raw is not None
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row([row[c] for c in columns])


def _executemany(
    connection: Connection, table: str, columns: list[str], rows: list[dict[str, Any]]
) -> None:
    """SQLite: the driver's executemany, each value converted by its column's own type."""
    sa_table = AuditMessage.metadata.tables[table]
    convert = [sa_table.c[c].type.bind_processor(connection.dialect) for c in columns]
    values = [
        tuple(row[c] if f is None else f(row[c]) for c, f in zip(columns, convert, strict=True))
        for row in rows
    ]
    marks = ", ".join("?" for _ in columns)
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values)


def load(db: Database, pop: Population, rows: int, seed: int) -> float:
    """Fill the audit tables; seconds taken, indexes and statistics included."""
    rng = random.Random(seed)
    started = time.perf_counter()
    with db.engine.begin() as connection:
        postgres = connection.dialect.name == "postgresql"
        restore = _without_indexes(connection)
        for messages, recipients in generate(pop, rows, rng):
            if postgres:
                _copy(connection, "audit_messages", MESSAGE_COLUMNS, messages)
                _copy(connection, "audit_recipients", RECIPIENT_COLUMNS, recipients)
            else:
                _executemany(connection, "audit_messages", MESSAGE_COLUMNS, messages)
                _executemany(connection, "audit_recipients", RECIPIENT_COLUMNS, recipients)
            if sys.stdout.isatty():
                print(f"  {messages[-1]['id']:>9} messages", end="\r", flush=True)
        for put_back in restore:
            put_back()
        if postgres:
            connection.execute(text("SELECT setval('audit_messages_id_seq', :n)"), {"n": rows})
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("ANALYZE audit_messages")
            c.exec_driver_sql("ANALYZE audit_recipients")
    return time.perf_counter() - started


def samples(db: Database, repeat: int, seed: int) -> dict[str, list[AuditQuery]]:
    """For each search kind, `repeat` queries with values that exist in the data."""
    rng = random.Random(seed)
    with db.engine.connect() as c:
        total = c.exec_driver_sql("SELECT max(id) FROM audit_messages").scalar_one()
        picked = []
        for _ in range(repeat):
            row = c.execute(
                text(
                    "SELECT message_id, queue_id, username, client FROM audit_messages "
                    "WHERE id = :id"
                ),
                {"id": rng.randint(1, total)},
            ).one()
            address = (
                c.execute(
                    text(
                        "SELECT address FROM audit_recipients WHERE message = :id AND position = 0"
                    ),
                    {"id": rng.randint(1, total)},
                ).scalar_one_or_none()
                or "rcpt000001@example.net"
            )
            picked.append((row, address))
    now = datetime.now(UTC)

    def network(client: str, prefix: int) -> str:
        bits = 64 if ":" in client else prefix
        return str(ipaddress.ip_network(f"{client}/{bits}", strict=False))

    queries: dict[str, list[AuditQuery]] = {}
    for row, address in picked:
        message_id, queue_id, user, client = row
        window_end = now - timedelta(days=rng.randint(1, 300))
        for kind, query in (
            ("message-id", AuditQuery(message_id=normalise_message_id(f"<{message_id}>"))),
            ("queue-id", AuditQuery(queue_id=queue_id)),
            ("user", AuditQuery(user=user)),
            ("user --since 7d", AuditQuery(user=user, since=parse_time("7d", now))),
            ("ip", _ip(AuditQuery(), client)),
            ("cidr /24 (IPv6 /64)", _ip(AuditQuery(), network(client, 24))),
            ("cidr /16", _ip(AuditQuery(), network(client, 16))),
            (
                "cidr /16 --since 1d",
                _ip(AuditQuery(since=parse_time("1d", now)), network(client, 16)),
            ),
            ("recipient", AuditQuery(recipient=address)),
            (
                "since/until (1 hour)",
                AuditQuery(since=window_end - timedelta(hours=1), until=window_end),
            ),
            ("since 7d", AuditQuery(since=parse_time("7d", now))),
        ):
            queries.setdefault(kind, []).append(query)
    return queries


def _ip(query: AuditQuery, text_: str) -> AuditQuery:
    r = ip_range(text_)
    return AuditQuery(
        message_id=query.message_id,
        user=query.user,
        since=query.since,
        until=query.until,
        ip_low=r.low,
        ip_high=r.high,
    )


def time_searches(
    db: Database, queries: dict[str, list[AuditQuery]]
) -> list[tuple[str, float, float, int]]:
    store = AuditStore(db)
    results = []
    for kind, runs in queries.items():
        seconds, found = [], 0
        for query in runs:
            started = time.perf_counter()
            records = store.search(query)
            seconds.append(time.perf_counter() - started)
            found = max(found, len(records))
            if kind in ("message-id", "queue-id") and not records:
                raise AssertionError(f"{kind}: the record searched for was not found")
        results.append((kind, max(seconds), statistics.median(seconds), found))
    return results


@contextlib.contextmanager
def sqlite_db() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as folder:
        yield f"sqlite:///{Path(folder) / 'audit.db'}"


@contextlib.contextmanager
def postgres_db(admin_url: str) -> Iterator[str]:
    name = f"sgw_bench_audit_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def run_backend(name: str, url: str, args: argparse.Namespace) -> None:
    db = Database(url)
    try:
        db.upgrade()
        pop = population(args, random.Random(args.seed))
        print(f"{name}: loading {args.rows:,} messages ...")
        loaded = load(db, pop, args.rows, args.seed)
        with db.engine.connect() as c:
            recipients = c.exec_driver_sql("SELECT count(*) FROM audit_recipients").scalar_one()
        size = ""
        if name == "sqlite":
            path = make_url(url).database or ""
            size = f", file {os.path.getsize(path) / 2**20:,.0f} MiB"
        print(
            f"{name}: {args.rows:,} messages, {recipients:,} recipients loaded in "
            f"{loaded:,.1f} s (indexes included{size})"
        )
        results = time_searches(db, samples(db, args.repeat, args.seed + 1))
        print(f"\n{name}: audit search, {args.repeat} runs each, limit 100")
        print(f"{'search':<24}{'slowest':>10}{'median':>10}{'records':>9}")
        for kind, slowest, median, found in results:
            print(f"{kind:<24}{slowest * 1000:>8.1f}ms{median * 1000:>8.1f}ms{found:>9}")
        worst = max(r[1] for r in results)
        verdict = "under" if worst < 1 else "OVER"
        print(f"{name}: slowest search {worst * 1000:.1f} ms ({verdict} 1 s)\n")
    finally:
        db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="messages to generate")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=20_000, help="client addresses")
    parser.add_argument("--recipients", type=int, default=200_000, help="distinct recipients")
    parser.add_argument("--days", type=int, default=365, help="time the messages span")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each search kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--pg-admin",
        default=os.environ.get("SUBMITGW_TEST_PG", DEFAULT_PG_ADMIN),
        help="URL of a PostgreSQL database allowed to CREATE and DROP DATABASE",
    )
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with sqlite_db() as url:
            run_backend("sqlite", url, args)
    if args.backend in ("postgresql", "both"):
        with postgres_db(args.pg_admin) as url:
            run_backend("postgresql", url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
