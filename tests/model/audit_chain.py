"""The audit chain as the model reads it: records the code under test may still hold unsealed are sealed first.

Trees that write each record into the chain inside its own transaction have nothing to seal; trees that
sequence records and seal the chain after commit expose a sealing function: `seal_all` (everything committed)
or `seal`, in `refund_mcp.audit.log` or `refund_mcp.audit.sealing`. Its one argument may be the engine, the
Database or a connection, named by its first parameter."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from refund_mcp.audit import log as audit_log
from refund_mcp.store.database import Database


def _sealer() -> Callable[..., Any] | None:
    modules: list[Any] = [audit_log]
    try:
        modules.append(importlib.import_module("refund_mcp.audit.sealing"))
    except ImportError:
        pass
    for name in ("seal_all", "seal"):
        for module in modules:
            found = getattr(module, name, None)
            if callable(found):
                return found
    return None


async def seal_pending(db: Database) -> None:
    seal = _sealer()
    if seal is None:
        return
    first = next(iter(inspect.signature(seal).parameters), None)
    given: dict[str | None, Any] = {"engine": db.engine, "db": db, "database": db}
    if first in given:
        result = seal(given[first])
        if inspect.isawaitable(result):
            await result
        return
    async with db.engine.begin() as conn:
        result = seal(conn)
        if inspect.isawaitable(result):
            await result


async def verify_chain(db: Database) -> Any:
    await seal_pending(db)
    return await audit_log.verify(db.engine)
