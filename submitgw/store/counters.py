"""Sending counters, failed logins, lockouts and per-user limits: the only code on their tables.

Counters are rows of (key, bucket start, counts): adding to one is a single
`INSERT … ON CONFLICT DO UPDATE` (SQLite and PostgreSQL alike), and a rolling
window is a SUM over the key's recent buckets, served by the primary key. Rows
that have left every window are pruned by bucket (indexed). Upserts of
several rows go in sorted order, so two gateways updating the same keys lock
the rows in the same order and cannot deadlock.

Everything here is keyed by name, not by a `users` row, because failed logins
must be counted and locked for names that do not exist exactly as for names
that do. Only the per-user limits belong to a user (and go with it).
Successful logins are counted in `auth_failures` too, under keys of their own
(`ok:acct:…`, `ok:ip:…`, see `limits`): one window query then reads a login's
failures and successes together, and one prune forgets both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from submitgw.store.db import Database
from submitgw.store.models import (
    AuthFailure,
    AuthLockout,
    Base,
    RateCounter,
    User,
    UserLimit,
    utcnow,
)
from submitgw.store.users import UserNotFound, normalise_email
from submitgw.types import Override


@dataclass(frozen=True)
class Lock:
    key: str
    locked_at: datetime
    locked_until: datetime
    failures: int


@dataclass(frozen=True)
class LoginState:
    """What a login attempt needs to know before any password is checked."""

    locks: tuple[Lock, ...]
    failures: dict[str, int]


def _insert(dialect: str, table: type[Base]) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_update` on both backends."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def _counting_upsert(dialect: str, table: type[Base], counts: list[str]) -> Any:
    """`INSERT … ON CONFLICT (key, bucket) DO UPDATE` adding `counts` to the row."""
    statement = _insert(dialect, table)
    columns = table.__table__.c
    return statement.on_conflict_do_update(
        index_elements=["key", "bucket"],
        set_={name: columns[name] + statement.excluded[name] for name in counts},
    )


def _window_sums(table: type[Base], columns: list[Any]) -> Any:
    """SUM of `columns` per key over the buckets since `:since`, for the keys in `:keys`."""
    key, bucket = table.__table__.c.key, table.__table__.c.bucket
    return (
        select(key, *(func.sum(c) for c in columns))
        .where(key.in_(bindparam("keys", expanding=True)), bucket >= bindparam("since"))
        .group_by(key)
    )


_USAGE = _window_sums(RateCounter, [RateCounter.messages, RateCounter.recipients])
_FAILURES = _window_sums(AuthFailure, [AuthFailure.failures])
_OVERRIDE = (
    select(UserLimit.messages_per_hour, UserLimit.recipients_per_hour)
    .join(User, User.id == UserLimit.user_id)
    .where(User.email == bindparam("email"))
)
_LOCKS = select(
    AuthLockout.key, AuthLockout.locked_at, AuthLockout.locked_until, AuthLockout.failures
).where(AuthLockout.key.in_(bindparam("keys", expanding=True)))


class CounterStore:
    """Synchronous; the gateway calls it from worker threads, the CLI directly.

    The per-message and per-login paths use Core statements built once, on a
    plain connection: no ORM unit of work and no statement compiled twice, as
    they run for every message (see "What the limits cost" in the README).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        dialect = db.engine.dialect.name
        self._add_rates = _counting_upsert(dialect, RateCounter, ["messages", "recipients"])
        self._add_failures = _counting_upsert(dialect, AuthFailure, ["failures"])
        self._dialect = dialect

    # --- sending counters ---------------------------------------------------------------

    def usage(
        self, keys: Iterable[str], since: int, user: str | None = None
    ) -> tuple[dict[str, tuple[int, int]], Override | None]:
        """Messages and recipients per key since bucket `since`, and `user`'s own limits.

        One transaction, so MAIL costs one trip to the database pool.
        """
        with self._db.reader.begin() as connection:
            rows = connection.execute(_USAGE, {"keys": list(keys), "since": since})
            used = {row[0]: (int(row[1] or 0), int(row[2] or 0)) for row in rows}
            override = None
            if user:
                own = connection.execute(_OVERRIDE, {"email": normalise_email(user)}).first()
                override = Override(own[0], own[1]) if own is not None else None
        return used, override

    def buckets(self, key: str, since: int, measure: str) -> list[tuple[int, int]]:
        """(bucket start, count) of one key, for working out when a limit frees up."""
        column = RateCounter.messages if measure == "messages" else RateCounter.recipients
        with self._db.reader.begin() as connection:
            rows = connection.execute(
                select(RateCounter.bucket, column).where(
                    RateCounter.key == key, RateCounter.bucket >= since
                )
            )
            return [(int(bucket), int(count)) for bucket, count in rows]

    def add(self, keys: Iterable[str], bucket: int, messages: int, recipients: int) -> None:
        """Count `messages` and `recipients` for every key in one bucket."""
        self.add_counts({(key, bucket): (messages, recipients) for key in keys})

    def add_counts(
        self,
        counts: dict[tuple[str, int], tuple[int, int]],
        logins: dict[tuple[str, int], int] | None = None,
    ) -> None:
        """Add (messages, recipients) to each (key, bucket), and `logins` successful logins
        to each of theirs: one upsert each, one transaction.

        Rows go in sorted order, so concurrent gateways lock them alike (no deadlock).
        """
        rows = [
            {"key": key, "bucket": bucket, "messages": messages, "recipients": recipients}
            for (key, bucket), (messages, recipients) in sorted(counts.items())
        ]
        successes = [
            {"key": key, "bucket": bucket, "failures": count}
            for (key, bucket), count in sorted((logins or {}).items())
        ]
        with self._db.engine.begin() as connection:
            if rows:
                connection.execute(self._add_rates, rows)
            if successes:
                connection.execute(self._add_failures, successes)

    def prune(self, counters_before: int, failures_before: int) -> None:
        """Forget buckets older than any window, and lockouts that have expired."""
        with self._db.engine.begin() as connection:
            connection.execute(delete(RateCounter).where(RateCounter.bucket < counters_before))
            connection.execute(delete(AuthFailure).where(AuthFailure.bucket < failures_before))
            connection.execute(delete(AuthLockout).where(AuthLockout.locked_until < utcnow()))

    # --- per-user limits ----------------------------------------------------------------

    def override(self, email: str) -> Override | None:
        with self._db.session() as session:
            _user_id(session, normalise_email(email))
            return _override(session, normalise_email(email))

    def set_override(self, email: str, **changes: int | None) -> Override:
        """Change `messages` and/or `recipients` (None: back to the default); the result.

        A user whose limits are both back to the default has no row left.
        """
        email = normalise_email(email)
        with self._db.session() as session:
            user_id = _user_id(session, email)
            row = session.get(UserLimit, user_id)
            current = Override(
                row.messages_per_hour if row else None, row.recipients_per_hour if row else None
            )
            new = Override(
                changes.get("messages", current.messages),
                changes.get("recipients", current.recipients),
            )
            if new == Override():
                if row is not None:
                    session.delete(row)
                return new
            if row is None:
                row = UserLimit(user_id=user_id)
                session.add(row)
            row.messages_per_hour = new.messages
            row.recipients_per_hour = new.recipients
            row.updated_at = utcnow()
        return new

    # --- failed logins and lockouts -----------------------------------------------------

    def login_state(self, keys: Iterable[str], since: int) -> LoginState:
        """Locks on the keys (expired ones included) and their counts since bucket `since`.

        `failures` holds the count of every key asked for, `ok:` keys included.
        """
        keys = list(keys)
        with self._db.reader.begin() as connection:
            locks = tuple(
                Lock(row.key, row.locked_at, row.locked_until, row.failures)
                for row in connection.execute(_LOCKS, {"keys": keys})
            )
            rows = connection.execute(_FAILURES, {"keys": keys, "since": since})
            failures = {row[0]: int(row[1] or 0) for row in rows}
        return LoginState(locks, failures)

    def record_failure(self, keys: Iterable[str], bucket: int, since: int) -> dict[str, int]:
        """Count one failed login for every key; their failures since `since`, this one included."""
        keys = sorted(set(keys))
        with self._db.engine.begin() as connection:
            rows = [{"key": key, "bucket": bucket, "failures": 1} for key in keys]
            connection.execute(self._add_failures, rows)
            sums = connection.execute(_FAILURES, {"keys": keys, "since": since})
            counted = {row[0]: int(row[1] or 0) for row in sums}
        return {key: counted.get(key, 0) for key in keys}

    def record_success(self, keys: Iterable[str], bucket: int, forget: str | None = None) -> None:
        """Count one successful login for every key, and forget the failures of `forget`.

        One transaction: a login writes once, whether or not it had failures to forget.
        """
        rows = [{"key": key, "bucket": bucket, "failures": 1} for key in sorted(set(keys))]
        with self._db.engine.begin() as connection:
            connection.execute(self._add_failures, rows)
            if forget is not None:
                connection.execute(delete(AuthFailure).where(AuthFailure.key == forget))

    def lock(self, key: str, until: datetime, failures: int) -> None:
        """Lock `key` until `until`; a lock set meanwhile by another gateway is replaced.

        An upsert, because two gateways may reach the threshold at the same moment.
        """
        with self._db.session() as session:
            statement = _insert(self._dialect, AuthLockout).values(
                key=key, locked_at=utcnow(), locked_until=until, failures=failures
            )
            statement = statement.on_conflict_do_update(
                index_elements=["key"],
                set_={
                    "locked_at": statement.excluded.locked_at,
                    "locked_until": statement.excluded.locked_until,
                    "failures": statement.excluded.failures,
                },
            )
            session.execute(statement)

    def forget_failures(self, key: str) -> None:
        """A successful login: the account starts afresh (its client's failures stay)."""
        with self._db.engine.begin() as connection:
            connection.execute(delete(AuthFailure).where(AuthFailure.key == key))

    def unlock(self, key: str) -> Lock | None:
        """Lift the lock on `key` and forget its failures; the lock that was lifted, if any."""
        with self._db.session() as session:
            row = session.get(AuthLockout, key)
            lifted = None
            if row is not None:
                lifted = Lock(row.key, row.locked_at, row.locked_until, row.failures)
                session.delete(row)
            session.execute(delete(AuthFailure).where(AuthFailure.key == key))
        return lifted


def _user_id(session: Session, email: str) -> int:
    user_id = session.scalar(select(User.id).where(User.email == email))
    if user_id is None:
        raise UserNotFound(email)
    return user_id


def _override(session: Session, email: str) -> Override | None:
    row = session.execute(
        select(UserLimit.messages_per_hour, UserLimit.recipients_per_hour)
        .join(User, User.id == UserLimit.user_id)
        .where(User.email == email)
    ).first()
    return Override(row[0], row[1]) if row is not None else None
