"""Gauges read from the database at scrape time: open refunds by status, amounts reserved per currency,
the retry queue (depth, oldest), in-doubt and stuck refunds, pending approvals, circuit breakers and
the last reconciliation.

One indexed query over the open refunds (`status IN (...)` uses ix_refunds_due) and one for the last
`reconcile.run` audit record (ix_audit_target, target IS NULL), at most once per `ttl_seconds` per
process however often it is scraped. Final statuses are not counted here: that would scan the whole
history on every scrape; their rate is `refund_mcp_tool_calls_total` and the processor counters.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from refund_mcp.domain.models import RESERVING_STATUSES, RefundStatus
from refund_mcp.metrics import REGISTRY, closed_label

logger = logging.getLogger("refund_mcp.metrics")

OPEN_STATUSES = tuple(sorted(status.value for status in RESERVING_STATUSES))
RECONCILE_ACTION = "reconcile.run"


@functools.cache
def _iso_currencies() -> frozenset[str]:
    from babel.numbers import list_currencies

    return frozenset(list_currencies())


@dataclass
class Snapshot:
    taken_at: float = 0.0
    ok: bool = False
    by_status: dict[str, int] = field(default_factory=dict)
    reserved_minor: dict[str, int] = field(default_factory=dict)  # currency -> amount
    queue_depth: int = 0
    oldest_queued_age_seconds: float = 0.0
    in_doubt: int = 0
    stuck: int = 0
    pending_approvals: int = 0
    reconcile_at: float | None = None
    reconcile_attention: bool = False
    reconcile_summary: dict[str, int] = field(default_factory=dict)
    audit_unsealed: int = 0
    audit_unsealed_oldest_age_seconds: float = 0.0


async def read_snapshot(db: Any, now: datetime) -> Snapshot:
    from refund_mcp.audit import log as audit
    from refund_mcp.store import tables

    refunds = tables.refunds
    currencies = _iso_currencies()
    snap = Snapshot(by_status={status: 0 for status in OPEN_STATUSES})
    query = (
        select(
            refunds.c.status,
            refunds.c.currency,
            func.count(),
            func.sum(refunds.c.amount_minor),
            func.min(refunds.c.created_at),
            func.sum(case((refunds.c.maybe_sent.is_(True), 1), else_=0)),
            func.sum(case((refunds.c.next_attempt_at.is_(None), 1), else_=0)),
        )
        .where(refunds.c.status.in_(OPEN_STATUSES))
        .group_by(refunds.c.status, refunds.c.currency)
    )
    unsealed = select(func.count(), func.min(tables.audit_pending.c.at))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        reconcile = await audit.latest(conn, action=RECONCILE_ACTION)
        unsealed_count, unsealed_oldest = (await conn.execute(unsealed)).one()
    snap.audit_unsealed = int(unsealed_count)
    oldest_unsealed = _aware(unsealed_oldest)
    snap.audit_unsealed_oldest_age_seconds = max(0.0, (now - oldest_unsealed).total_seconds()) if oldest_unsealed else 0.0
    oldest: datetime | None = None
    for status, currency, count, amount, created_min, maybe_sent, no_next in rows:
        snap.by_status[status] += count
        label = closed_label(currency, currencies)
        snap.reserved_minor[label] = snap.reserved_minor.get(label, 0) + int(amount or 0)
        snap.in_doubt += int(maybe_sent or 0)
        if status == RefundStatus.QUEUED.value:
            snap.queue_depth += count
            snap.stuck += int(no_next or 0)  # the worker gave up: an operator decides (refunds stuck)
            created = _aware(created_min)
            if created is not None and (oldest is None or created < oldest):
                oldest = created
    snap.pending_approvals = snap.by_status[RefundStatus.PENDING_APPROVAL.value]
    snap.oldest_queued_age_seconds = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
    if reconcile is not None:
        snap.reconcile_at = _aware(reconcile.at).timestamp()  # type: ignore[union-attr]
        snap.reconcile_attention = reconcile.outcome != "ok"
        summary = (json.loads(reconcile.body).get("detail") or {}).get("summary") or {}
        snap.reconcile_summary = {str(kind): int(n) for kind, n in summary.items() if isinstance(n, int)}
    snap.ok = True
    return snap


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class StateCollector(Collector):
    """Serves the latest snapshot; `refresh()` (awaited by the /metrics handler) re-reads it when stale."""

    def __init__(self, ttl_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._app: Any = None
        self._snapshot = Snapshot()

    def attach(self, app: Any, env: Mapping[str, str] | None = None) -> None:
        """The app whose database and breakers are reported (the last one built in this process).

        REFUND_MCP_METRICS_CACHE_SECONDS (default 5) bounds how often scrapes reach the database."""
        env = os.environ if env is None else env
        self.ttl_seconds = float(env.get("REFUND_MCP_METRICS_CACHE_SECONDS", self.ttl_seconds))
        self._app = app
        self._snapshot = Snapshot()

    async def refresh(self) -> None:
        app = self._app
        if app is None or (self._snapshot.ok and self._clock() - self._snapshot.taken_at < self.ttl_seconds):
            return
        try:
            snap = await read_snapshot(app.db, app.service.clock())
        except Exception:  # a scrape must answer even when the database does not
            logger.warning("metrics: could not read the refund state", exc_info=True)
            snap = Snapshot()
        snap.taken_at = self._clock()
        self._snapshot = snap

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot
        yield _gauge("refund_mcp_state_up", "1 when the last scrape-time read of the database succeeded.", value=float(snap.ok))
        if not snap.ok:
            return
        refunds = GaugeMetricFamily("refund_mcp_refunds", "Open refunds by status (final statuses are not counted here).", labels=["status"])
        for status, count in sorted(snap.by_status.items()):
            refunds.add_metric([status], count)
        yield refunds
        reserved = GaugeMetricFamily(
            "refund_mcp_reserved_amount_minor",
            "Amount held by open refunds against their payments' balances, in minor units, by currency.",
            labels=["currency"],
        )
        for currency, amount in sorted(snap.reserved_minor.items()):
            reserved.add_metric([currency], amount)
        yield reserved
        yield _gauge("refund_mcp_queue_depth", "Refunds queued for a retry by the worker.", value=snap.queue_depth)
        yield _gauge(
            "refund_mcp_queue_oldest_age_seconds", "Age of the oldest queued refund (0 when none).", value=snap.oldest_queued_age_seconds
        )
        yield _gauge(
            "refund_mcp_refunds_in_doubt",
            "Open refunds whose last submission had an unknown outcome (the processor may hold them).",
            value=snap.in_doubt,
        )
        yield _gauge("refund_mcp_refunds_stuck", "Queued refunds past their retry deadline, waiting for an operator.", value=snap.stuck)
        yield _gauge("refund_mcp_approvals_pending", "Refunds waiting for a human approver.", value=snap.pending_approvals)
        yield _gauge(
            "refund_mcp_audit_unsealed_records",
            "Audit records committed but not yet sealed into the hash chain (PostgreSQL; not tamper-evident yet).",
            value=snap.audit_unsealed,
        )
        yield _gauge(
            "refund_mcp_audit_unsealed_oldest_age_seconds",
            "Age of the oldest audit record not yet sealed (0 when none); growing means nothing is sealing.",
            value=snap.audit_unsealed_oldest_age_seconds,
        )
        yield from self._breakers()
        if snap.reconcile_at is not None:
            yield _gauge("refund_mcp_reconcile_last_run_timestamp_seconds", "When the last reconciliation finished.", value=snap.reconcile_at)
            yield _gauge(
                "refund_mcp_reconcile_last_needs_attention",
                "1 when the last reconciliation found something for a human.",
                value=float(snap.reconcile_attention),
            )
            findings = GaugeMetricFamily("refund_mcp_reconcile_last_findings", "The last reconciliation's findings by kind.", labels=["kind"])
            for kind, count in sorted(snap.reconcile_summary.items()):
                findings.add_metric([closed_label(kind, _reconcile_kinds())], count)
            yield findings

    def _breakers(self) -> Iterator[GaugeMetricFamily]:
        app = self._app
        # By account: names come from the deployment's configuration, never from a caller.
        breaker = GaugeMetricFamily(
            "refund_mcp_circuit_open", "1 while this process's circuit breaker for a processor account is open.", labels=["processor"]
        )
        for name in sorted(app.processors.names()):
            breaker.add_metric([name], float(app.service.breaker.is_open(name)))
        yield breaker


@functools.cache
def _reconcile_kinds() -> frozenset[str]:
    from refund_mcp.reconcile.engine import Kind

    return frozenset(kind.value for kind in Kind)


def _gauge(name: str, documentation: str, *, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


STATE = StateCollector()
REGISTRY.register(STATE)
