"""Sender bindings: the only place that reads or writes `sender_bindings`.

A user with no rows here may send as their own address only. Each row adds an
address (`local@domain`) or a whole domain (`@domain`) the user may use as
envelope sender and in the From: header. Rows go with their user (ON DELETE CASCADE).
"""

from __future__ import annotations

import builtins

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from submitgw.store.db import Database
from submitgw.store.errors import Exists, NotFound
from submitgw.store.models import SenderBinding, User, utcnow
from submitgw.store.users import UserNotFound, _rowcount, normalise_email


class SenderExists(Exists):
    def __init__(self, email: str, pattern: str, *, own: bool = False) -> None:
        why = "is the user's own address, always allowed" if own else f"is already bound to {email}"
        super().__init__(f"{pattern} {why}")
        self.email = email
        self.pattern = pattern


class SenderNotFound(NotFound):
    def __init__(self, email: str, pattern: str) -> None:
        super().__init__(f"{pattern} is not bound to {email}")
        self.email = email
        self.pattern = pattern


def _user_id(session: Session, email: str) -> int:
    user_id = session.scalar(select(User.id).where(User.email == email))
    if user_id is None:
        raise UserNotFound(email)
    return user_id


# Built once: a statement object made per call costs more CPU than running it.
_ALLOWED = (
    select(User.id, SenderBinding.pattern)
    .outerjoin(SenderBinding, SenderBinding.user_id == User.id)
    .where(User.email == bindparam("email"))
)


class SenderStore:
    """Synchronous access; the gateway calls `allowed` from a worker thread once per session."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, email: str, pattern: str) -> str:
        """Bind `pattern`, as `rules.binding.normalise_pattern` made it, to the user.

        Whether it is the user's own address (always allowed, never a binding) is the
        caller's decision: it needs the same Unicode folding as the pattern.
        """
        email = normalise_email(email)
        try:
            with self._db.session() as session:
                user_id = _user_id(session, email)
                session.add(SenderBinding(user_id=user_id, pattern=pattern, created_at=utcnow()))
                session.flush()
        except IntegrityError as exc:
            raise SenderExists(email, pattern) from exc
        return pattern

    def remove(self, email: str, pattern: str) -> str:
        """Unbind `pattern` (normalised like `add`'s); returns it as it was stored."""
        email = normalise_email(email)
        with self._db.session() as session:
            user_id = _user_id(session, email)
            statement = delete(SenderBinding).where(
                SenderBinding.user_id == user_id, SenderBinding.pattern == pattern
            )
            if _rowcount(session, statement) == 0:
                raise SenderNotFound(email, pattern)
        return pattern

    def list(self, email: str) -> builtins.list[str]:
        """The user's bindings (not their own address), sorted the same on every backend."""
        email = normalise_email(email)
        with self._db.reading() as session:
            user_id = _user_id(session, email)
            rows = session.scalars(
                select(SenderBinding.pattern).where(SenderBinding.user_id == user_id)
            )
            patterns = builtins.list(rows)
        # Domains first, then addresses, each alphabetically: the order an admin reads.
        return sorted(patterns, key=lambda p: (not p.startswith("@"), p))

    def allowed(self, email: str) -> builtins.list[str]:
        """What the user may send as: their own address first, then the bindings.

        Read at every session's first MAIL: one Core query (the user, outer-joined
        to the bindings) rather than `list`'s two through the ORM.
        """
        email = normalise_email(email)
        with self._db.reader.connect() as connection:
            rows = connection.execute(_ALLOWED, {"email": email}).all()
        if not rows:
            raise UserNotFound(email)
        patterns = [pattern for _, pattern in rows if pattern is not None]
        return [email, *sorted(patterns, key=lambda p: (not p.startswith("@"), p))]
