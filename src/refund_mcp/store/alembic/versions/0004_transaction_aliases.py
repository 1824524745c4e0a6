"""transaction_aliases: every other name of a payment points at its canonical id

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 05:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "transaction_aliases",
        sa.Column("alias", sa.String(length=200), nullable=False),
        sa.Column("bare_id", sa.String(length=180), nullable=False),
        sa.Column("transaction_id", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("alias"),
    )
    op.create_index("ix_transaction_aliases_bare", "transaction_aliases", ["bare_id"], unique=False)
    op.create_index("ix_transaction_aliases_transaction", "transaction_aliases", ["transaction_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_transaction_aliases_transaction", table_name="transaction_aliases")
    op.drop_index("ix_transaction_aliases_bare", table_name="transaction_aliases")
    op.drop_table("transaction_aliases")
