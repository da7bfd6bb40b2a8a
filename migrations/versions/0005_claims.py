"""claims of files by concurrent index runs on a server library

Revision ID: c6a1bdbb1052
Revises: 7f8eca9849bc
Create Date: 2026-12-03 10:13:42.121531
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c6a1bdbb1052"
down_revision = "7f8eca9849bc"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("space_id", sa.Integer(), nullable=False),
        sa.Column("root_id", sa.Integer(), nullable=False),
        sa.Column("relpath", sa.LargeBinary(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["root_id"], ["roots.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("space_id", "root_id", "relpath"),
    )
    with op.batch_alter_table("claims", schema=None) as batch_op:
        batch_op.create_index("ix_claims_claimed_by", ["claimed_by"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("claims", schema=None) as batch_op:
        batch_op.drop_index("ix_claims_claimed_by")
    op.drop_table("claims")
