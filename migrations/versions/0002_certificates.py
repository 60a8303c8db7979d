"""Client certificates: the CA's inventory, and how each user may log in.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05

Existing users get auth_policy 'password', so upgrading changes no one's login.

On SQLite the users table is rebuilt (batch mode) to add the CHECK constraint.
That happens before `certificates` exists on purpose: with foreign keys on,
SQLite's DROP TABLE deletes the rows first, and ON DELETE CASCADE would empty
`certificates`. A later migration that rebuilds `users` on SQLite must first
save and restore the certificates, or avoid the rebuild.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "auth_policy", sa.String(length=32), server_default="password", nullable=False
            )
        )
        batch.create_check_constraint(
            op.f("ck_users_auth_policy"),
            "auth_policy IN ('password', 'certificate', 'password+certificate')",
        )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_certificates_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificates")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_certificates_fingerprint_sha256")),
        sa.UniqueConstraint("serial", name=op.f("uq_certificates_serial")),
    )
    op.create_index(op.f("ix_certificates_user_id"), "certificates", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_certificates_user_id"), table_name="certificates")
    op.drop_table("certificates")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("ck_users_auth_policy"), type_="check")
        batch.drop_column("auth_policy")
