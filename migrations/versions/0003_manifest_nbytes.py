"""index file size in the manifest

Revision ID: c4e1f7a2b903
Revises: 5b0d36316739
Create Date: 2026-12-02 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c4e1f7a2b903"
down_revision = "5b0d36316739"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_manifest", schema=None) as batch_op:
        batch_op.add_column(sa.Column("nbytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_manifest", schema=None) as batch_op:
        batch_op.drop_column("nbytes")
