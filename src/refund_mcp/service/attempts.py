"""One attempt to send a claimed queued refund to its processor, and every write that follows it.

An attempt works under a claim taken by the transaction that claimed the refund (the reservation,
the worker, an approval): a lease (`claimed_until`) and a fencing token (`claim_token`, incremented
by every claim and by an operator's decision). The attempt is cut off well inside its lease
(ATTEMPT_SHARE_OF_LEASE), so a live attempt cannot outlast it; a cut-off attempt has an unknown
outcome. Every write after a processor call is conditional on the attempt's own token: an attempt
that was overtaken (its lease lapsed and another worker took the refund over) changes nothing and
leaves a `refund.stale_attempt` audit record with what the processor answered.

What is sent, and under which key, is decided by service/resend.py before anything is sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.engine import Row

from refund_mcp import failpoints
from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import Delivery, NotSupported, ProcessorCallError, ProcessorUnavailable, RefundError
from refund_mcp.domain.models import ProcessorRefund, ProcessorRefundRequest, RefundReason, RefundStatus
from refund_mcp.service import recording, rendering, resend, views
from refund_mcp.service.metadata import decode as decode_metadata
from refund_mcp.service.recording import Recorder
from refund_mcp.store import queries

if TYPE_CHECKING:
    from refund_mcp.processors.base import Processor
    from refund_mcp.service.circuit import CircuitBreaker
    from refund_mcp.settings import Settings
    from refund_mcp.store.database import Database

# An attempt (token fetch, send, read) must end within this share of the lease, leaving the rest for
# recording its answer. The adapters' HTTP timeouts (connect + write + read per request) stay below it.
ATTEMPT_SHARE_OF_LEASE = 0.75

# Refusals that a resend can get because an earlier attempt of ours already used the balance.
_BALANCE_REFUSALS = frozenset({"already_refunded", "amount_exceeds_refundable"})

OPERATOR_HINT = "a human must decide (refund-mcp refunds resolve ID --failed|--retry --by NAME)"


@dataclass(frozen=True)
class AttemptContext:
    """What an attempt needs: where it writes, who records the answer, and the processor it calls."""

    db: Database
    recorder: Recorder
    breaker: CircuitBreaker
    settings: Settings
    clock: Callable[[], datetime]
    processor: Callable[[str], Processor]  # the configured processor of an account, or a validation error


@dataclass(frozen=True)
class Claim:
    """The claimed row as the claiming transaction left it (its token is the attempt's)."""

    row: Row[Any]

    @property
    def token(self) -> int:
        return int(self.row.claim_token)


def processor_request(row: Row[Any]) -> ProcessorRefundRequest:
    return ProcessorRefundRequest(
        refund_id=row.id,
        transaction_id=row.transaction_id.partition(":")[2],  # canonical ids are "processor:id"
        amount_minor=row.amount_minor,
        currency=row.currency,
        reason=RefundReason(row.reason),
        idempotency_key=resend.idempotency_key(row.id, int(row.key_generation or 0)),
        note=row.note,
        # Every key generation carries the refund id, so a search finds the refund whichever key created it;
        # ours last: the caller's metadata can never replace the id that ties the processor's refund to ours.
        metadata={**decode_metadata(row.refund_metadata), "refund_mcp_id": row.id},
    )


def backoff(settings: Settings, attempts: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never sooner than the processor's Retry-After."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * (2 ** max(0, attempts - 1)))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


def attempt_budget(ctx: AttemptContext) -> float:
    return ctx.settings.claim_seconds * ATTEMPT_SHARE_OF_LEASE


def _cut_off(ctx: AttemptContext, processor: str) -> ProcessorUnavailable:
    return ProcessorUnavailable(
        f"the attempt was cut off after {attempt_budget(ctx):g} s, inside its claim; {processor} may have "
        "acted on it, so the outcome is unknown",
        processor=processor,
        delivery=Delivery.OUTCOME_UNKNOWN,
    )


async def run(ctx: AttemptContext, claim: Claim, *, caller: str, raise_declined: bool = False) -> views.RefundView:
    row = claim.row
    processor = ctx.processor(row.processor)
    history = resend.AttemptHistory(
        may_have_reached=bool(row.maybe_sent),
        # Rows from before key ages were recorded: the creation time can only overstate the age.
        key_first_sent_at=row.key_first_sent_at or row.created_at,
        lookup_first=bool(row.lookup_first),
        retry_deadline_at=row.retry_deadline_at,
    )
    caps = processor.capabilities
    plan = resend.plan_attempt(
        history, now=ctx.clock(), retention=caps.idempotency_key_retention, searchable=caps.refund_search
    )
    if plan.step is resend.Step.OPERATOR:
        return await hand_to_operator(ctx, claim, plan.why)
    searched = False
    if plan.step is resend.Step.SEARCH:
        try:
            with anyio.fail_after(attempt_budget(ctx)):
                found = await processor.find_refund(processor_request(row))
        except NotSupported as exc:
            return await hand_to_operator(ctx, claim, f"{plan.why}; {exc.message}")
        except TimeoutError:
            return await schedule_retry(ctx, claim, _cut_off(ctx, row.processor), lookup_first=True)
        except ProcessorCallError as exc:
            return await schedule_retry(ctx, claim, exc, lookup_first=True)
        if found is not None:
            return await record_answer(ctx, claim, found, actor=caller, action="refund.found")
        renewed = await _renew_key(ctx, claim, plan.why)
        if renewed is None:
            return await _stale(ctx, claim, {"searched": "absent"})
        claim, row, searched = renewed, renewed.row, True
    try:
        with anyio.fail_after(attempt_budget(ctx)):
            answer = await processor.create_refund(processor_request(row))
    except TimeoutError:
        ctx.breaker.record_failure(row.processor)
        return await schedule_retry(ctx, claim, _cut_off(ctx, row.processor), lookup_first=False)
    except RefundError as exc:
        if isinstance(exc, ProcessorCallError) and exc.retryable:
            ctx.breaker.record_failure(row.processor)
            # Stripe stores a complete 5xx answer under the key and replays it: only a search can tell more.
            stored = exc.answered and exc.delivery is Delivery.OUTCOME_UNKNOWN
            return await schedule_retry(ctx, claim, exc, lookup_first=stored)
        if isinstance(exc, ProcessorCallError):
            ctx.breaker.record_success(row.processor)  # it answered: it is up
        if exc.code in _BALANCE_REFUSALS and history.may_have_reached and not searched:
            # The balance may be gone because an earlier attempt of ours was made under a forgotten key:
            # that is a reason to look, never proof that nothing was refunded.
            return await schedule_retry(ctx, claim, exc, lookup_first=True, now_due=True)
        view = await record_declined(ctx, claim, exc)
        if raise_declined and view.status == RefundStatus.FAILED.value:
            exc.message = f"{exc.message} (refund {row.id} marked failed; nothing was refunded)"
            exc._audited = True  # type: ignore[attr-defined]
            raise exc
        return view
    ctx.breaker.record_success(row.processor)
    failpoints.hit("after_processor_answer")
    return await record_answer(ctx, claim, answer, actor=caller, action="refund.submitted")


async def _renew_key(ctx: AttemptContext, claim: Claim, why: str) -> Claim | None:
    """The processor holds no refund of ours: continue under the next key generation, whose age starts now."""
    now = ctx.clock()
    generation = int(claim.row.key_generation or 0) + 1
    async with ctx.db.write() as conn:
        updated = await queries.update_claimed(
            conn, claim.row.id, claim.token, key_generation=generation, key_first_sent_at=now, lookup_first=False, updated_at=now
        )
        if updated is None:
            return None
        await audit.append(
            conn,
            AuditEntry(
                actor="refund-mcp", action="refund.key_renewed", target=claim.row.id, outcome="queued",
                detail={"generation": generation, "why": why, "searched": "absent"},
            ),
        )
    return Claim(updated)


async def record_answer(ctx: AttemptContext, claim: Claim, answer: ProcessorRefund, *, actor: str, action: str) -> views.RefundView:
    async with ctx.db.write() as conn:
        return await ctx.recorder.apply_processor_state(
            conn, claim.row.id, answer, actor=actor, action=action, claim_token=claim.token, status_seen=RefundStatus(claim.row.status)
        )


async def schedule_retry(
    ctx: AttemptContext, claim: Claim, exc: ProcessorCallError, *, lookup_first: bool, now_due: bool = False
) -> views.RefundView:
    row = claim.row
    now = ctx.clock()
    attempts = row.attempts + 1
    deadline = row.retry_deadline_at
    maybe_sent = bool(row.maybe_sent) or exc.delivery is Delivery.OUTCOME_UNKNOWN
    if deadline is not None and now >= deadline:
        next_at = None
        last_error = f"{exc} — retry deadline passed; {OPERATOR_HINT}"
        action = "refund.retry_exhausted"
    else:
        delay = 0.0 if now_due else backoff(ctx.settings, attempts, exc.retry_after)
        next_at = now + timedelta(seconds=delay)
        last_error = str(exc)
        action = "refund.retry_scheduled"
    async with ctx.db.write() as conn:
        updated = await queries.update_claimed(
            conn, row.id, claim.token, attempts=attempts, last_error=last_error, next_attempt_at=next_at, claimed_until=None,
            maybe_sent=maybe_sent, lookup_first=bool(row.lookup_first) or lookup_first, updated_at=now,
        )
        if updated is None:
            return await recording.stale_attempt(conn, row.id, claim.token, {"error": str(exc), "delivery": exc.delivery.value})
        await audit.append(
            conn,
            AuditEntry(
                actor="refund-mcp",
                action=action,
                target=row.id,
                outcome="queued",
                error_code=exc.code,
                processor_request_id=exc.request_id,
                detail={"attempts": attempts, "delivery": exc.delivery.value, "message": exc.message, "search_next": lookup_first},
            ),
        )
    view = rendering.refund_view(updated)
    view.message = (
        f"{row.processor} did not confirm the refund yet ({exc.code}). It stays reserved and will be retried "
        "automatically; it is never sent again under a key the processor may have forgotten, so it can never be made twice."
    )
    return view


async def record_declined(ctx: AttemptContext, claim: Claim, exc: RefundError) -> views.RefundView:
    row = claim.row
    now = ctx.clock()
    async with ctx.db.write() as conn:
        updated = await queries.update_claimed(
            conn, row.id, claim.token, status=RefundStatus.FAILED.value, failure_reason=f"[{exc.code}] {exc.message}",
            attempts=row.attempts + 1, next_attempt_at=None, claimed_until=None, last_error=str(exc), updated_at=now,
        )
        if updated is None:
            return await recording.stale_attempt(conn, row.id, claim.token, {"declined": f"[{exc.code}] {exc.message}"})
        await audit.append(
            conn,
            AuditEntry(
                actor="refund-mcp",
                action="refund.failed",
                target=row.id,
                outcome="failed",
                error_code=exc.code,
                processor_request_id=getattr(exc, "request_id", None),
                detail={"message": exc.message},
            ),
        )
    view = rendering.refund_view(updated)
    view.message = f"The processor refused this refund ([{exc.code}]); nothing was refunded and the amount is released."
    return view


async def hand_to_operator(ctx: AttemptContext, claim: Claim, why: str) -> views.RefundView:
    """Send nothing; keep the reservation; wait for `refund-mcp refunds resolve` (listed by `refunds stuck`)."""
    now = ctx.clock()
    async with ctx.db.write() as conn:
        updated = await queries.update_claimed(
            conn, claim.row.id, claim.token, next_attempt_at=None, claimed_until=None,
            last_error=f"{why}; {OPERATOR_HINT}", updated_at=now,
        )
        if updated is None:
            return await recording.stale_attempt(conn, claim.row.id, claim.token, {"handed_to_operator": why})
        await audit.append(
            conn,
            AuditEntry(
                actor="refund-mcp", action="refund.needs_operator", target=claim.row.id, outcome="queued",
                detail={"why": why, "maybe_sent": bool(claim.row.maybe_sent), "key_generation": int(claim.row.key_generation or 0)},
            ),
        )
    view = rendering.refund_view(updated)
    view.message = f"Reserved and waiting for an operator: {why}."
    return view


async def _stale(ctx: AttemptContext, claim: Claim, answered: dict[str, Any]) -> views.RefundView:
    async with ctx.db.write() as conn:
        return await recording.stale_attempt(conn, claim.row.id, claim.token, answered)
