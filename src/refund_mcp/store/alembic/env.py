"""Alembic environment for refund-mcp.

Migrations never open their own connection: `refund_mcp.store.migrations` runs them on a connection
it already holds (inside the transaction that took the migration lock), passed in
`config.attributes["connection"]`. That one path serves SQLite and PostgreSQL, async engines included
(the caller uses `AsyncConnection.run_sync`).
"""

from __future__ import annotations

from alembic import context

from refund_mcp.store import tables
from refund_mcp.store.migrations import include_name

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `refund-mcp db ...` (refund_mcp.store.migrations), not the alembic command")



def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Revisions are frozen: store types render as plain SQLAlchemy types, never imports of tables.py."""
    if type_ == "type" and isinstance(obj, tables.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


context.configure(
    connection=connection,
    target_metadata=tables.metadata,
    include_name=include_name,
    # SQLite cannot ALTER most things in place; batch mode copies the table when a revision needs it.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
