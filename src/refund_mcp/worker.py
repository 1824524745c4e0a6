"""The background loop: retries queued refunds, syncs pending ones, expires approvals.

It runs inside `refund-mcp serve` and alone as `refund-mcp worker`. Several workers (on several
replicas) share the work safely: a refund is claimed with a lease before it is submitted, and
every submission reuses the refund's idempotency key, so a lapsed lease can never make two refunds.
"""

from __future__ import annotations

import logging

import anyio

from refund_mcp.domain.errors import RefundError
from refund_mcp.service.refunds import RefundService

logger = logging.getLogger("refund_mcp.worker")


async def run_once(service: RefundService) -> int:
    """One pass over all the work that is due; returns how many items were handled."""
    handled = await service.process_due()
    handled += await service.sync_statuses()
    expire = getattr(service, "expire_approvals", None)
    if expire is not None:
        handled += await expire()
    return handled


async def run_forever(service: RefundService, interval_seconds: float, stop: anyio.Event | None = None) -> None:
    """Loop until `stop` is set. Stopping waits for the pass in progress: cancelling one mid-transaction
    would leave a database connection closing with nobody awaiting it (and the process hanging at exit)."""
    stop = stop or anyio.Event()
    while not stop.is_set():
        try:
            handled = await run_once(service)
        except RefundError as exc:
            logger.warning("worker pass failed: %s", exc)
            handled = 0
        except Exception:  # the loop must outlive one bad pass (e.g. the database restarting)
            logger.exception("worker pass crashed; continuing")
            handled = 0
        if handled == 0:
            with anyio.move_on_after(interval_seconds):
                await stop.wait()
