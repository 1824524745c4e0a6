"""The background loop: retries queued refunds, syncs pending ones, expires approvals, delivers notifications,
prunes the daily caps' old counters.

It runs inside `refund-mcp serve` and alone as `refund-mcp worker`. Several workers (on several
replicas) share the work safely: a refund is claimed with a lease and a fencing token before it is
submitted, an overtaken attempt can write nothing (service/attempts.py), and a key the processor may
have forgotten is never sent again (service/resend.py), so a lapsed lease can never make two refunds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from refund_mcp.domain.errors import RefundError

if TYPE_CHECKING:  # serve imports this module at start, before the service layer is needed
    from refund_mcp.app import App
    from refund_mcp.notify.delivery import Notifier
    from refund_mcp.service.refunds import RefundService

logger = logging.getLogger("refund_mcp.worker")


async def run_once(service: RefundService, notifier: Notifier | None = None) -> int:
    """One pass over all the work that is due; returns how many items were handled."""
    handled = await service.process_due()
    handled += await service.sync_statuses()
    expire = getattr(service, "expire_approvals", None)
    if expire is not None:
        handled += await expire()
    prune = getattr(service, "prune_cap_counters", None)
    if prune is not None:
        await prune()  # housekeeping, at most once an hour: not work that should make the loop go round again
    if notifier is not None:
        # Last: this pass's own changes (expired approvals, failures) go out in the same pass.
        handled += await notifier.deliver_due()
    return handled


async def run_forever(
    service: RefundService, interval_seconds: float, stop: anyio.Event | None = None, notifier: Notifier | None = None
) -> None:
    """Loop until `stop` is set. Stopping waits for the pass in progress: cancelling one mid-transaction
    would leave a database connection closing with nobody awaiting it (and the process hanging at exit)."""
    stop = stop or anyio.Event()
    while not stop.is_set():
        try:
            handled = await run_once(service, notifier)
        except RefundError as exc:
            logger.warning("worker pass failed: %s", exc)
            handled = 0
        except Exception:  # the loop must outlive one bad pass (e.g. the database restarting)
            logger.exception("worker pass crashed; continuing")
            handled = 0
        if handled == 0:
            with anyio.move_on_after(interval_seconds):
                await stop.wait()


async def run_app_worker(app: App, schedule: CheckpointSchedule | None, stop: anyio.Event) -> None:
    """Everything a worker does for one App until `stop`: the retry/status loop, the audit sealer and, when
    configured, the audit checkpoints. `refund-mcp worker` runs it at once; `serve` once its App is built
    (LazyApp.run_worker)."""
    from refund_mcp.audit.sealing import seal_forever  # imports SQLAlchemy: only once there is an App

    async with anyio.create_task_group() as jobs:
        if schedule is not None:
            jobs.start_soon(run_checkpoints, app.db.engine, schedule, stop)
        jobs.start_soon(seal_forever, app.db.engine, stop)
        await run_forever(app.service, app.settings.worker_interval_seconds, stop, app.notifier)


@dataclass(frozen=True)
class CheckpointSchedule:
    key: Path
    path: Path
    minutes: float


def checkpoint_schedule(env: Mapping[str, str]) -> CheckpointSchedule | None:
    """REFUND_MCP_AUDIT_CHECKPOINT_MINUTES with REFUND_MCP_AUDIT_KEY and REFUND_MCP_AUDIT_CHECKPOINTS:
    the worker signs the audit head that often. Raises ValueError for an incomplete configuration."""
    minutes = env.get("REFUND_MCP_AUDIT_CHECKPOINT_MINUTES", "").strip()
    if not minutes:
        return None
    key, path = env.get("REFUND_MCP_AUDIT_KEY"), env.get("REFUND_MCP_AUDIT_CHECKPOINTS")
    if not key or not path:
        raise ValueError("REFUND_MCP_AUDIT_CHECKPOINT_MINUTES needs REFUND_MCP_AUDIT_KEY and REFUND_MCP_AUDIT_CHECKPOINTS")
    try:
        every = float(minutes)
    except ValueError as exc:
        raise ValueError(f"REFUND_MCP_AUDIT_CHECKPOINT_MINUTES must be a number of minutes, not {minutes!r}") from exc
    if every <= 0:
        raise ValueError("REFUND_MCP_AUDIT_CHECKPOINT_MINUTES must be positive")
    return CheckpointSchedule(Path(key), Path(path), every)


async def run_checkpoints(engine: Any, schedule: CheckpointSchedule, stop: anyio.Event) -> None:
    from refund_mcp.audit.checkpoints import checkpoint_forever

    await checkpoint_forever(engine, schedule.key, schedule.path, schedule.minutes, stop)
