"""Audit records for calls refused before the service ran: an unknown tool, resource or prompt,
arguments the schema refuses, a token without the scope. The README promises every refused call is audited;
these never reach a service method, so the MCP layer reports them here.

A record is bounded whatever the caller sent: the target is a tool we define or "unknown", the
name the caller used and the argument names are made safe and capped, argument values are never
kept (they are the caller's data and may be anything).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy.exc import SQLAlchemyError

from refund_mcp.audit.log import AuditEntry, append
from refund_mcp.service.untrusted import untrusted_text
from refund_mcp.store.database import Database

logger = logging.getLogger("refund_mcp.service")

MAX_ARGUMENT_NAMES = 20


async def record_refused_call(
    db: Database,
    *,
    actor: str,
    tool: str,
    known_tool: bool,
    code: str,
    message: str,
    argument_names: Iterable[str],
    action: str = "tool.refused",
) -> None:
    """Append one `tool.refused` (or `action`) record; a database failure is logged, never raised (the
    call is refused anyway). `tool` is the tool, resource URI or prompt name as the caller sent it."""
    names = sorted({untrusted_text(str(name), 40) or "" for name in argument_names})
    detail: dict[str, object] = {
        "message": untrusted_text(message, 300),
        "arguments": names[:MAX_ARGUMENT_NAMES],
    }
    if not known_tool:
        detail["requested_name"] = untrusted_text(tool, 60)
    entry = AuditEntry(
        actor=actor,
        action=action,
        target=tool if known_tool else "unknown",
        outcome="denied" if code == "forbidden" else "error",
        error_code=code,
        detail=detail,
    )
    try:
        async with db.write() as conn:
            await append(conn, entry)
    except SQLAlchemyError:
        logger.exception("could not write the audit record of a refused %s call", tool if known_tool else "unknown tool")
