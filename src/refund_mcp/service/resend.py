"""May this refund be sent to its processor now, and under which idempotency key? One pure decision.

A processor keeps an idempotency key only for so long (Stripe 24 h, Adyen 31 days, PayPal 45 days,
Square unpublished). A create request re-sent under a key the processor has forgotten is a new
refund, so the rules are:

1. Past the refund's retry deadline nothing is sent: an operator decides (`refunds resolve`).
2. If no earlier attempt can have reached the processor (none had an unknown outcome, none was cut
   off with its claim lapsing), the request is sent under the current key: there is nothing to repeat.
3. Otherwise it is sent again under the same key only while that key is younger than a safe share
   (SAFE_SHARE) of the processor's documented retention, counted from when the key was first sent.
   An unpublished retention has no safe age.
4. Past that age, or when the last attempt says so (`lookup_first`: a complete 5xx answer, which
   Stripe stores under the key and replays; a resend refused as already refunded; an inconclusive
   search), the processor is searched for the refund by our refund id first (Processor.find_refund):
   found → that refund is recorded, nothing is sent; authoritatively absent → it is sent under a new
   derived key (generation + 1), whose age starts then; the search failed → searched again later.
5. A processor that cannot be searched never gets such a refund again: it is handed to an operator,
   who checks the processor's dashboard. It stays reserved meanwhile; that is the price of never
   refunding twice.

Residual risk, stated plainly: "absent" is the processor's answer at the moment of the search. An
earlier request of ours still being processed inside the processor at that moment (every attempt is
cut off well before its claim lapses, and a search happens only after that) would not be seen.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

# Resend under the same key only while it is younger than this share of the documented retention:
# margin for clock skew between us and the processor and for pruning that starts early.
SAFE_SHARE = 0.5


class Step(enum.Enum):
    SEND = "send"  # send under the current key
    SEARCH = "search"  # look the refund up at the processor before anything is sent
    OPERATOR = "operator"  # send nothing; a human decides


@dataclass(frozen=True)
class Plan:
    step: Step
    why: str


@dataclass(frozen=True)
class AttemptHistory:
    """What the refund's record says about earlier attempts."""

    may_have_reached: bool  # an earlier attempt had an unknown outcome or lost its claim
    key_first_sent_at: datetime | None  # when the current key was first (possibly) sent; None: never
    lookup_first: bool  # the last attempt asked for a search before any resend
    retry_deadline_at: datetime | None


def idempotency_key(refund_id: str, generation: int) -> str:
    """`rf_…` for the first key, `rf_….N` after N searches that found nothing (≤ 45 characters for Square)."""
    return refund_id if generation == 0 else f"{refund_id}.{generation}"


def safe_key_age(retention: timedelta | None) -> timedelta | None:
    """How old a key may be and still be sent again; None: no age is safe (retention unpublished)."""
    return None if retention is None else retention * SAFE_SHARE


def plan_attempt(history: AttemptHistory, *, now: datetime, retention: timedelta | None, searchable: bool) -> Plan:
    """The next step for one attempt of a queued refund. Pure: the caller does the I/O."""
    if history.retry_deadline_at is not None and now >= history.retry_deadline_at:
        return Plan(Step.OPERATOR, "retry deadline passed; a human must decide")
    if not history.may_have_reached:
        return Plan(Step.SEND, "no earlier attempt can have reached the processor")
    safe = safe_key_age(retention)
    if not history.lookup_first and safe is not None and history.key_first_sent_at is not None:
        age = now - history.key_first_sent_at
        if age < safe:
            return Plan(Step.SEND, f"idempotency key is {_span(age)} old, under the safe {_span(safe)}")
    if history.lookup_first:
        reason = "the last attempt's answer requires a search before any resend"
    elif safe is None:
        reason = "the processor publishes no idempotency-key retention, so no resend is safe without a search"
    elif history.key_first_sent_at is None:
        reason = "the idempotency key's age is unknown"
    else:
        reason = f"idempotency key is {_span(now - history.key_first_sent_at)} old, past the safe {_span(safe)}"
    if searchable:
        return Plan(Step.SEARCH, reason)
    return Plan(
        Step.OPERATOR,
        f"{reason}; an earlier attempt may have reached the processor, which cannot be searched: a human must "
        "check it and decide",
    )


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
