"""decisions on duplicate groups (keep one / not duplicates)

Revision ID: 7f8eca9849bc
Revises: c4e1f7a2b903
Create Date: 2026-12-02 18:23:50.045444
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "7f8eca9849bc"
down_revision = "c4e1f7a2b903"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dup_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "dup_decision_members",
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["decision_id"], ["dup_decisions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id"),
    )
    with op.batch_alter_table("dup_decision_members", schema=None) as batch_op:
        batch_op.create_index("ix_dup_decision_members_decision", ["decision_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dup_decision_members", schema=None) as batch_op:
        batch_op.drop_index("ix_dup_decision_members_decision")

    op.drop_table("dup_decision_members")
    op.drop_table("dup_decisions")
