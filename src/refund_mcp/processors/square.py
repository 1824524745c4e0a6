"""Square adapter.

Wire: `POST /v2/refunds` (JSON; the idempotency key is the body's `idempotency_key`, ≤ 45
characters), `GET /v2/refunds/{id}`, `GET /v2/payments/{id}`; `Authorization: Bearer` plus a
pinned `Square-Version`. Errors are `{"errors": [{category, code, detail, field}]}`.

Our refund id travels in the refund's `reason`, as a trailing "(rf_…)". Square's PaymentRefund
has no metadata and does not return the idempotency key, and Square does not publish how long it
keeps keys; `reason` is the one free-text field it stores on the refund and returns on every read.
With the id there, `find_refund` can tell authoritatively whether a refund of ours exists: it
reads the payment's `refund_ids`, then each refund, and matches the id. The descriptive text is
cut first so the id always fits Square's 192 characters.

Amounts: `amount` in the currency's smallest denomination per ISO 4217, which is not always ours
(Babel's): HUF has two decimals in ISO and none in Babel. In our units: USD 12.34 -> 1234,
JPY 1234 -> 1234, KWD 1.234 -> 1234, HUF 1234 -> 123400, ISK 1234 -> 1234, TWD 12.34 -> 1234,
UGX 1234 -> 1234, CLP 1234 -> 1234. Money objects are never defaulted: a payment's total is
`total_money`, or `amount_money` plus `tip_money` (Square's definition of the total); what was
refunded is `refunded_money`, which Square leaves out until a refund completes, so when it is
absent while the payment lists refunds, those refunds are read and the completed ones counted.

Square has no cancel call for a PaymentRefund (only Terminal refunds), so `cancel_refund` is the
base class's NotSupported. Square documents no request-id header; `x-request-id` is used when a
proxy or Square sends one, otherwise the request id is None.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import httpx2
from pydantic import Field, SecretStr, ValidationError

from refund_mcp.domain.errors import RefundError, RefundNotFound, TransactionNotFound
from refund_mcp.domain.models import (
    Capabilities, ProcessorRefund, ProcessorRefundRequest, RefundReason, RefundStatus, TransactionInfo,
)
from refund_mcp.processors import _connector as connector
from refund_mcp.processors._amounts import AmountScale, Default, IncompleteAnswer

NAME = "square"
Flow = Literal["lookup", "create", "get", "list"]
DEFAULT_API_BASE = "https://connect.squareupsandbox.com"
DEFAULT_SQUARE_VERSION = "2025-08-20"
IDEMPOTENCY_KEY_MAX = 45
REASON_MAX = 192
REQUEST_ID_HEADER = "x-request-id"

AMOUNTS = AmountScale(processor=NAME, decimals={}, default=Default.ISO, source="Square's Money: ISO 4217 minor units")


# --------------------------------------------------------------------------- wire structs


_Wire = connector.WireModel


class SquareMoney(_Wire):
    amount: int
    currency: str


class SquareRefundRequest(_Wire):
    """Body of `POST /v2/refunds` (schema `RefundPaymentRequest`)."""

    idempotency_key: str
    payment_id: str
    amount_money: SquareMoney
    reason: str | None = None


class SquarePaymentRefund(_Wire):
    id: str
    status: str | None = None
    amount_money: SquareMoney
    payment_id: str | None = None
    reason: str | None = None
    created_at: str | None = None


class SquareRefundResponse(_Wire):
    """`RefundPaymentResponse` and `GetPaymentRefundResponse` share this shape."""

    refund: SquarePaymentRefund


class SquareRefundList(_Wire):
    """`ListPaymentRefundsResponse`: `cursor` is absent (or empty) on the last page."""

    refunds: list[SquarePaymentRefund] = []
    cursor: str | None = None


class SquarePayment(_Wire):
    id: str
    status: str | None = None
    amount_money: SquareMoney | None = None
    tip_money: SquareMoney | None = None
    total_money: SquareMoney | None = Field(None, description="amount_money plus tip_money")
    refund_ids: list[str] = Field([], description="every refund of the payment; left out while there is none")
    refunded_money: SquareMoney | None = Field(None, description="completed refunds; left out until one completes")
    created_at: str | None = None
    # Who paid and what for: shown to the agent as data (customer_ref, description).
    buyer_email_address: str | None = None
    customer_id: str | None = None
    note: str | None = None


class SquarePaymentResponse(_Wire):
    payment: SquarePayment


class SquareError(_Wire):
    code: str | None = None
    detail: str | None = None


class SquareErrorResponse(_Wire):
    errors: list[SquareError] = []


# --------------------------------------------------------------------------- pure mapping

_STATUS = connector.statuses(pending=["PENDING"], succeeded=["COMPLETED"], failed=["REJECTED", "FAILED"])

_REASON_TEXT = connector.REASON_WORDS

# Square error code -> our code. REFUND_ALREADY_PENDING is a plain processor_error on purpose:
# it says another refund is in flight, not that ours was made.
_CODES = {
    "REFUND_AMOUNT_INVALID": "amount_exceeds_refundable",
    "VALUE_TOO_HIGH": "amount_exceeds_refundable",
    "PAYMENT_NOT_REFUNDABLE": "not_refundable",
    "PAYMENT_NOT_REFUNDABLE_DUE_TO_DISPUTE": "not_refundable",
    "REFUND_ERROR_PAYMENT_NEEDS_COMPLETION": "not_refundable",
    "REFUND_ALREADY_PENDING": "processor_error",
    "IDEMPOTENCY_KEY_REUSED": "idempotency_conflict",
    "UNSUPPORTED_CURRENCY": "currency_mismatch",
    "CURRENCY_MISMATCH": "currency_mismatch",
}

# Payment statuses whose money was captured and can be refunded.
_REFUNDABLE = frozenset({"COMPLETED"})


def refund_status(square_status: str | None) -> RefundStatus:
    return connector.status_of(_STATUS, square_status)


def refund_reason_text(reason: RefundReason, note: str | None, refund_id: str) -> str:
    """`Reason: note (rf_…)`, cut to Square's limit before the id, which must survive whole."""
    tag = f" ({refund_id})"
    return connector.with_note(_REASON_TEXT[reason], note)[: REASON_MAX - len(tag)] + tag


def is_ours(refund: SquarePaymentRefund, refund_id: str) -> bool:
    return (refund.reason or "").endswith(f"({refund_id})")


def build_refund_request(request: ProcessorRefundRequest) -> SquareRefundRequest:
    """Raises ValueError for an idempotency key longer than Square accepts (ours are ≤ 40)."""
    return SquareRefundRequest(
        idempotency_key=connector.checked_key(request.idempotency_key, limit=IDEMPOTENCY_KEY_MAX, processor=NAME),
        payment_id=request.transaction_id,
        amount_money=SquareMoney(amount=AMOUNTS.to_wire(request.amount_minor, request.currency), currency=request.currency),
        reason=refund_reason_text(request.reason, request.note, request.refund_id),
    )


def refund_from_wire(refund: SquarePaymentRefund, *, request_id: str | None) -> ProcessorRefund:
    """Raises IncompleteAnswer for an amount refund-mcp cannot hold exactly."""
    currency = refund.amount_money.currency.upper()
    amount = AMOUNTS.from_wire(refund.amount_money.amount, currency, what="refund amount_money")
    return connector.processor_refund(
        _STATUS, refund.status, refund_id=refund.id, amount_minor=amount, currency=currency, request_id=request_id,
        failure_reason=refund.status if refund.status in ("REJECTED", "FAILED") else None,
        transaction_id=refund.payment_id, created_at=connector.rfc3339(refund.created_at),
    )


def total_wire_amount(payment: SquarePayment) -> SquareMoney:
    """`total_money`, or Square's definition of it: `amount_money` plus `tip_money`."""
    if payment.total_money is not None:
        return payment.total_money
    if payment.amount_money is None:
        raise IncompleteAnswer("square's payment has neither total_money nor amount_money")
    tip = payment.tip_money.amount if payment.tip_money is not None else 0
    return SquareMoney(amount=payment.amount_money.amount + tip, currency=payment.amount_money.currency)


def transaction_from_payment(payment: SquarePayment, *, completed_refunds: int | None = None) -> TransactionInfo:
    """`completed_refunds` (Square's units) is the sum of the payment's COMPLETED refunds, needed only
    when `refunded_money` is absent although the payment lists refunds. Raises IncompleteAnswer."""
    total = total_wire_amount(payment)
    currency = total.currency.upper()
    if payment.refunded_money is not None:
        refunded_wire = payment.refunded_money.amount
    elif not payment.refund_ids:
        refunded_wire = 0  # no refund of this payment exists at all
    elif completed_refunds is not None:
        refunded_wire = completed_refunds
    else:
        raise IncompleteAnswer("square's payment lists refunds but no refunded_money")
    status = (payment.status or "unknown").upper()
    refundable = status in _REFUNDABLE
    amount = AMOUNTS.from_wire(total.amount, currency, what="total_money")
    return TransactionInfo(
        processor=NAME,
        transaction_id=payment.id,
        amount_minor=amount,
        currency=currency,
        captured_minor=amount if refundable else 0,
        refunded_minor=AMOUNTS.from_wire(refunded_wire, currency, what="refunded_money"),
        status=status.lower(),
        created_at=connector.rfc3339(payment.created_at),
        customer_ref=payment.buyer_email_address or payment.customer_id,
        description=payment.note,
        refundable=refundable,
    )


def error_from_response(status: int, body: Any, *, flow: Flow, request_id: str | None) -> RefundError:
    """Map a Square 4xx (other than 401/403/429, handled in `_http`) to the error tree."""
    try:
        errors = SquareErrorResponse.model_validate(body).errors
    except ValidationError:
        errors = []
    first = errors[0] if errors else SquareError()
    if status == 404 or first.code == "NOT_FOUND":
        said = f": {first.detail}" if first.detail else ""
        return RefundNotFound(f"square has no such refund{said}") if flow == "get" else TransactionNotFound(
            f"square has no such payment{said}"
        )
    # The first error Square names that means something to us decides; otherwise the first one.
    named = next((error for error in errors if error.code in _CODES), first)
    answer = connector.ErrorAnswer(NAME, status, request_id, f": {named.detail}" if named.detail else "")
    if named.code in _CODES:
        return answer.refused(f"the refund ({named.code})", code=_CODES[named.code], processor_code=named.code)
    return answer.unmapped(named.code)





# --------------------------------------------------------------------------- the adapter

# Square has no cancel for a PaymentRefund; it does not publish how long it keeps idempotency
# keys (developer forum, thread 28309), which is why our id travels in the refund's reason.
CAPABILITIES = Capabilities(
    cancel=False, status_api=True, lookup_api=True, partial_refunds=True, webhooks=True,
    idempotency_key_retention=None, refund_search=True,
)
DIALECT = connector.Dialect(
    NAME, CAPABILITIES, AMOUNTS, connector.request_id_header(REQUEST_ID_HEADER), error_from_response, headers=connector.ACCEPT_JSON
)


class SquareProcessor(connector.HttpProcessor):
    """One Square seller's access token, the API version it pins, and the endpoint."""

    def __init__(
        self, *, access_token: SecretStr, api_base: str = DEFAULT_API_BASE,
        square_version: str = DEFAULT_SQUARE_VERSION, http: httpx2.AsyncClient | None = None,
    ) -> None:
        self._square_version = square_version
        token = connector.StaticCredentials(lambda: {"Authorization": f"Bearer {access_token.get_secret_value()}"})
        connection = connector.Connection(
            DIALECT, api_base=api_base, http=http, credentials=token, headers={"Square-Version": square_version}
        )
        super().__init__(connection)

    def __repr__(self) -> str:
        return f"SquareProcessor(api_base={self._base!r}, square_version={self._square_version!r})"

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        answer, request_id = await self._api.call(
            "GET", f"/v2/payments/{connector.segment(transaction_id)}", SquarePaymentResponse, flow="lookup"
        )
        payment = answer.payment
        completed = None
        if payment.refunded_money is None and payment.refund_ids:
            refunds = [await self._read_refund(refund_id) for refund_id in payment.refund_ids]
            completed = sum(r.amount_money.amount for r, _ in refunds if (r.status or "").upper() == "COMPLETED")
        with connector.reading_answer(NAME, mutating=False, request_id=request_id):
            return transaction_from_payment(payment, completed_refunds=completed)

    async def _read_refund(self, refund_id: str) -> tuple[SquarePaymentRefund, str | None]:
        answer, request_id = await self._api.call(
            "GET", f"/v2/refunds/{connector.segment(refund_id)}", SquareRefundResponse, flow="get"
        )
        return answer.refund, request_id

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        wire = build_refund_request(request)
        answer, request_id = await self._api.call(
            "POST", "/v2/refunds", SquareRefundResponse, flow="create", json=wire.to_json()
        )
        return connector.refund_answer(NAME, refund_from_wire, answer.refund, request_id=request_id, mutating=True)

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        refund, request_id = await self._read_refund(processor_refund_id)
        return connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id)

    async def find_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund | None:
        """The payment's `refund_ids`, each refund read, matched by the id in its `reason`."""
        answer, _ = await connector.searching(
            self._api.call("GET", f"/v2/payments/{connector.segment(request.transaction_id)}", SquarePaymentResponse, flow="lookup"),
            processor=NAME,
        )
        found: list[ProcessorRefund] = []
        for refund_id in answer.payment.refund_ids:
            refund, request_id = await connector.searching(self._read_refund(refund_id), processor=NAME)
            if is_ours(refund, request.refund_id):
                found.append(connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id))
        return connector.the_one_found(found, request, processor=NAME)

    async def list_refunds(self, since: datetime) -> AsyncIterator[ProcessorRefund]:
        """`GET /v2/refunds?begin_time=…` (on `created_at`), oldest first, page by page with `cursor`."""
        begin = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        params = {"begin_time": begin, "sort_order": "ASC"}
        while True:
            page, request_id = await self._api.call("GET", "/v2/refunds", SquareRefundList, flow="list", params=params)
            for refund in page.refunds:
                yield connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id)
            if not page.cursor:
                return
            params = {**params, "cursor": page.cursor}
