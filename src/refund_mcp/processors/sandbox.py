"""The `sandbox` processor: a built-in simulated processor so a new user can try every tool.

It is a product feature for demos, not a test double: results always say `processor: sandbox`.
Scripted outcomes, chosen by the last two digits of the refund amount in minor units:

    ..13  the processor declines the refund (status failed)
    ..42  the refund stays pending until its status is refreshed, then succeeds
    ..77  the refund needs action (requires_action) and can be cancelled
    ..99  the first attempt cannot reach the processor; the retry succeeds (shows `queued`)
    else  succeeded at once

Load-test payments: besides the demo payments, the sandbox answers for `demo_load_<n>` (n a whole number
from 1 to 1,000,000 written without leading zeros): a captured USD 1,000.00 payment made the day before
the sandbox started, the same for every n, refundable like a demo payment (lookup, refund, status, the
scripted outcomes). They exist on demand, so a load test can give every client payments of its own
instead of contending on the eight demo payments.

Idempotency and search, honestly: the sandbox keeps every key and every refund in this process's
memory, for as long as the process lives, and forgets both together when it stops. No retention
can be promised (None), but while it runs `find_refund` answers authoritatively from the same
memory that holds the refunds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from refund_mcp.domain.errors import (
    AlreadyRefunded, AmountExceedsRefundable, CurrencyMismatch, Delivery, IdempotencyConflict,
    ProcessorUnavailable, RefundNotFound, TransactionNotFound,
)
from refund_mcp.domain.models import (
    Capabilities, ProcessorRefund, ProcessorRefundRequest, RefundStatus, TransactionInfo,
)
from refund_mcp.processors.base import Processor


@dataclass(frozen=True)
class DemoPayment:
    transaction_id: str
    amount_minor: int
    currency: str
    age_days: int
    customer_ref: str
    description: str
    refunded_minor: int = 0
    captured: bool = True


DEMO_PAYMENTS: tuple[DemoPayment, ...] = (
    DemoPayment("demo_usd_order", 12000, "USD", 3, "ana@example.com", "Order #1001: wireless headphones"),
    DemoPayment("demo_eur_partly_refunded", 8000, "EUR", 10, "ben@example.com", "Order #1002: shoes", refunded_minor=2000),
    DemoPayment("demo_jpy_order", 15000, "JPY", 5, "chika@example.com", "Order #1003: tea set"),
    DemoPayment("demo_kwd_order", 12500, "KWD", 7, "dana@example.com", "Order #1004: perfume"),
    DemoPayment("demo_usd_refunded", 2500, "USD", 20, "eli@example.com", "Order #1005: phone case", refunded_minor=2500),
    DemoPayment("demo_usd_old", 4000, "USD", 400, "fay@example.com", "Order #0999: umbrella (over a year old)"),
    DemoPayment("demo_usd_large", 90000, "USD", 2, "gus@example.com", "Order #1006: laptop"),
    DemoPayment("demo_usd_uncaptured", 5000, "USD", 1, "hal@example.com", "Order #1007: authorized, not captured", captured=False),
)


LOAD_PAYMENT_PREFIX = "demo_load_"
LOAD_PAYMENT_LIMIT = 1_000_000
LOAD_PAYMENT_AMOUNT_MINOR = 100_000  # USD 1,000.00
LOAD_PAYMENT_AGE_DAYS = 1


def demo_transaction_ids() -> list[str]:
    return [f"sandbox:{payment.transaction_id}" for payment in DEMO_PAYMENTS]


def load_payment(transaction_id: str) -> DemoPayment | None:
    """The load-test payment `demo_load_<n>`, or None when the id is not one (n outside 1..1,000,000, not a
    plain decimal number, or with leading zeros, so that every payment has exactly one id)."""
    if not transaction_id.startswith(LOAD_PAYMENT_PREFIX):
        return None
    digits = transaction_id[len(LOAD_PAYMENT_PREFIX) :]
    if not (digits.isascii() and digits.isdigit()) or digits.startswith("0") or len(digits) > len(str(LOAD_PAYMENT_LIMIT)):
        return None
    n = int(digits)
    if n > LOAD_PAYMENT_LIMIT:
        return None
    return DemoPayment(
        transaction_id, LOAD_PAYMENT_AMOUNT_MINOR, "USD", LOAD_PAYMENT_AGE_DAYS, f"load-{n}@example.com", f"Load-test order #{n}"
    )


class SandboxProcessor(Processor):
    name = "sandbox"
    capabilities = Capabilities(
        cancel=True, status_api=True, lookup_api=True, partial_refunds=True, webhooks=False,
        idempotency_key_retention=None, refund_search=True,
    )

    def __init__(self, now: datetime | None = None) -> None:
        start = now or datetime.now(UTC)
        self._start = start
        self._payments = {payment.transaction_id: payment for payment in DEMO_PAYMENTS}
        self._created = {p.transaction_id: start - timedelta(days=p.age_days) for p in DEMO_PAYMENTS}
        self._refunded = {p.transaction_id: p.refunded_minor for p in DEMO_PAYMENTS}
        self._by_key: dict[str, tuple[ProcessorRefundRequest, ProcessorRefund]] = {}
        self._by_id: dict[str, ProcessorRefund] = {}
        self._by_our_id: dict[str, str] = {}  # our refund id -> the sandbox refund id
        self._unreachable_once: set[str] = set()

    def _payment(self, transaction_id: str) -> DemoPayment | None:
        """A demo payment, or a load-test payment, remembered from its first mention on."""
        payment = self._payments.get(transaction_id)
        if payment is None and (payment := load_payment(transaction_id)) is not None:
            # Midnight (UTC) of the day before the start: the same for every server process started that day.
            day = self._start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            self._payments[transaction_id] = payment
            self._created[transaction_id] = day - timedelta(days=payment.age_days)
            self._refunded[transaction_id] = payment.refunded_minor
        return payment

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        payment = self._payment(transaction_id)
        if payment is None:
            raise TransactionNotFound(
                f"sandbox has no payment {transaction_id!r}; demo payments: {', '.join(demo_transaction_ids())}; "
                f"load-test payments: sandbox:{LOAD_PAYMENT_PREFIX}1 to sandbox:{LOAD_PAYMENT_PREFIX}{LOAD_PAYMENT_LIMIT}"
            )
        return TransactionInfo(
            processor=self.name,
            transaction_id=payment.transaction_id,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            captured_minor=payment.amount_minor if payment.captured else 0,
            refunded_minor=self._refunded[transaction_id],
            status=("refunded" if self._refunded[transaction_id] >= payment.amount_minor else "succeeded")
            if payment.captured
            else "authorized",
            created_at=self._created[transaction_id],
            customer_ref=payment.customer_ref,
            description=payment.description,
            refundable=payment.captured,
        )

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        if (seen := self._by_key.get(request.idempotency_key)) is not None:
            first_request, first_answer = seen
            if first_request != request:
                raise IdempotencyConflict("sandbox: this idempotency key was used for a different refund")
            return self._by_id[first_answer.processor_refund_id]
        payment = self._payment(request.transaction_id)
        if payment is None:
            raise TransactionNotFound(f"sandbox has no payment {request.transaction_id!r}")
        if request.currency != payment.currency:
            raise CurrencyMismatch(f"sandbox payment is in {payment.currency}, not {request.currency}")
        left = payment.amount_minor - self._refunded[request.transaction_id]
        if left <= 0:
            raise AlreadyRefunded("sandbox: the payment is already fully refunded")
        if request.amount_minor > left:
            raise AmountExceedsRefundable("sandbox: the amount is more than what is left to refund")
        script = request.amount_minor % 100
        if script == 99 and request.idempotency_key not in self._unreachable_once:
            self._unreachable_once.add(request.idempotency_key)
            raise ProcessorUnavailable(
                "sandbox: processor unreachable (scripted: amounts ending in 99 fail their first attempt)",
                processor=self.name,
                delivery=Delivery.NOT_SENT,
            )
        status, failure = {
            13: (RefundStatus.FAILED, "card expired (scripted: amounts ending in 13 fail)"),
            42: (RefundStatus.PENDING, None),
            77: (RefundStatus.REQUIRES_ACTION, None),
        }.get(script, (RefundStatus.SUCCEEDED, None))
        refund = ProcessorRefund(
            # Random, not a counter: several server processes share one database and must never mint the same id.
            processor_refund_id=f"sbx_re_{secrets.token_hex(8)}",
            status=status,
            amount_minor=request.amount_minor,
            currency=request.currency,
            processor_status=status.value,
            request_id=f"sbx_req_{request.idempotency_key[-8:]}",
            failure_reason=failure,
            transaction_id=request.transaction_id,
            created_at=datetime.now(UTC),
        )
        if status is not RefundStatus.FAILED:
            self._refunded[request.transaction_id] += request.amount_minor
        self._by_key[request.idempotency_key] = (request, refund)
        self._by_id[refund.processor_refund_id] = refund
        self._by_our_id[request.refund_id] = refund.processor_refund_id
        return refund

    async def find_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund | None:
        processor_refund_id = self._by_our_id.get(request.refund_id)
        return self._by_id[processor_refund_id] if processor_refund_id is not None else None

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        refund = self._by_id.get(processor_refund_id)
        if refund is None:
            raise RefundNotFound(f"sandbox has no refund {processor_refund_id!r}")
        if refund.status is RefundStatus.PENDING:
            # A pending sandbox refund settles the first time someone asks.
            refund = replace(refund, status=RefundStatus.SUCCEEDED, processor_status="succeeded")
            self._by_id[processor_refund_id] = refund
        return refund

    async def cancel_refund(self, processor_refund_id: str) -> ProcessorRefund:
        refund = await self.get_refund(processor_refund_id)
        if refund.status is not RefundStatus.REQUIRES_ACTION:
            from refund_mcp.domain.errors import NotSupported

            raise NotSupported(f"sandbox can cancel only a refund that requires action, not one that is {refund.status}")
        refund = replace(refund, status=RefundStatus.CANCELLED, processor_status="canceled")
        self._by_id[processor_refund_id] = refund
        if refund.transaction_id is not None:
            self._refunded[refund.transaction_id] -= refund.amount_minor
        return refund
