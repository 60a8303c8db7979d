"""Sender bindings: the addresses and domains each user may send as.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

A new table only: the users table is not touched, because rebuilding it on
SQLite (batch mode) would cascade-delete every certificate (see 0002). With no
rows here, every user may send as their own address only, which is the default.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sender_bindings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("pattern", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_sender_bindings_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sender_bindings")),
        sa.UniqueConstraint("user_id", "pattern", name=op.f("uq_sender_bindings_user_id")),
    )


def downgrade() -> None:
    op.drop_table("sender_bindings")
