"""Reading one refund by the id a caller gave, with the caller-facing errors."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.domain.errors import RefundNotFound, ValidationFailed
from refund_mcp.domain.ids import is_refund_id
from refund_mcp.store import queries


async def refund_row(conn: AsyncConnection, refund_id: str) -> Row[Any]:
    if not is_refund_id(refund_id):
        raise ValidationFailed("refund_id must look like rf_ followed by 26 letters and digits", fields=["refund_id"])
    row = await queries.get_refund(conn, refund_id)
    if row is None:
        raise RefundNotFound(f"no refund {refund_id}; list_refunds shows existing refunds")
    return row
