"""content hash, date taken, per-space index spec, settings and transform

Revision ID: 5b0d36316739
Revises: 898f90f56930
Create Date: 2026-11-26 15:45:08.330112
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "5b0d36316739"
down_revision = "898f90f56930"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("taken_at", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_images_content_hash"), ["content_hash"], unique=False)

    with op.batch_alter_table("index_manifest", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tombstones", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("params_json", sa.Text(), nullable=True))

    with op.batch_alter_table("spaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("index_spec", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("settings_json", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("transform", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("spaces", schema=None) as batch_op:
        batch_op.drop_column("transform")
        batch_op.drop_column("settings_json")
        batch_op.drop_column("index_spec")

    with op.batch_alter_table("index_manifest", schema=None) as batch_op:
        batch_op.drop_column("params_json")
        batch_op.drop_column("tombstones")

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_content_hash"))
        batch_op.drop_column("taken_at")
        batch_op.drop_column("content_hash")
