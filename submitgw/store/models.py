"""ORM tables. Every schema change here needs a hand-written migration in `migrations/versions`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to (and later drop) them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# How a user may log in: AUTH with a password, a client certificate alone, or both
# in the same session. The gateway enforces them; the CHECK keeps typos out.
AUTH_POLICIES = ("password", "certificate", "password+certificate")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend.

    SQLite keeps no zone and PostgreSQL answers in the session's zone; normalising
    here means callers can compare and format timestamps without caring which.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC timestamp column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A login account; `email` is the SMTP AUTH username."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "auth_policy IN ('password', 'certificate', 'password+certificate')",
            name="auth_policy",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    auth_policy: Mapped[str] = mapped_column(
        String(32), default="password", server_default="password"
    )
    # When the current password was set (its age for [passwords] max_age_days), and
    # whether an admin forced a change ('user passwd --expire').
    password_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    password_expired: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Certificate(Base):
    """A client certificate the CA issued, bound to one user.

    The gateway looks certificates up by fingerprint on every TLS session, so
    revoking one or deleting its user takes effect without reloading anything.
    """

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(40), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String)
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    pem: Mapped[str] = mapped_column(Text)


# Tables defined in their store modules register on `Base.metadata` when imported;
# importing them here means whoever loads the models (Alembic, the schema tests)
# sees every table. At the end, because those modules import `Base` from here.
from submitgw.store import counters as _counters  # noqa: E402, F401
from submitgw.store import credentials as _credentials  # noqa: E402, F401
from submitgw.store import senders as _senders  # noqa: E402, F401
