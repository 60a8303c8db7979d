"""Sending counters, failed logins, lockouts and per-user sending limits.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

New tables only; `users` is not touched, because rebuilding it on SQLite
(batch mode) would cascade-delete the rows of every table that references it
(see 0002). Counters and lockouts are keyed by name (`user:EMAIL`,
`acct:LOGIN`, `ip:CLIENT`) rather than by user id, since failed logins of
names that do not exist must be counted exactly like those of names that do.
With no rows, every user has the configured default limits and nobody is locked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_counters",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "bucket", name=op.f("pk_rate_counters")),
    )
    op.create_index(op.f("ix_rate_counters_bucket"), "rate_counters", ["bucket"])
    op.create_table(
        "auth_failures",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "bucket", name=op.f("pk_auth_failures")),
    )
    op.create_index(op.f("ix_auth_failures_bucket"), "auth_failures", ["bucket"])
    op.create_table(
        "auth_lockouts",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_auth_lockouts")),
    )
    op.create_index(op.f("ix_auth_lockouts_locked_until"), "auth_lockouts", ["locked_until"])
    op.create_table(
        "user_limits",
        sa.Column("user_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("messages_per_hour", sa.Integer(), nullable=True),
        sa.Column("recipients_per_hour", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_limits_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_limits")),
    )


def downgrade() -> None:
    op.drop_table("user_limits")
    op.drop_index(op.f("ix_auth_lockouts_locked_until"), table_name="auth_lockouts")
    op.drop_table("auth_lockouts")
    op.drop_index(op.f("ix_auth_failures_bucket"), table_name="auth_failures")
    op.drop_table("auth_failures")
    op.drop_index(op.f("ix_rate_counters_bucket"), table_name="rate_counters")
    op.drop_table("rate_counters")
