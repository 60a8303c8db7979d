"""Password history, app passwords, password age and the account change trail.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

`users` gains two columns with plain ADD COLUMN (no batch rebuild: on SQLite that
would cascade-delete the rows of every table referencing users, see 0002).
Existing passwords count as set when the account last changed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("password_changed_at", sa.DateTime(timezone=True)))
    op.add_column(
        "users",
        sa.Column("password_expired", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.execute("UPDATE users SET password_changed_at = updated_at")
    op.create_table(
        "password_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_password_history_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_password_history")),
    )
    op.create_index(op.f("ix_password_history_user_id"), "password_history", ["user_id"])
    op.create_table(
        "app_passwords",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("selector", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_app_passwords_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_passwords")),
        sa.UniqueConstraint("user_id", "selector", name=op.f("uq_app_passwords_user_id")),
    )
    op.create_table(
        "account_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.String(length=400), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_events")),
    )
    op.create_index(op.f("ix_account_events_email"), "account_events", ["email"])


def downgrade() -> None:
    op.drop_index(op.f("ix_account_events_email"), table_name="account_events")
    op.drop_table("account_events")
    op.drop_table("app_passwords")
    op.drop_index(op.f("ix_password_history_user_id"), table_name="password_history")
    op.drop_table("password_history")
    op.drop_column("users", "password_expired")
    op.drop_column("users", "password_changed_at")
