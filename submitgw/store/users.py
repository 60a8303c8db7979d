"""User accounts: the only place that reads or writes the `users` table."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, Update, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from submitgw.store.db import Database
from submitgw.store.errors import Exists, NotFound
from submitgw.store.models import User, utcnow
from submitgw.types import AUTH_POLICIES, DEFAULT_AUTH_POLICY


class UserExists(Exists):
    def __init__(self, email: str) -> None:
        super().__init__(f"user {email} already exists")
        self.email = email


class UserNotFound(NotFound):
    def __init__(self, email: str) -> None:
        super().__init__(f"no user {email}")
        self.email = email


@dataclass(frozen=True)
class UserRecord:
    """A detached snapshot of a user, safe to hand across threads."""

    id: int
    email: str
    # Kept out of repr so that logging a record never prints the hash.
    password_hash: str = field(repr=False)
    enabled: bool
    # One of AUTH_POLICIES: how this user may log in.
    auth_policy: str
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None
    password_changed_at: datetime | None = None
    # An admin forced a change: only self-service accepts the password, to set a new one.
    password_expired: bool = False
    # Changes with every change to how the user may log in (see `models.User`).
    credential_generation: int = 0


def _record(user: User) -> UserRecord:
    return UserRecord(
        id=user.id,
        email=user.email,
        password_hash=user.password_hash,
        enabled=user.enabled,
        auth_policy=user.auth_policy,
        created_at=user.created_at,
        updated_at=user.updated_at,
        last_login_at=user.last_login_at,
        password_changed_at=user.password_changed_at,
        password_expired=user.password_expired,
        credential_generation=user.credential_generation,
    )


def check_auth_policy(policy: str) -> str:
    """The policy unchanged if it is known; a ValueError naming the choices otherwise."""
    if policy not in AUTH_POLICIES:
        raise ValueError(
            f"unknown authentication policy {policy!r} (one of: {', '.join(AUTH_POLICIES)})"
        )
    return policy


def normalise_email(email: str) -> str:
    """Addresses are compared case-insensitively, so they are stored in one case."""
    return email.lower()


# The values that move a user's credential generation on, for an UPDATE of its row.
NEXT_GENERATION = {"credential_generation": User.credential_generation + 1}


def next_generation(session: Session, user_id: int) -> None:
    """Move the user's credential generation on, in `session`'s transaction: part of every
    change to the user's app passwords or networks, which live in other tables."""
    session.execute(update(User).where(User.id == user_id).values(**NEXT_GENERATION))


class UserStore:
    """Synchronous CRUD on users; the server calls it from worker threads."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self, email: str, password_hash: str, auth_policy: str = DEFAULT_AUTH_POLICY
    ) -> UserRecord:
        email = normalise_email(email)
        now = utcnow()
        user = User(
            email=email,
            password_hash=password_hash,
            auth_policy=check_auth_policy(auth_policy),
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        try:
            with self._db.session() as session:
                session.add(user)
                session.flush()
                return _record(user)
        except IntegrityError as exc:
            raise UserExists(email) from exc

    def get(self, email: str) -> UserRecord | None:
        with self._db.reading() as session:
            user = session.scalars(select(User).where(User.email == normalise_email(email))).first()
            return _record(user) if user is not None else None

    def set_enabled(self, email: str, enabled: bool) -> None:
        self._update(email, enabled=enabled, updated_at=utcnow(), **NEXT_GENERATION)

    def set_auth_policy(self, email: str, policy: str) -> None:
        """Takes effect at the user's next login or TLS session, on every gateway: the new
        generation voids the logins they remember."""
        policy = check_auth_policy(policy)
        self._update(email, auth_policy=policy, updated_at=utcnow(), **NEXT_GENERATION)

    def record_login(self, email: str, new_hash: str | None = None) -> None:
        """Note a successful login; `new_hash` replaces a hash made with outdated parameters.

        A rehash keeps the same password, so it is not an account change and
        leaves `updated_at` and the credential generation alone.
        """
        values: dict[str, Any] = {"last_login_at": utcnow()}
        if new_hash is not None:
            values["password_hash"] = new_hash
        self._update(email, **values)

    def delete(self, email: str) -> None:
        email = normalise_email(email)
        with self._db.session() as session:
            if _rowcount(session, delete(User).where(User.email == email)) == 0:
                raise UserNotFound(email)

    def _update(self, email: str, **values: Any) -> None:
        """One UPDATE statement: no read-modify-write window between concurrent logins."""
        email = normalise_email(email)
        with self._db.session() as session:
            statement = update(User).where(User.email == email).values(**values)
            if _rowcount(session, statement) == 0:
                raise UserNotFound(email)

    def list(self) -> builtins.list[UserRecord]:
        """All users by email, sorted in Python so the order is the same on every backend."""
        with self._db.session() as session:
            records = [_record(user) for user in session.scalars(select(User))]
        return sorted(records, key=lambda record: record.email)


def _rowcount(session: Session, statement: Update | Delete) -> int:
    """Rows hit by a bulk UPDATE/DELETE; zero means the user does not exist."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount
