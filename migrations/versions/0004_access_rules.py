"""Client access rules, and the networks each user may log in from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

New tables only. Per-user networks are a table of their own, not a `users`
column, because rebuilding `users` on SQLite (batch mode) would cascade-delete
the rows of every table that references it (see 0002). With no rows in either
table nothing changes for anyone: every client is treated per `policy.default`
("allow" unless configured) and every user may log in from anywhere.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("rule", sa.String(length=300), nullable=False),
        sa.Column("comment", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("action IN ('allow', 'deny')", name=op.f("ck_access_rules_action")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_rules")),
        sa.UniqueConstraint("rule", name=op.f("uq_access_rules_rule")),
    )
    op.create_table(
        "user_networks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("cidr", sa.String(length=50), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_networks_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_networks")),
        sa.UniqueConstraint("user_id", "cidr", name=op.f("uq_user_networks_user_id_cidr")),
    )


def downgrade() -> None:
    op.drop_table("user_networks")
    op.drop_table("access_rules")
