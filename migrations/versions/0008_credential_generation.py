"""users.credential_generation: a number that changes whenever a user's logins may change.

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-11

Each gateway remembers recent successful password logins for a few minutes, so that
a mail client that logs in for every message does not pay argon2 each time. A
remembered login counts only while the user's row still carries the generation it
was verified under; every change to the user's password, app passwords, policy,
state or networks moves it on, in the change's own transaction, so every gateway
sharing the database stops trusting what it remembered at the next login.

Plain ADD COLUMN (no batch rebuild: on SQLite that would cascade-delete the rows of
every table referencing users, see 0002). Existing users start at 0; users added
later start at a random number (see `store.models.new_generation`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("credential_generation", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("users", "credential_generation")
