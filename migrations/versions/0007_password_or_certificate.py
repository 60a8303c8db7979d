"""The password-or-certificate login policy, the default for new users.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

Upgrading widens the CHECK constraint and changes the column default only: no
row is touched, so every existing user keeps the policy they had and nobody's
access grows. Only users added afterwards get the new default.

Downgrading turns password-or-certificate users into `password` users (the old
default, and the narrower reading): their password still logs them in, their
certificate alone no longer does.

SQLite cannot alter a CHECK constraint or a default, so there `users` is rebuilt
(batch mode). With foreign keys on, dropping the old table would cascade-delete
the rows of every table that references users (see 0002), so those rows are
copied aside first and put back afterwards.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_POLICIES = "auth_policy IN ('password', 'certificate', 'password+certificate')"
NEW_POLICIES = (
    "auth_policy IN ('password', 'certificate', 'password-or-certificate', 'password+certificate')"
)


def upgrade() -> None:
    _replace_policy_rules(NEW_POLICIES, "password-or-certificate")


def downgrade() -> None:
    op.execute(
        "UPDATE users SET auth_policy = 'password' WHERE auth_policy = 'password-or-certificate'"
    )
    _replace_policy_rules(OLD_POLICIES, "password")


def _replace_policy_rules(check: str, default: str) -> None:
    saved = _save_referencing_rows() if op.get_bind().dialect.name == "sqlite" else []
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("ck_users_auth_policy"), type_="check")
        batch.create_check_constraint(op.f("ck_users_auth_policy"), check)
        batch.alter_column(
            "auth_policy",
            existing_type=sa.String(length=32),
            existing_nullable=False,
            server_default=default,
        )
    for table in saved:
        op.execute(f"INSERT INTO {table} SELECT * FROM saved_{table}")
        op.execute(f"DROP TABLE saved_{table}")


def _save_referencing_rows() -> list[str]:
    """Copy every table that references users into a temporary table; their names."""
    inspector = sa.inspect(op.get_bind())
    tables = [
        name
        for name in inspector.get_table_names()
        if any(fk["referred_table"] == "users" for fk in inspector.get_foreign_keys(name))
    ]
    for table in tables:
        op.execute(f"CREATE TEMPORARY TABLE saved_{table} AS SELECT * FROM {table}")
    return tables
