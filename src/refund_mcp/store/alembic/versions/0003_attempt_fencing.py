"""refunds: attempt fencing token, idempotency key generation and age, search-first flag

claim_token: every claim increments it; every write after a processor call is conditional on it.
key_generation / key_first_sent_at: which key is sent (rf_… or rf_….N) and since when it may be at
the processor (service/resend.py). Rows from before this revision get key_first_sent_at NULL, read
as the refund's creation time, which can only overstate a key's age (the safe direction).
lookup_first: the next attempt searches the processor before sending anything.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 05:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (with a default) on both databases: a batch table copy on SQLite would have to drop
    # `refunds`, which other tables reference.
    op.add_column("refunds", sa.Column("claim_token", sa.Integer(), server_default="0", nullable=False))
    op.add_column("refunds", sa.Column("key_generation", sa.Integer(), server_default="0", nullable=False))
    op.add_column("refunds", sa.Column("key_first_sent_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("refunds", sa.Column("lookup_first", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("lookup_first")
        batch_op.drop_column("key_first_sent_at")
        batch_op.drop_column("key_generation")
        batch_op.drop_column("claim_token")
