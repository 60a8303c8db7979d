"""The audit trail in the database: written in batches, searched by index, pruned in slices.

Like every store, synchronous: the gateway writes from its trail thread, the CLI
searches and prunes. A batch is one transaction, so a batch is there whole or
not at all. Values longer than their column are cut here, where the widths are
known: a client's overlong Message-ID must never make a batch fail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, or_, select
from sqlalchemy.orm import Session

from submitgw.store.db import Database
from submitgw.store.models import AccountEvent, AuditEvent, AuditMessage, AuditRecipient

# Rows deleted per transaction by `prune`: each slice holds its locks only briefly.
PRUNE_BATCH = 5000


def _fit(value: str | None, width: int) -> str | None:
    """Cut to the column's width; NUL, which PostgreSQL text cannot hold, is dropped."""
    return None if value is None else value.replace("\x00", "")[:width]


@dataclass(frozen=True)
class EventRow:
    """An event other than a message, as the trail keeps it."""

    at: datetime
    kind: str
    session: str | None
    client: str | None
    ip: bytes | None
    user: str | None
    result: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MessageRow:
    at: datetime
    queue_id: str
    message_id: str | None
    session: str | None
    client: str | None
    ip: bytes | None
    user: str
    mechanism: str | None
    cert_serial: str | None
    cert_fingerprint: str | None
    app_password: str | None
    sender: str
    size: int
    recipients: tuple[str, ...]
    smarthost: str | None
    smarthost_queue_id: str | None
    reply: str


@dataclass(frozen=True)
class AuditQuery:
    """Filters that AND together; None leaves a field free. `ip_low`/`ip_high` are the key
    range of an address or network (both ends included); `until` is exclusive."""

    message_id: str | None = None
    queue_id: str | None = None
    user: str | None = None
    ip_low: bytes | None = None
    ip_high: bytes | None = None
    recipient: str | None = None
    session: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100

    @property
    def messages_only(self) -> bool:
        """Only messages have a Message-ID, queue ids and recipients."""
        return any(v is not None for v in (self.message_id, self.queue_id, self.recipient))


@dataclass(frozen=True)
class AuditRecord:
    """One line of a search's answer: a message, an event, or an account change (`account`)."""

    kind: str
    at: datetime
    user: str | None
    client: str | None
    session: str | None
    fields: dict[str, Any]
    # Ties on `at` keep the order the rows were written in.
    order: int = 0


def _event_values(row: EventRow) -> dict[str, Any]:
    return {
        "at": row.at,
        "kind": row.kind[:20],
        "session": _fit(row.session, 32),
        "client": _fit(row.client, 64),
        "ip": row.ip,
        "username": _fit(row.user, 320),
        "result": _fit(row.result, 64),
        "detail": json.dumps(row.detail, default=str),
    }


def _message_values(row: MessageRow) -> dict[str, Any]:
    return {
        "at": row.at,
        "queue_id": _fit(row.queue_id, 32),
        "message_id": _fit(row.message_id, 255),
        "session": _fit(row.session, 32),
        "client": _fit(row.client, 64),
        "ip": row.ip,
        "username": _fit(row.user, 320),
        "mechanism": _fit(row.mechanism, 32),
        "cert_serial": _fit(row.cert_serial, 64),
        "cert_fingerprint": _fit(row.cert_fingerprint, 64),
        "app_password": _fit(row.app_password, 200),
        "sender": _fit(row.sender, 2000),
        "size": row.size,
        "recipient_count": len(row.recipients),
        "smarthost": _fit(row.smarthost, 300),
        "smarthost_queue_id": _fit(row.smarthost_queue_id, 100),
        "reply": _fit(row.reply, 2000),
    }


def recipient_key(address: str) -> str:
    """A recipient as stored and searched: lower-cased, so a complaint finds it however
    the sender capitalised it."""
    return address.replace("\x00", "").strip().strip("<>").lower()[:320]


_INSERT_EVENTS = insert(AuditEvent)
# Statements of 100 rows: psycopg reparses every new statement text, and a page of 1000
# rows of 17 values costs it more than the rows cost the server.
_INSERT_MESSAGES = (
    insert(AuditMessage)
    .returning(AuditMessage.id, sort_by_parameter_order=True)
    .execution_options(insertmanyvalues_page_size=100)
)
_INSERT_RECIPIENTS = insert(AuditRecipient)


class AuditStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- writing ------------------------------------------------------------------------

    def write(self, events: Sequence[EventRow], messages: Sequence[MessageRow]) -> None:
        """Every row in one transaction (executemany, no round trip per row), through
        statements built once on a plain connection: no ORM unit of work per batch."""
        with self._db.engine.begin() as connection:
            if events:
                connection.execute(_INSERT_EVENTS, [_event_values(e) for e in events])
            if not messages:
                return
            ids = connection.execute(
                _INSERT_MESSAGES, [_message_values(m) for m in messages]
            ).scalars()
            recipients = [
                {
                    "message": message_id,
                    "position": position,
                    "address": recipient_key(a),
                    "at": m.at,
                }
                for message_id, m in zip(ids, messages, strict=True)
                for position, a in enumerate(m.recipients)
            ]
            if recipients:
                connection.execute(_INSERT_RECIPIENTS, recipients)

    # --- searching ----------------------------------------------------------------------

    def search(self, query: AuditQuery) -> list[AuditRecord]:
        """Newest first, at most `query.limit`: messages, events and (for a user or a time
        range) account changes, merged by time."""
        found: list[AuditRecord] = []
        with self._db.reading() as session:
            found += self._messages(session, query)
            if not query.messages_only:
                found += self._events(session, query)
                if query.ip_low is None and query.session is None:
                    found += self._account_changes(session, query)
        found.sort(key=lambda r: (r.at, r.order), reverse=True)
        return found[: query.limit]

    @staticmethod
    def _common(
        query: AuditQuery, table: type[AuditEvent] | type[AuditMessage]
    ) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if query.user is not None:
            where.append(table.username == query.user)
        if query.ip_low is not None and query.ip_high is not None:
            where.append(table.ip.between(query.ip_low, query.ip_high))
        if query.session is not None:
            where.append(table.session == query.session)
        if query.since is not None:
            where.append(table.at >= query.since)
        if query.until is not None:
            where.append(table.at < query.until)
        return where

    def _messages(self, session: Session, query: AuditQuery) -> list[AuditRecord]:
        where = self._common(query, AuditMessage)
        if query.message_id is not None:
            where.append(AuditMessage.message_id == query.message_id[:255])
        if query.queue_id is not None:
            where.append(
                or_(
                    AuditMessage.queue_id == query.queue_id,
                    AuditMessage.smarthost_queue_id == query.queue_id,
                )
            )
        if query.recipient is not None:
            # Walk the recipient's index newest first; each row leads to its message.
            statement = select(AuditMessage).join(
                AuditRecipient, AuditRecipient.message == AuditMessage.id
            )
            statement = statement.where(AuditRecipient.address == recipient_key(query.recipient))
            if query.since is not None:
                statement = statement.where(AuditRecipient.at >= query.since)
            if query.until is not None:
                statement = statement.where(AuditRecipient.at < query.until)
            statement = statement.order_by(AuditRecipient.at.desc(), AuditMessage.id.desc())
        else:
            statement = select(AuditMessage).order_by(
                AuditMessage.at.desc(), AuditMessage.id.desc()
            )
        rows = session.scalars(statement.where(*where).limit(query.limit)).unique().all()
        if not rows:
            return []
        recipients: dict[int, list[str]] = {}
        for message, address in session.execute(
            select(AuditRecipient.message, AuditRecipient.address)
            .where(AuditRecipient.message.in_([r.id for r in rows]))
            .order_by(AuditRecipient.message, AuditRecipient.position)
        ):
            recipients.setdefault(message, []).append(address)
        return [
            AuditRecord(
                "message",
                r.at,
                r.username,
                r.client,
                r.session,
                {
                    "queue_id": r.queue_id,
                    "message_id": r.message_id,
                    "sender": r.sender,
                    "recipients": recipients.get(r.id, []),
                    "size": r.size,
                    "mechanism": r.mechanism,
                    "cert_serial": r.cert_serial,
                    "cert_fingerprint": r.cert_fingerprint,
                    "app_password": r.app_password,
                    "smarthost": r.smarthost,
                    "smarthost_queue_id": r.smarthost_queue_id,
                    "reply": r.reply,
                },
                r.id,
            )
            for r in rows
        ]

    def _events(self, session: Session, query: AuditQuery) -> list[AuditRecord]:
        rows = session.scalars(
            select(AuditEvent)
            .where(*self._common(query, AuditEvent))
            .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
            .limit(query.limit)
        ).all()
        return [
            AuditRecord(
                r.kind,
                r.at,
                r.username,
                r.client,
                r.session,
                {"result": r.result, **json.loads(r.detail or "{}")},
                r.id,
            )
            for r in rows
        ]

    def _account_changes(self, session: Session, query: AuditQuery) -> list[AuditRecord]:
        where: list[ColumnElement[bool]] = []
        if query.user is not None:
            where.append(AccountEvent.email == query.user)
        if query.since is not None:
            where.append(AccountEvent.at >= query.since)
        if query.until is not None:
            where.append(AccountEvent.at < query.until)
        rows = session.scalars(
            select(AccountEvent).where(*where).order_by(AccountEvent.id.desc()).limit(query.limit)
        ).all()
        return [
            AuditRecord(
                "account",
                r.at,
                r.email or None,
                None,
                None,
                {"action": r.action, "actor": r.actor, "source": r.source, "detail": r.detail},
                r.id,
            )
            for r in rows
        ]

    # --- retention ----------------------------------------------------------------------

    def prune(self, before: datetime, batch: int = PRUNE_BATCH) -> int:
        """Delete messages (with their recipients) and events older than `before`, `batch`
        rows per transaction; the number deleted. The account trail is kept."""
        deleted = 0
        while True:
            step = self.prune_slice(before, batch)
            deleted += step
            if step < batch:
                return deleted

    def prune_slice(self, before: datetime, batch: int = PRUNE_BATCH) -> int:
        """One transaction of `prune`: at most `batch` rows, messages first; fewer means done."""
        deleted = 0
        with self._db.session() as session:
            for table in (AuditMessage, AuditEvent):
                ids = session.scalars(
                    select(table.id).where(table.at < before).limit(batch - deleted)
                ).all()
                if not ids:
                    continue
                if table is AuditMessage:
                    session.execute(delete(AuditRecipient).where(AuditRecipient.message.in_(ids)))
                session.execute(delete(table).where(table.id.in_(ids)))
                deleted += len(ids)
                if deleted >= batch:
                    break
        return deleted
