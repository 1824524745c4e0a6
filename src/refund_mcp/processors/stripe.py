"""Stripe adapter.

Wire: `POST /v1/refunds` (form-encoded), `GET /v1/refunds/{id}`, `POST /v1/refunds/{id}/cancel`,
`GET /v1/charges/{id}`, `GET /v1/payment_intents/{id}?expand[]=latest_charge`; `Authorization:
Bearer`, `Idempotency-Key` on every POST, the request id in the `Request-Id` response header.

The module is in two halves: wire structs and pure mapping functions (no I/O, unit-tested on
their own), then `StripeProcessor`, which only sends requests and applies those functions.

One payment, one id: a payment intent and the charge that holds its money are the same payment.
`lookup_transaction` answers with the charge id as the canonical `transaction_id` (for a payment
intent, its `latest_charge`) and lists the other names (the payment intent, the asked id) in
`aliases`, so balances, limits and duplicate checks count one payment however it was named.

Finding a refund again (`find_refund`): every refund carries `metadata[refund_mcp_id]`, so the
charge's (or payment intent's) refunds are listed, all pages, and matched by our refund id. Stripe
prunes idempotency keys once they are 24 hours old, which is why this search exists.

Reasons: Stripe accepts only `duplicate`, `fraudulent` and `requested_by_customer`. Our other
reasons (product_not_received, product_defective, service_issue, goodwill) are all refunds the
customer asked for or the merchant chose to make for the customer, so they are sent as
`requested_by_customer`; the exact reason travels in `metadata[refund_mcp_reason]` so Stripe's
dashboard and reports still show it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx2
from pydantic import SecretStr, ValidationError

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorError,
    ProcessorUnavailable,
    RefundError,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import (
    Capabilities,
    ProcessorRefund,
    ProcessorRefundRequest,
    RefundReason,
    RefundStatus,
    TransactionInfo,
)
from refund_mcp.processors import _http
from refund_mcp.processors._http import M

NAME = "stripe"
DEFAULT_API_BASE = "https://api.stripe.com"
REQUEST_ID_HEADER = "Request-Id"

Flow = Literal["lookup", "create", "get", "cancel", "list"]
LIST_PAGE_SIZE = 100  # Stripe's maximum `limit`
# docs.stripe.com/api/idempotent_requests: "keys are eligible to be removed ... after they're at least 24 hours old".
KEY_RETENTION = timedelta(hours=24)
OUR_ID_KEY = "refund_mcp_id"  # the metadata key that names our refund on Stripe's


# --------------------------------------------------------------------------- wire structs


class StripeObjectKind(enum.Enum):
    CHARGE = "charge"
    PAYMENT_INTENT = "payment_intent"


@dataclass(frozen=True, slots=True)
class StripeRefundCreateRequest:
    """Body of `POST /v1/refunds`. Exactly one of `charge` / `payment_intent` is set."""

    amount: int
    charge: str | None = None
    payment_intent: str | None = None
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_form(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        if self.charge is not None:
            pairs.append(("charge", self.charge))
        if self.payment_intent is not None:
            pairs.append(("payment_intent", self.payment_intent))
        pairs.append(("amount", str(self.amount)))
        if self.reason is not None:
            pairs.append(("reason", self.reason))
        pairs.extend((f"metadata[{key}]", value) for key, value in self.metadata.items())
        return pairs


_Wire = _http.WireModel


class StripeRefundResponse(_Wire):
    id: str
    amount: int
    currency: str
    status: str | None = None
    charge: str | None = None
    payment_intent: str | None = None
    created: int | None = None
    failure_reason: str | None = None
    reason: str | None = None
    metadata: dict[str, str] = {}


class StripeRefundList(_Wire):
    """`GET /v1/refunds`: a list object, newest first; `has_more` says whether another page follows."""

    data: list[StripeRefundResponse]
    has_more: bool = False


class StripeBillingDetails(_Wire):
    email: str | None = None


class StripeChargeResponse(_Wire):
    id: str
    amount: int
    amount_captured: int = 0
    amount_refunded: int = 0
    captured: bool = False
    currency: str
    status: str
    refunded: bool = False
    disputed: bool = False
    created: int | None = None
    customer: str | dict[str, Any] | None = None
    billing_details: StripeBillingDetails | None = None
    receipt_email: str | None = None
    description: str | None = None
    payment_intent: str | dict[str, Any] | None = None


class StripePaymentIntentResponse(_Wire):
    id: str
    amount: int
    amount_received: int = 0
    currency: str
    status: str
    created: int | None = None
    customer: str | dict[str, Any] | None = None
    receipt_email: str | None = None
    description: str | None = None
    latest_charge: StripeChargeResponse | str | None = None


class StripeErrorDetail(_Wire):
    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
    decline_code: str | None = None


class StripeErrorResponse(_Wire):
    error: StripeErrorDetail


# --------------------------------------------------------------------------- pure mapping

_STATUS = {
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.REQUIRES_ACTION,
    "succeeded": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.CANCELLED,
}

_REASON = {
    RefundReason.DUPLICATE: "duplicate",
    RefundReason.FRAUDULENT: "fraudulent",
    RefundReason.REQUESTED_BY_CUSTOMER: "requested_by_customer",
    RefundReason.PRODUCT_NOT_RECEIVED: "requested_by_customer",
    RefundReason.PRODUCT_DEFECTIVE: "requested_by_customer",
    RefundReason.SERVICE_ISSUE: "requested_by_customer",
    RefundReason.GOODWILL: "requested_by_customer",
}

# Stripe error code -> (our code, what to tell the caller)
_REFUSALS = {
    "charge_already_refunded": ("already_refunded", "the charge is already fully refunded"),
    "amount_too_large": ("amount_exceeds_refundable", "the amount is more than what is left to refund"),
    "charge_disputed": ("not_refundable", "the charge was disputed (charged back) and cannot be refunded"),
    "charge_not_refundable": ("not_refundable", "Stripe says this charge cannot be refunded"),
}


def refund_status(stripe_status: str | None) -> RefundStatus:
    """Stripe's refund status to ours. An unknown or missing status is PENDING: it keeps the
    amount reserved until a known status arrives, which is the safe side for money."""
    return _STATUS.get((stripe_status or "").lower(), RefundStatus.PENDING)


def stripe_reason(reason: RefundReason) -> str:
    return _REASON[reason]


def object_kind(transaction_id: str) -> StripeObjectKind:
    """Which Stripe object an id names: `ch_`/`py_` charges, `pi_` payment intents.
    Raises TransactionNotFound for anything else: no such id can exist at Stripe."""
    if transaction_id.startswith(("ch_", "py_")):
        return StripeObjectKind.CHARGE
    if transaction_id.startswith("pi_"):
        return StripeObjectKind.PAYMENT_INTENT
    raise TransactionNotFound(
        f"stripe has no payment {transaction_id!r}: "
        "Stripe payment ids start with ch_, py_ (charges) or pi_ (payment intents)"
    )


def build_refund_request(request: ProcessorRefundRequest) -> StripeRefundCreateRequest:
    """Raises TransactionNotFound when the transaction id cannot be a Stripe payment."""
    kind = object_kind(request.transaction_id)
    metadata = dict(request.metadata)
    metadata[OUR_ID_KEY] = request.refund_id
    metadata["refund_mcp_reason"] = request.reason.value
    if request.note:
        metadata["note"] = request.note[:500]  # Stripe caps metadata values at 500 characters
    return StripeRefundCreateRequest(
        amount=request.amount_minor,
        charge=request.transaction_id if kind is StripeObjectKind.CHARGE else None,
        payment_intent=request.transaction_id if kind is StripeObjectKind.PAYMENT_INTENT else None,
        reason=stripe_reason(request.reason),
        metadata=metadata,
    )


def _timestamp(epoch: int | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def refund_from_wire(refund: StripeRefundResponse, *, request_id: str | None) -> ProcessorRefund:
    return ProcessorRefund(
        processor_refund_id=refund.id,
        status=refund_status(refund.status),
        amount_minor=refund.amount,
        currency=refund.currency.upper(),
        processor_status=refund.status or "unknown",
        request_id=request_id,
        failure_reason=refund.failure_reason,
        transaction_id=refund.charge or refund.payment_intent,  # the charge is the canonical id
        created_at=_timestamp(refund.created),
    )


def _object_id(value: str | dict[str, Any] | None) -> str | None:
    """An expandable field's id, whether Stripe sent the id or the expanded object."""
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return value


def _aliases(canonical: str, *names: str | None) -> tuple[str, ...]:
    """The other ids of one payment, each once, never the canonical one."""
    return tuple(dict.fromkeys(name for name in names if name and name != canonical))


def transaction_from_charge(charge: StripeChargeResponse, *, asked_id: str | None = None) -> TransactionInfo:
    """The charge is the canonical id; its payment intent (and the id asked with) are aliases."""
    email = charge.billing_details.email if charge.billing_details else None
    return TransactionInfo(
        processor=NAME,
        transaction_id=charge.id,
        amount_minor=charge.amount,
        currency=charge.currency.upper(),
        captured_minor=charge.amount_captured if charge.captured else 0,
        refunded_minor=charge.amount_refunded,
        status=charge.status.lower(),
        created_at=_timestamp(charge.created),
        customer_ref=email or charge.receipt_email or _object_id(charge.customer),
        description=charge.description,
        # A fully refunded charge stays "refundable": the service then answers already_refunded.
        refundable=charge.status == "succeeded" and charge.captured and not charge.disputed,
        aliases=_aliases(charge.id, _object_id(charge.payment_intent), asked_id),
    )


def transaction_from_payment_intent(intent: StripePaymentIntentResponse) -> TransactionInfo:
    """Needs `latest_charge` expanded: the charge that holds the money is the canonical id, and its
    captured and refunded amounts are the payment's. Without a charge nothing was paid, and the
    payment intent is the only name the payment has."""
    charge = intent.latest_charge if isinstance(intent.latest_charge, StripeChargeResponse) else None
    if charge is not None:
        from_charge = transaction_from_charge(charge, asked_id=intent.id)
        charge_email = charge.billing_details.email if charge.billing_details else None
        return TransactionInfo(
            processor=NAME,
            transaction_id=charge.id,
            amount_minor=intent.amount,
            currency=intent.currency.upper(),
            captured_minor=from_charge.captured_minor,
            refunded_minor=from_charge.refunded_minor,
            status=intent.status.lower(),
            created_at=_timestamp(intent.created),
            customer_ref=charge_email
            or intent.receipt_email
            or charge.receipt_email
            or _object_id(intent.customer)
            or _object_id(charge.customer),
            description=intent.description or charge.description,
            refundable=intent.status == "succeeded" and from_charge.refundable,
            aliases=_aliases(charge.id, intent.id, *from_charge.aliases),
        )
    return TransactionInfo(
        processor=NAME,
        transaction_id=intent.id,
        amount_minor=intent.amount,
        currency=intent.currency.upper(),
        captured_minor=intent.amount_received,
        refunded_minor=0,
        status=intent.status.lower(),
        created_at=_timestamp(intent.created),
        customer_ref=intent.receipt_email or _object_id(intent.customer),
        description=intent.description,
        refundable=False,  # no charge yet: nothing was paid, nothing can be refunded
    )


def refund_list_params(transaction_id: str) -> dict[str, str]:
    """`GET /v1/refunds` filtered to one payment's refunds: by charge, or by payment intent."""
    kind = object_kind(transaction_id)
    field_name = "charge" if kind is StripeObjectKind.CHARGE else "payment_intent"
    return {field_name: transaction_id, "limit": str(LIST_PAGE_SIZE)}


def is_ours(refund: StripeRefundResponse, refund_id: str) -> bool:
    return refund.metadata.get(OUR_ID_KEY) == refund_id


def error_from_response(status: int, body: Any, *, flow: Flow, request_id: str | None) -> RefundError:
    """Map a Stripe 4xx (other than 401/403/429, handled in `_http`) to the error tree."""
    try:
        detail = StripeErrorResponse.model_validate(body).error
    except ValidationError:
        detail = StripeErrorDetail()
    code = detail.code
    said = f": {detail.message}" if detail.message else ""
    if code == "resource_missing" or status == 404:
        if flow in ("get", "cancel"):
            return RefundNotFound(f"stripe has no such refund{said}")
        return TransactionNotFound(f"stripe has no such charge or payment intent{said}")
    if code == "idempotency_key_in_use":
        # Another request with this key is still running at Stripe: its outcome is unknown yet.
        return ProcessorUnavailable(
            "stripe is still processing an earlier request with this idempotency key; retry later with the same key",
            processor=NAME,
            delivery=Delivery.OUTCOME_UNKNOWN,
            http_status=status,
            request_id=request_id,
            processor_code=code,
        )
    if detail.type == "idempotency_error":
        return ProcessorError(
            f"stripe refused the request: this idempotency key was first used with different parameters{said}",
            processor=NAME,
            code="idempotency_conflict",
            http_status=status,
            request_id=request_id,
            processor_code=code or detail.type,
        )
    if code in _REFUSALS:
        our_code, explanation = _REFUSALS[code]
        return ProcessorError(
            f"stripe refused the refund: {explanation}{said}",
            processor=NAME,
            code=our_code,
            http_status=status,
            request_id=request_id,
            processor_code=code,
        )
    if flow == "cancel" and status == 400:
        return NotSupported(f"stripe can cancel a refund only while it requires action{said}")
    return ProcessorError(
        f"stripe refused the request (HTTP {status}, {code or detail.type or 'no code'}){said}",
        processor=NAME,
        http_status=status,
        request_id=request_id,
        processor_code=code or detail.type,
    )


def _request_id(response: httpx2.Response) -> str | None:
    return response.headers.get(REQUEST_ID_HEADER)


def _segment(identifier: str) -> str:
    """An id as one URL path segment: a stray `/` or `?` cannot reach another endpoint."""
    return quote(identifier, safe="")


# --------------------------------------------------------------------------- the adapter


class StripeProcessor(_http.HttpProcessor):
    name = NAME
    capabilities = Capabilities(
        cancel=True,
        status_api=True,
        lookup_api=True,
        partial_refunds=True,
        webhooks=True,
        idempotency_key_retention=KEY_RETENTION,
        refund_search=True,
    )

    def __init__(
        self,
        *,
        api_key: SecretStr,
        api_base: str = DEFAULT_API_BASE,
        http: httpx2.AsyncClient | None = None,
        stripe_account: str | None = None,
    ) -> None:
        self._api_key = api_key
        self._stripe_account = stripe_account  # a Connect account: acts on its objects with the platform key
        super().__init__(api_base, http)

    def __repr__(self) -> str:
        return f"StripeProcessor(api_base={self._base!r})"

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        flow: Flow,
        params: dict[str, str] | None = None,
        form: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[M, str | None]:
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        if self._stripe_account is not None:
            headers["Stripe-Account"] = self._stripe_account
        content = None
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            content = urlencode(form).encode()
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        request = self._http.build_request(method, self._base + path, params=params, content=content, headers=headers)
        response = await _http.send(self._http, request, processor=NAME, request_id_of=_request_id)
        request_id = _request_id(response)
        body = _http.json_or_none(response)
        if not response.is_success:
            raise error_from_response(response.status_code, body, flow=flow, request_id=request_id)
        parsed = _http.parse_answer(
            model, body, processor=NAME, response=response, mutating=method == "POST", request_id=request_id
        )
        return parsed, request_id

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        kind = object_kind(transaction_id)
        if kind is StripeObjectKind.CHARGE:
            charge, _ = await self._call(
                "GET", f"/v1/charges/{_segment(transaction_id)}", StripeChargeResponse, flow="lookup"
            )
            return transaction_from_charge(charge, asked_id=transaction_id)
        intent, _ = await self._call(
            "GET",
            f"/v1/payment_intents/{_segment(transaction_id)}",
            StripePaymentIntentResponse,
            flow="lookup",
            params={"expand[]": "latest_charge"},
        )
        return transaction_from_payment_intent(intent)

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        wire = build_refund_request(request)
        refund, request_id = await self._call(
            "POST",
            "/v1/refunds",
            StripeRefundResponse,
            flow="create",
            form=wire.to_form(),
            idempotency_key=request.idempotency_key,
        )
        return refund_from_wire(refund, request_id=request_id)

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        refund, request_id = await self._call(
            "GET", f"/v1/refunds/{_segment(processor_refund_id)}", StripeRefundResponse, flow="get"
        )
        return refund_from_wire(refund, request_id=request_id)

    async def find_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund | None:
        """Every refund of the payment, page by page, matched by `metadata[refund_mcp_id]`."""
        params = refund_list_params(request.transaction_id)
        found: list[ProcessorRefund] = []
        while True:
            page, request_id = await _http.searching(
                self._call("GET", "/v1/refunds", StripeRefundList, flow="list", params=params), processor=NAME
            )
            found += [refund_from_wire(r, request_id=request_id) for r in page.data if is_ours(r, request.refund_id)]
            if not page.has_more:
                return _http.the_one_found(found, request, processor=NAME)
            if not page.data:
                raise _http.truncated_search(NAME, request_id=request_id)
            params = {**params, "starting_after": page.data[-1].id}

    async def list_refunds(self, since: datetime) -> AsyncIterator[ProcessorRefund]:
        """`GET /v1/refunds?created[gte]=…`, page by page with `starting_after` (the last id seen)."""
        params = {"created[gte]": str(int(since.timestamp())), "limit": str(LIST_PAGE_SIZE)}
        while True:
            page, request_id = await self._call("GET", "/v1/refunds", StripeRefundList, flow="list", params=params)
            for refund in page.data:
                yield refund_from_wire(refund, request_id=request_id)
            if not page.has_more or not page.data:
                return
            params = {**params, "starting_after": page.data[-1].id}

    async def cancel_refund(self, processor_refund_id: str) -> ProcessorRefund:
        # A key derived from the refund makes a retried cancel after a timeout replay the first answer.
        refund, request_id = await self._call(
            "POST",
            f"/v1/refunds/{_segment(processor_refund_id)}/cancel",
            StripeRefundResponse,
            flow="cancel",
            idempotency_key=f"refund-mcp-cancel-{processor_refund_id}",
        )
        return refund_from_wire(refund, request_id=request_id)
