"""Password history, app passwords and the account change trail.

Like every store, synchronous and called from worker threads. Rows of
`password_history` and `app_passwords` go with their user (ON DELETE CASCADE);
`account_events` are keyed by address and outlive the account, because the
trail must still say who deleted it and when.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from submitgw.store.db import Database
from submitgw.store.errors import NotFound
from submitgw.store.models import AccountEvent, AppPassword, PasswordHistory, User, utcnow
from submitgw.store.users import (
    NEXT_GENERATION,
    UserNotFound,
    _rowcount,
    next_generation,
    normalise_email,
)


@dataclass(frozen=True)
class AppPasswordRecord:
    id: int
    label: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class AppPasswordHash:
    """What a login needs to check one app password."""

    id: int
    label: str
    password_hash: str = field(repr=False)


@dataclass(frozen=True)
class EventRecord:
    id: int
    email: str
    action: str
    actor: str
    source: str
    detail: str
    at: datetime


class AppPasswordNotFound(NotFound):
    def __init__(self, email: str, app_id: int) -> None:
        super().__init__(f"{email} has no app password {app_id}")
        self.email = email
        self.app_id = app_id


def _user_id(session: Session, email: str) -> int:
    user_id = session.scalar(select(User.id).where(User.email == normalise_email(email)))
    if user_id is None:
        raise UserNotFound(normalise_email(email))
    return user_id


class CredentialStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- passwords ----------------------------------------------------------------------

    def recent_hashes(self, email: str, count: int) -> builtins.list[str]:
        """The current hash and the `count - 1` before it, newest first."""
        with self._db.session() as session:
            user = session.scalars(select(User).where(User.email == normalise_email(email))).first()
            if user is None:
                raise UserNotFound(normalise_email(email))
            older = session.scalars(
                select(PasswordHistory.password_hash)
                .where(PasswordHistory.user_id == user.id)
                .order_by(PasswordHistory.id.desc())
                .limit(max(count - 1, 0))
            ).all()
            return [user.password_hash, *older][:count]

    def change_password(self, email: str, new_hash: str, *, keep: int) -> None:
        """Set a new password in one transaction: the old hash moves to the history,
        which is trimmed to the `keep - 1` newest (the current one makes `keep`)."""
        now = utcnow()
        with self._db.session() as session:
            user = session.scalars(
                select(User).where(User.email == normalise_email(email)).with_for_update()
            ).first()
            if user is None:
                raise UserNotFound(normalise_email(email))
            session.add(
                PasswordHistory(user_id=user.id, password_hash=user.password_hash, replaced_at=now)
            )
            user.password_hash = new_hash
            user.password_changed_at = now
            user.password_expired = False
            user.updated_at = now
            user.credential_generation = User.credential_generation + 1
            session.flush()
            stale = session.scalars(
                select(PasswordHistory.id)
                .where(PasswordHistory.user_id == user.id)
                .order_by(PasswordHistory.id.desc())
                .offset(max(keep - 1, 0))
            ).all()
            if stale:
                session.execute(delete(PasswordHistory).where(PasswordHistory.id.in_(stale)))

    def expire_password(self, email: str) -> None:
        """The next login must set a new password (self-service) before mail goes out."""
        email = normalise_email(email)
        with self._db.session() as session:
            statement = (
                update(User)
                .where(User.email == email)
                .values(password_expired=True, updated_at=utcnow(), **NEXT_GENERATION)
            )
            if _rowcount(session, statement) == 0:
                raise UserNotFound(email)

    # --- app passwords ------------------------------------------------------------------

    def add_app_password(
        self, email: str, label: str, selector: str, password_hash: str
    ) -> AppPasswordRecord:
        """Raises ValueError if the selector is taken (the caller draws another)."""
        with self._db.session() as session:
            user_id = _user_id(session, email)
            row = AppPassword(
                user_id=user_id,
                label=label,
                selector=selector,
                password_hash=password_hash,
                created_at=utcnow(),
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError as exc:
                raise ValueError("selector already in use") from exc
            next_generation(session, user_id)
            return AppPasswordRecord(row.id, row.label, row.created_at, None)

    def app_passwords(self, email: str) -> builtins.list[AppPasswordRecord]:
        with self._db.session() as session:
            rows = session.scalars(
                select(AppPassword)
                .where(AppPassword.user_id == _user_id(session, email))
                .order_by(AppPassword.id)
            ).all()
            return [AppPasswordRecord(r.id, r.label, r.created_at, r.last_used_at) for r in rows]

    def find_app_password(self, email: str, selector: str) -> AppPasswordHash | None:
        with self._db.reading() as session:
            row = session.execute(
                select(AppPassword.id, AppPassword.label, AppPassword.password_hash)
                .join(User, User.id == AppPassword.user_id)
                .where(User.email == normalise_email(email), AppPassword.selector == selector)
            ).first()
            return AppPasswordHash(row.id, row.label, row.password_hash) if row else None

    def app_password_used(self, app_id: int) -> None:
        with self._db.session() as session:
            session.execute(
                update(AppPassword).where(AppPassword.id == app_id).values(last_used_at=utcnow())
            )

    def revoke_app_password(self, email: str, app_id: int) -> str:
        """Delete it (the trail keeps the record); returns its label."""
        with self._db.session() as session:
            user_id = _user_id(session, email)
            row = session.scalars(
                select(AppPassword).where(AppPassword.id == app_id, AppPassword.user_id == user_id)
            ).first()
            if row is None:
                raise AppPasswordNotFound(normalise_email(email), app_id)
            label = row.label
            session.delete(row)
            next_generation(session, user_id)
            return label

    # --- trail --------------------------------------------------------------------------

    def record(self, email: str, action: str, actor: str, source: str, detail: str = "") -> None:
        with self._db.session() as session:
            session.add(
                AccountEvent(
                    email=normalise_email(email),
                    action=action,
                    actor=actor[:320],
                    source=source[:200],
                    detail=detail[:400],
                    at=utcnow(),
                )
            )

    def events(self, email: str, limit: int = 100) -> builtins.list[EventRecord]:
        """Newest first."""
        with self._db.session() as session:
            rows = session.scalars(
                select(AccountEvent)
                .where(AccountEvent.email == normalise_email(email))
                .order_by(AccountEvent.id.desc())
                .limit(limit)
            ).all()
            return [
                EventRecord(r.id, r.email, r.action, r.actor, r.source, r.detail, r.at)
                for r in rows
            ]
