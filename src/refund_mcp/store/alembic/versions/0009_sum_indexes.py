"""refunds: covering indexes for the balance and the rolling daily totals

queries.balance and queries.daily_totals re-sum refunds on every create_refund; with every column they
read in the index, both are index-only range scans on SQLite and PostgreSQL. Additive: two indexes.

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-05 05:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index("ix_refunds_balance", ["transaction_id", "status", "maybe_sent", "amount_minor"], unique=False)
        batch_op.create_index(
            "ix_refunds_daily_totals", ["currency", "origin", "status", "created_at", "actor", "amount_minor"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_daily_totals")
        batch_op.drop_index("ix_refunds_balance")
