"""A fault-injecting processor for the model-based test, faithful to Stripe's documented semantics.

It is the ground truth the model checks our books against. Semantics (docs.stripe.com/idempotency,
/api/refunds):
- a create request is idempotent per key: the first answer (a refund, a 4xx refusal, or a complete
  5xx) is stored under the key and replayed to every retry with the same parameters; a retry with
  other parameters is refused;
- keys are pruned once `retention` old on the test's clock: a request under a pruned key is new;
- the balance is enforced: refunds (not failed) never exceed the captured amount;
- refunds carry `metadata.refund_mcp_id` and can be searched by it among the payment's refunds.

Faults, queued per processor and consumed one per create call: `refused` (connection refused, not
sent), `rate_limited` (429, nothing done), `stored_5xx` (a complete 500 stored under the key),
`lost_answer` (the refund is made, the answer lost: a timeout after commit), `hold` (the refund is
made and its answer held until the test releases it: an attempt in flight across other steps),
`held_429` (the call is held, then answered 429 having done nothing: a slow attempt that outlives its
lease), `pending` (the refund is made as pending; the test settles it later). `search_error` makes the next
search fail.

The Adyen-like variant keeps keys 31 days, has no search, no status API, and may flip a failed
refund to succeeded (Adyen's REFUND notification success=false followed by success=true).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorError,
    ProcessorUnavailable,
    RateLimited,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import Capabilities, ProcessorRefund, ProcessorRefundRequest, RefundStatus, TransactionInfo
from refund_mcp.processors.base import Processor
from refund_mcp.webhooks.events import RefundEvent

CREATE_FAULTS = ("refused", "rate_limited", "stored_5xx", "lost_answer", "hold", "held_429", "pending")


@dataclass
class Payment:
    id: str
    amount_minor: int
    currency: str
    aliases: tuple[str, ...] = ()


@dataclass
class HeldRefund:
    refund_mcp_id: str
    id: str
    amount_minor: int
    currency: str
    payment_id: str
    status: RefundStatus
    created_at: datetime
    history: list[RefundStatus] = field(default_factory=list)


@dataclass
class Held:
    """A create call whose answer the processor holds back until released."""

    gate: asyncio.Event
    refund_mcp_id: str
    task: asyncio.Task[Any] | None  # the caller's task, blocked until the gate opens


class ModelProcessor(Processor):
    def __init__(self, name: str, clock: Callable[[], datetime], *, retention: timedelta, searchable: bool, status_api: bool) -> None:
        self.name = name
        self.capabilities = Capabilities(
            cancel=False, status_api=status_api, lookup_api=True, partial_refunds=True, webhooks=True,
            idempotency_key_retention=retention, refund_search=searchable,
        )
        self.clock = clock
        self.retention = retention
        self.payments: dict[str, Payment] = {}
        self.refunds: dict[str, HeldRefund] = {}
        self._keys: dict[str, tuple[datetime, tuple[Any, ...], Any]] = {}
        self._ids = itertools.count(1)
        self.faults: list[str] = []
        self.search_faults = 0
        self.held: list[Held] = []
        self.arrived = asyncio.Event()  # set whenever a call starts being held
        self.events: list[RefundEvent] = []  # every notification the processor has sent, in order
        self.creates = 0

    # ------------------------------------------------------------------ set-up and truth

    def add_payment(self, payment: Payment) -> None:
        self.payments[payment.id] = payment
        for alias in payment.aliases:
            self.payments[alias] = payment

    def payment_refunds(self, payment: Payment) -> list[HeldRefund]:
        return [r for r in self.refunds.values() if self.payments[r.payment_id] is payment]

    def refunded(self, payment: Payment) -> int:
        return sum(r.amount_minor for r in self.payment_refunds(payment) if r.status is not RefundStatus.FAILED)

    def _answer(self, refund: HeldRefund) -> ProcessorRefund:
        return ProcessorRefund(
            processor_refund_id=refund.id, status=refund.status, amount_minor=refund.amount_minor, currency=refund.currency,
            processor_status=refund.status.value, transaction_id=refund.payment_id, created_at=refund.created_at,
        )

    def _notify(self, refund: HeldRefund) -> None:
        payment = self.payments[refund.payment_id]
        words, flip = refund.status.value, {}
        if self.name == "adyen":  # Adyen's words: REFUND success=true|false; a success replaces an earlier failure
            words = f"REFUND:{'false' if refund.status is RefundStatus.FAILED else 'true'}"
            if refund.status is RefundStatus.SUCCEEDED and "supersedes_failure" in RefundEvent.__dataclass_fields__:
                flip = {"supersedes_failure": ("REFUND:false",)}
        self.events.append(
            RefundEvent(
                processor=self.name, event_id=f"evt_{self.name}_{len(self.events) + 1}", processor_refund_id=refund.id,
                status=refund.status, processor_status=words, transaction_id=payment.id,
                other_transaction_ids=payment.aliases, amount_minor=refund.amount_minor, currency=refund.currency,
                our_refund_id=refund.refund_mcp_id, occurred_at=self.clock(), **flip,
            )
        )

    def settle(self, refund_id: str, status: RefundStatus) -> None:
        refund = self.refunds[refund_id]
        refund.status = status
        refund.history.append(status)
        self._notify(refund)

    # ------------------------------------------------------------------ the Processor interface

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        payment = self.payments.get(transaction_id)
        if payment is None:
            raise TransactionNotFound(f"{self.name} has no payment {transaction_id}")
        return TransactionInfo(
            processor=self.name, transaction_id=payment.id, amount_minor=payment.amount_minor, currency=payment.currency,
            captured_minor=payment.amount_minor, refunded_minor=self.refunded(payment), status="succeeded",
            created_at=self.clock() - timedelta(days=1), aliases=tuple(a for a in (payment.id, *payment.aliases) if a != transaction_id),
        )

    def _stored(self, key: str) -> tuple[tuple[Any, ...], Any] | None:
        stored = self._keys.get(key)
        if stored is None:
            return None
        if self.clock() - stored[0] >= self.retention:
            del self._keys[key]  # pruned: a request under this key is a new request
            return None
        return stored[1], stored[2]

    def _replay(self, outcome: Any) -> ProcessorRefund:
        if isinstance(outcome, Exception):
            raise outcome
        return self._answer(self.refunds[outcome])

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        self.creates += 1
        fault = self.faults.pop(0) if self.faults else None
        if fault == "refused":
            raise ProcessorUnavailable(f"{self.name}: connection refused", processor=self.name, delivery=Delivery.NOT_SENT)
        if fault == "held_429":
            await self._hold(request)
        if fault in ("rate_limited", "held_429"):
            raise RateLimited(f"{self.name}: 429", processor=self.name, retry_after=30.0, http_status=429)
        params = (request.transaction_id, request.amount_minor, request.currency, request.refund_id)
        stored = self._stored(request.idempotency_key)
        if stored is not None:
            if stored[0] != params:
                raise ProcessorError(f"{self.name}: idempotency key reused with other parameters", processor=self.name, code="idempotency_conflict", http_status=400)
            return self._replay(stored[1])
        now = self.clock()
        if fault == "stored_5xx":
            error = ProcessorUnavailable(f"{self.name}: HTTP 500", processor=self.name, http_status=500, answered=True)
            self._keys[request.idempotency_key] = (now, params, error)
            raise error
        payment = self.payments.get(request.transaction_id)
        if payment is None:
            raise ProcessorError(f"{self.name}: no such payment", processor=self.name, code="transaction_not_found", http_status=404)
        left = payment.amount_minor - self.refunded(payment)
        outcome: Any
        if left <= 0:
            outcome = ProcessorError(f"{self.name}: charge already refunded", processor=self.name, code="already_refunded", http_status=400)
        elif request.amount_minor > left:
            outcome = ProcessorError(f"{self.name}: amount too large", processor=self.name, code="amount_exceeds_refundable", http_status=400)
        else:
            status = RefundStatus.PENDING if fault == "pending" else RefundStatus.SUCCEEDED
            refund = HeldRefund(
                refund_mcp_id=request.metadata.get("refund_mcp_id", ""), id=f"re_{self.name}_{next(self._ids)}",
                amount_minor=request.amount_minor, currency=request.currency, payment_id=request.transaction_id,
                status=status, created_at=now, history=[status],
            )
            self.refunds[refund.id] = refund
            self._notify(refund)
            outcome = refund.id
        self._keys[request.idempotency_key] = (now, params, outcome)
        if fault == "lost_answer":
            raise ProcessorUnavailable(f"{self.name}: read timeout", processor=self.name, delivery=Delivery.OUTCOME_UNKNOWN)
        if fault == "hold":
            await self._hold(request)
        return self._replay(outcome)

    async def _hold(self, request: ProcessorRefundRequest) -> None:
        held = Held(asyncio.Event(), request.refund_id, asyncio.current_task())
        self.held.append(held)
        self.arrived.set()
        await held.gate.wait()

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        if not self.capabilities.status_api:
            raise NotSupported(f"{self.name} has no refund status API")
        refund = self.refunds.get(processor_refund_id)
        if refund is None:
            raise RefundNotFound(f"{self.name} has no refund {processor_refund_id}")
        return self._answer(refund)

    async def find_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund | None:
        if not self.capabilities.refund_search:
            raise NotSupported(f"{self.name} cannot be searched for a refund")
        if self.search_faults:
            self.search_faults -= 1
            raise ProcessorUnavailable(f"{self.name}: search timed out", processor=self.name)
        payment = self.payments.get(request.transaction_id)
        if payment is None:
            return None
        mine = [r for r in self.payment_refunds(payment) if r.refund_mcp_id == request.refund_id]
        return self._answer(mine[0]) if mine else None
