"""refunds: the caller's metadata, a JSON object of strings (refund_metadata)

Hand-written schema version 8 made the same change; such databases are stamped here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 04:54:29.780599
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refund_metadata", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("refund_metadata")
