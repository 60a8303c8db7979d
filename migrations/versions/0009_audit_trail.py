"""The audit trail: connection events, messages and their recipients.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10

New tables only; nothing existing is touched. Every search of `submitgw audit
search` has its index: Message-ID, queue ids, user and time, client address
(16 sortable bytes, so a CIDR is a range) and time, recipient and time, time.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("session", sa.String(length=32), nullable=True),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.LargeBinary(length=16), nullable=True),
        sa.Column("username", sa.String(length=320), nullable=True),
        sa.Column("result", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index(op.f("ix_audit_events_session"), "audit_events", ["session"])
    op.create_index("ix_audit_events_username_at", "audit_events", ["username", "at"])
    op.create_index("ix_audit_events_ip_at", "audit_events", ["ip", "at"])
    op.create_table(
        "audit_messages",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queue_id", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("session", sa.String(length=32), nullable=True),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.LargeBinary(length=16), nullable=True),
        sa.Column("username", sa.String(length=320), nullable=False),
        sa.Column("mechanism", sa.String(length=32), nullable=True),
        sa.Column("cert_serial", sa.String(length=64), nullable=True),
        sa.Column("cert_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("app_password", sa.String(length=200), nullable=True),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("recipient_count", sa.Integer(), nullable=False),
        sa.Column("smarthost", sa.String(length=300), nullable=True),
        sa.Column("smarthost_queue_id", sa.String(length=100), nullable=True),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_messages")),
    )
    op.create_index(op.f("ix_audit_messages_at"), "audit_messages", ["at"])
    op.create_index(op.f("ix_audit_messages_queue_id"), "audit_messages", ["queue_id"])
    op.create_index(op.f("ix_audit_messages_message_id"), "audit_messages", ["message_id"])
    op.create_index(
        op.f("ix_audit_messages_smarthost_queue_id"), "audit_messages", ["smarthost_queue_id"]
    )
    op.create_index("ix_audit_messages_username_at", "audit_messages", ["username", "at"])
    op.create_index("ix_audit_messages_ip_at", "audit_messages", ["ip", "at"])
    op.create_table(
        "audit_recipients",
        sa.Column("message", BIG_ID, autoincrement=False, nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message"],
            ["audit_messages.id"],
            name=op.f("fk_audit_recipients_message_audit_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message", "position", name=op.f("pk_audit_recipients")),
    )
    op.create_index("ix_audit_recipients_address_at", "audit_recipients", ["address", "at"])


def downgrade() -> None:
    op.drop_table("audit_recipients")
    op.drop_table("audit_messages")
    op.drop_table("audit_events")
