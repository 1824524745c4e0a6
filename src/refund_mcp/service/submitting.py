"""The outbox: sending reserved refunds to their processors, outside any transaction.

A refund is sent by whoever claimed it (the reservation, an approval, or the worker's claim of refunds
whose retry is due); each send is one attempt (service/attempts.py). The worker also polls processors
for refunds they accepted but have not finished.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Row

from refund_mcp.domain.errors import RefundError
from refund_mcp.domain.models import RefundStatus
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import attempts, rendering, views
from refund_mcp.service.circuit import CircuitBreaker
from refund_mcp.service.recording import Recorder
from refund_mcp.service.resolving import Resolver
from refund_mcp.settings import Settings
from refund_mcp.store import queries
from refund_mcp.store.database import Database


class Submitter:
    """Runs attempts for claimed refunds; claims the due ones for the worker; polls unfinished ones."""

    def __init__(
        self,
        db: Database,
        processors: ProcessorRegistry,
        resolver: Resolver,
        recorder: Recorder,
        breaker: CircuitBreaker,
        settings: Settings,
        now: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.processors = processors
        self.resolver = resolver
        self.recorder = recorder
        self.breaker = breaker
        self.settings = settings
        self.now = now
        self.attempt = attempts.AttemptContext(
            db=db, recorder=recorder, breaker=breaker, settings=settings, clock=now, processor=resolver.processor
        )

    async def submit(
        self, refund_id: str, *, caller: str, raise_declined: bool = False, claimed: Row[Any] | None = None
    ) -> views.RefundView:
        """Run one attempt for a refund this caller has just claimed (service/attempts.py), outside any transaction.

        `claimed` is the row as the claiming transaction returned it: its fencing token is the attempt's."""
        row = claimed
        if row is None:
            async with self.db.read() as conn:
                row = await queries.get_refund(conn, refund_id)
        if row.status != RefundStatus.QUEUED.value:
            return rendering.refund_view(row)  # settled meanwhile (e.g. by a webhook): nothing to send
        return await attempts.run(self.attempt, attempts.Claim(row), caller=caller, raise_declined=raise_declined)

    async def process_due(self, limit: int = 20) -> int:
        """Run an attempt for each queued refund whose retry is due. Returns how many were attempted."""
        now = self.now()
        async with self.db.write() as conn:
            rows = await queries.claim_due(conn, now, now + timedelta(seconds=self.settings.claim_seconds), limit)
        open_processors = {row.processor for row in rows if self.breaker.is_open(row.processor)}
        attempted = 0
        for row in rows:
            if row.processor in open_processors or self.processors.get(row.processor) is None:
                async with self.db.write() as conn:
                    await queries.update_claimed(
                        conn, row.id, row.claim_token, claimed_until=None,
                        next_attempt_at=now + timedelta(seconds=self.settings.circuit_open_seconds),
                    )
                continue
            await self.submit(row.id, caller="refund-mcp", claimed=row)
            attempted += 1
        return attempted

    async def sync_statuses(self, limit: int = 20) -> int:
        """Poll the processor for refunds it accepted but has not finished. Returns how many were polled."""
        now = self.now()
        with_api = [name for name in self.processors.names() if self.processors.get(name).capabilities.status_api]  # type: ignore[union-attr]
        async with self.db.read() as conn:
            rows = await queries.due_for_sync(conn, now, with_api, limit)
        for row in rows:
            processor = self.resolver.processor(row.processor)
            try:
                answer = await processor.get_refund(row.processor_refund_id)
            except RefundError as exc:
                delay = attempts.backoff(self.settings, row.attempts + 1, getattr(exc, "retry_after", None))
                async with self.db.write() as conn:
                    await queries.update_refund(conn, row.id, next_attempt_at=now + timedelta(seconds=delay), last_error=str(exc))
                continue
            async with self.db.write() as conn:
                view = await self.recorder.apply_processor_state(conn, row.id, answer, actor="refund-mcp", action="refund.sync")
                if not RefundStatus(view.status).is_final:
                    polls = row.attempts + 1
                    await queries.update_refund(
                        conn, row.id, attempts=polls, next_attempt_at=now + timedelta(seconds=attempts.backoff(self.settings, polls, None))
                    )
        return len(rows)
