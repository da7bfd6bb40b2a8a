"""copy views of copy-mode spaces

Revision ID: 8110f08c8ae4
Revises: c6a1bdbb1052
Create Date: 2026-12-03 13:03:29.257831
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "8110f08c8ae4"
down_revision = "c6a1bdbb1052"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "copy_views",
        sa.Column("space_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id", "image_id"],
            ["vectors.space_id", "vectors.image_id"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("space_id", "image_id"),
    )


def downgrade() -> None:
    op.drop_table("copy_views")
