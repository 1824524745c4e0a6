"""audit_pending: audit records appended on PostgreSQL and not yet sealed into the hash chain

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_pending",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=False),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("notification", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_pending", schema=None) as batch_op:
        batch_op.create_index("ix_audit_pending_target", ["target", "id"], unique=False)


def downgrade() -> None:
    # Unsealed records exist only here: dropping them would lose audit records. Seal them first
    # (`refund-mcp audit verify` does) with this version of the code.
    unsealed = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM audit_pending")).scalar_one()
    if unsealed:
        raise RuntimeError(f"{unsealed} audit record(s) are not sealed yet: run `refund-mcp audit verify` before downgrading")
    with op.batch_alter_table("audit_pending", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_pending_target")
    op.drop_table("audit_pending")
