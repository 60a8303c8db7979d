"""Every ORM table. Each schema change here needs a hand-written migration in `migrations/versions`.

The repositories (users, certificates, access, counters, credentials, senders, audit)
import their tables from here; nothing here imports them.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
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


# Rate and login counter keys: "ok:acct:" plus the longest login name, with room to spare.
KEY_LENGTH = 400
# SQLite counts ids by itself only for a column declared exactly INTEGER PRIMARY KEY
# (its 64-bit rowid); PostgreSQL needs BIGINT for tables that grow by millions of rows.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_generation() -> int:
    """Where a new user's `credential_generation` starts: a random number, so that a user
    deleted and added again (SQLite may even give the new row the old id) never carries
    a generation a gateway remembers for the old one."""
    return secrets.randbits(62)


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
    # How a user may log in (`types.AUTH_POLICIES`): the gateway enforces the policy, the
    # CHECK keeps typos out.
    __table_args__ = (
        CheckConstraint(
            "auth_policy IN "
            "('password', 'certificate', 'password-or-certificate', 'password+certificate')",
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
    # `types.DEFAULT_AUTH_POLICY`, spelled out as the CHECK is. Rows from before 0007 keep
    # theirs; only new users get either-credential logins.
    auth_policy: Mapped[str] = mapped_column(
        String(32), default="password-or-certificate", server_default="password-or-certificate"
    )
    # When the current password was set (its age for [passwords] max_age_days), and
    # whether an admin forced a change ('user passwd --expire').
    password_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    password_expired: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Moved on (+1) in the same transaction as every change to the user's password, app
    # passwords, policy, state or networks: a gateway trusts a login it remembers only
    # while the row still carries the generation the password was verified under.
    credential_generation: Mapped[int] = mapped_column(
        BigInteger, default=new_generation, server_default="0"
    )


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


class AccessRuleRow(Base):
    """One allow/deny rule; `rule` is normalised (see `submitgw.rules.access.parse_rule`).

    `rule` is unique: the same client text with two actions would leave the
    outcome to a tie-break the admin never chose.
    """

    __tablename__ = "access_rules"
    __table_args__ = (CheckConstraint("action IN ('allow', 'deny')", name="action"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(8))
    rule: Mapped[str] = mapped_column(String(300), unique=True)
    comment: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class UserNetworkRow(Base):
    """A network a user may log in from; a user without any may log in from anywhere."""

    __tablename__ = "user_networks"
    __table_args__ = (UniqueConstraint("user_id", "cidr", name="uq_user_networks_user_id_cidr"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    cidr: Mapped[str] = mapped_column(String(50))


class RateCounter(Base):
    """Messages and recipients a key sent during one bucket of time."""

    __tablename__ = "rate_counters"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    messages: Mapped[int] = mapped_column(Integer)
    recipients: Mapped[int] = mapped_column(Integer)


class AuthFailure(Base):
    """Logins of an account name or a client during one bucket of time.

    Failed ones under `acct:`/`ip:` keys, successful ones under `ok:` keys.
    """

    __tablename__ = "auth_failures"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    failures: Mapped[int] = mapped_column(Integer)


class AuthLockout(Base):
    """An account name or client refused every login until `locked_until`."""

    __tablename__ = "auth_lockouts"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    locked_at: Mapped[datetime] = mapped_column(UtcDateTime)
    locked_until: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    # The failures counted in the window when the lock was set, for the admin.
    failures: Mapped[int] = mapped_column(Integer)


class UserLimit(Base):
    """A user's own sending limits; NULL keeps the configured default."""

    __tablename__ = "user_limits"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    messages_per_hour: Mapped[int | None] = mapped_column(Integer)
    recipients_per_hour: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class PasswordHistory(Base):
    """A password hash the user had before, kept to refuse its reuse."""

    __tablename__ = "password_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    replaced_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AppPassword(Base):
    """A generated per-device password; `selector` (its first group) finds the one hash to check."""

    __tablename__ = "app_passwords"
    __table_args__ = (UniqueConstraint("user_id", "selector"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(100))
    selector: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AccountEvent(Base):
    """One change to an account: what, to whom, by whom, from where, when."""

    __tablename__ = "account_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    action: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(String(400), default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class SenderBinding(Base):
    """One address or `@domain` a user may send as, in its comparison form."""

    __tablename__ = "sender_bindings"
    __table_args__ = (UniqueConstraint("user_id", "pattern"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    pattern: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AuditEvent(Base):
    """Something that happened on an SMTP connection, other than a message: a session's
    end, a login attempt, a certificate verdict, an access decision, a limit or lockout hit,
    a refusal. The fields every search uses are columns; the rest is JSON in `detail`."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_username_at", "username", "at"),
        Index("ix_audit_events_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(20))
    session: Mapped[str | None] = mapped_column(String(32), index=True)
    client: Mapped[str | None] = mapped_column(String(64))
    # The client address as 16 sortable bytes (IPv4 in its IPv4-mapped form): a CIDR
    # search is a range of this column.
    ip: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    username: Mapped[str | None] = mapped_column(String(320))
    result: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="{}")


class AuditMessage(Base):
    """A message the gateway handed to the smarthost: who sent it, how, and what came of it."""

    __tablename__ = "audit_messages"
    __table_args__ = (
        Index("ix_audit_messages_username_at", "username", "at"),
        Index("ix_audit_messages_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    queue_id: Mapped[str] = mapped_column(String(32), index=True)
    # The Message-ID header as relayed, without angle brackets.
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    session: Mapped[str | None] = mapped_column(String(32))
    client: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    username: Mapped[str] = mapped_column(String(320))
    mechanism: Mapped[str | None] = mapped_column(String(32))
    cert_serial: Mapped[str | None] = mapped_column(String(64))
    cert_fingerprint: Mapped[str | None] = mapped_column(String(64))
    app_password: Mapped[str | None] = mapped_column(String(200))
    sender: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    recipient_count: Mapped[int] = mapped_column(Integer)
    smarthost: Mapped[str | None] = mapped_column(String(300))
    smarthost_queue_id: Mapped[str | None] = mapped_column(String(100), index=True)
    reply: Mapped[str] = mapped_column(Text)


class AuditRecipient(Base):
    """One recipient of an audited message, in its own row so that a search by recipient
    (a complaint) is an index lookup; lower-cased, with the message's time for ordering."""

    __tablename__ = "audit_recipients"
    __table_args__ = (Index("ix_audit_recipients_address_at", "address", "at"),)

    message: Mapped[int] = mapped_column(
        BIG_ID,
        ForeignKey("audit_messages.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    address: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
