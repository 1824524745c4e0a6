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

Amounts (docs.stripe.com/currencies): integers in Stripe's minor units, which are not always
ours (Babel's). Zero-decimal: BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF VND VUV XAF XOF XPF.
Three-decimal: BHD JOD KWD OMR TND, whose last digit must be 0. Every other currency is
two-decimal, including the special cases: ISK and UGX have no minor unit but are written x100
for backwards compatibility (so always a multiple of 100), and HUF and TWD are two-decimal in the
API (only payouts need whole units). So, in our units: USD 12.34 -> 1234, JPY 1234 -> 1234,
KWD 1.230 -> 1230 (1.234 refused), HUF 1234 -> 123400, ISK 1234 -> 123400, TWD 12.34 -> 1234,
UGX 1234 -> 123400, CLP 1234 -> 1234.

Money fields are never defaulted: a charge without `amount_refunded`, or without both
`amount_captured` and `captured`, is an incomplete answer. The one derivation is Stripe's own:
an uncaptured charge (`captured: false`) has captured nothing, a captured one without
`amount_captured` (older API versions) captured its `amount`.

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

import httpx2
from pydantic import Field, SecretStr, ValidationError

from refund_mcp.domain.errors import NotSupported, RefundError, RefundNotFound, TransactionNotFound
from refund_mcp.domain.models import (
    Capabilities, ProcessorRefund, ProcessorRefundRequest, RefundReason, RefundStatus, TransactionInfo,
)
from refund_mcp.processors import _connector as connector
from refund_mcp.processors._amounts import AmountScale, Default, IncompleteAnswer

NAME = "stripe"
Flow = Literal["lookup", "create", "get", "cancel", "list"]
DEFAULT_API_BASE = "https://api.stripe.com"
REQUEST_ID_HEADER = "Request-Id"

LIST_PAGE_SIZE = 100  # Stripe's maximum `limit`
# docs.stripe.com/api/idempotent_requests: "keys are eligible to be removed ... after they're at least 24 hours old".
KEY_RETENTION = timedelta(hours=24)
OUR_ID_KEY = "refund_mcp_id"  # the metadata key that names our refund on Stripe's
_ZERO_DECIMAL = ("BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "VND", "VUV", "XAF", "XOF", "XPF")
_THREE_DECIMAL = ("BHD", "JOD", "KWD", "OMR", "TND")
AMOUNTS = AmountScale(
    processor=NAME,
    decimals={**dict.fromkeys(_ZERO_DECIMAL, 0), **dict.fromkeys(_THREE_DECIMAL, 3)},
    default=Default.TWO,
    wire_multiple=dict.fromkeys(_THREE_DECIMAL, 10),
    source="docs.stripe.com/currencies",
)


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


_Wire = connector.WireModel


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
    """Money fields are None when absent: an absent amount is never 0 (see the module docstring)."""

    id: str
    amount: int | None = None
    amount_captured: int | None = Field(None, description="left out by older API versions; see `captured`")
    amount_refunded: int | None = None
    captured: bool | None = None
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
    amount: int | None = None
    amount_received: int | None = None
    currency: str
    status: str
    created: int | None = None
    customer: str | dict[str, Any] | None = None
    receipt_email: str | None = None
    description: str | None = None
    latest_charge: StripeChargeResponse | str | None = Field(None, description="expanded: the charge holding the money")


class StripeErrorDetail(_Wire):
    type: str | None = None
    code: str | None = None
    message: str | None = None


class StripeErrorResponse(_Wire):
    error: StripeErrorDetail


# --------------------------------------------------------------------------- pure mapping

_STATUS = connector.statuses(
    pending=["pending"], requires_action=["requires_action"], succeeded=["succeeded"], failed=["failed"], cancelled=["canceled"]
)

_REASON = connector.reasons_as(
    {
        "duplicate": [RefundReason.DUPLICATE],
        "fraudulent": [RefundReason.FRAUDULENT],
        # Every other reason of ours is a refund the customer asked for or the merchant made for them.
        "requested_by_customer": [r for r in RefundReason if r not in (RefundReason.DUPLICATE, RefundReason.FRAUDULENT)],
    }
)

# Stripe error code -> (our code, what to tell the caller)
_REFUSALS = {
    "charge_already_refunded": ("already_refunded", "the charge is already fully refunded"),
    "amount_too_large": ("amount_exceeds_refundable", "the amount is more than what is left to refund"),
    "charge_disputed": ("not_refundable", "the charge was disputed (charged back) and cannot be refunded"),
    "charge_not_refundable": ("not_refundable", "Stripe says this charge cannot be refunded"),
}


def refund_status(stripe_status: str | None) -> RefundStatus:
    return connector.status_of(_STATUS, stripe_status, upper=False)


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
        amount=AMOUNTS.to_wire(request.amount_minor, request.currency),
        charge=request.transaction_id if kind is StripeObjectKind.CHARGE else None,
        payment_intent=request.transaction_id if kind is StripeObjectKind.PAYMENT_INTENT else None,
        reason=stripe_reason(request.reason),
        metadata=metadata,
    )


def _timestamp(epoch: int | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def refund_from_wire(refund: StripeRefundResponse, *, request_id: str | None) -> ProcessorRefund:
    """Raises IncompleteAnswer for an amount refund-mcp cannot hold exactly."""
    currency = refund.currency.upper()
    amount = AMOUNTS.from_wire(refund.amount, currency, what="refund amount")
    return connector.processor_refund(
        _STATUS, refund.status, refund_id=refund.id, amount_minor=amount, currency=currency, request_id=request_id,
        upper=False, failure_reason=refund.failure_reason, created_at=_timestamp(refund.created),
        transaction_id=refund.charge or refund.payment_intent,  # the charge is the canonical id
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


def captured_wire_amount(charge: StripeChargeResponse) -> int:
    """`amount_captured`, or Stripe's documented meaning of `captured` when it is absent."""
    if charge.captured is False:
        return 0
    if charge.amount_captured is not None:
        return charge.amount_captured
    if charge.captured is True and charge.amount is not None:
        return charge.amount
    raise IncompleteAnswer("stripe's charge has neither amount_captured nor captured")


def transaction_from_charge(charge: StripeChargeResponse, *, asked_id: str | None = None) -> TransactionInfo:
    """The charge is the canonical id; its payment intent (and the id asked with) are aliases.
    Raises IncompleteAnswer when a money field is missing."""
    email = charge.billing_details.email if charge.billing_details else None
    currency = charge.currency.upper()
    return TransactionInfo(
        processor=NAME,
        transaction_id=charge.id,
        amount_minor=AMOUNTS.from_wire(charge.amount, currency, what="charge amount"),
        currency=currency,
        captured_minor=AMOUNTS.from_wire(captured_wire_amount(charge), currency, what="amount_captured"),
        refunded_minor=AMOUNTS.from_wire(charge.amount_refunded, currency, what="amount_refunded"),
        status=charge.status.lower(),
        created_at=_timestamp(charge.created),
        customer_ref=email or charge.receipt_email or _object_id(charge.customer),
        description=charge.description,
        # A fully refunded charge stays "refundable": the service then answers already_refunded.
        refundable=charge.status == "succeeded" and bool(charge.captured) and not charge.disputed,
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
            amount_minor=AMOUNTS.from_wire(intent.amount, intent.currency.upper(), what="payment intent amount"),
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
        amount_minor=AMOUNTS.from_wire(intent.amount, intent.currency.upper(), what="payment intent amount"),
        currency=intent.currency.upper(),
        captured_minor=AMOUNTS.from_wire(intent.amount_received, intent.currency.upper(), what="amount_received"),
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
    answer = connector.ErrorAnswer(NAME, status, request_id, f": {detail.message}" if detail.message else "")
    if code == "resource_missing" or status == 404:
        if flow in ("get", "cancel"):
            return RefundNotFound(f"stripe has no such refund{answer.said}")
        return TransactionNotFound(f"stripe has no such charge or payment intent{answer.said}")
    if code == "idempotency_key_in_use":
        return answer.still_processing("an earlier request with this idempotency key", processor_code=code)
    if detail.type == "idempotency_error":
        what = "the request: this idempotency key was first used with different parameters"
        return answer.refused(what, code="idempotency_conflict", processor_code=code or detail.type)
    if code in _REFUSALS:
        our_code, explanation = _REFUSALS[code]
        return answer.refused(f"the refund: {explanation}", code=our_code, processor_code=code)
    if flow == "cancel" and status == 400:
        return NotSupported(f"stripe can cancel a refund only while it requires action{answer.said}")
    return answer.unmapped(code or detail.type)





# --------------------------------------------------------------------------- the adapter

CAPABILITIES = Capabilities(
    cancel=True, status_api=True, lookup_api=True, partial_refunds=True, webhooks=True,
    idempotency_key_retention=KEY_RETENTION, refund_search=True,
)
DIALECT = connector.Dialect(
    NAME, CAPABILITIES, AMOUNTS, request_id_of=connector.request_id_header(REQUEST_ID_HEADER), refusal=error_from_response
)


class StripeProcessor(connector.HttpProcessor):
    """One Stripe account: its secret key, its endpoint and, for a Connect account, the
    `Stripe-Account` it acts for (sent on every request as a per-account header)."""

    def __init__(
        self, *, api_key: SecretStr, api_base: str = DEFAULT_API_BASE, http: httpx2.AsyncClient | None = None,
        stripe_account: str | None = None,
    ) -> None:
        bearer = connector.StaticCredentials(lambda: {"Authorization": f"Bearer {api_key.get_secret_value()}"})
        # A Connect account: the platform key acts on that account's objects.
        account = {"Stripe-Account": stripe_account} if stripe_account is not None else None
        super().__init__(connector.Connection(DIALECT, api_base=api_base, http=http, credentials=bearer, headers=account))

    def __repr__(self) -> str:
        return f"StripeProcessor(api_base={self._base!r})"

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        kind = object_kind(transaction_id)
        if kind is StripeObjectKind.CHARGE:
            charge, _ = await self._api.call(
                "GET", f"/v1/charges/{connector.segment(transaction_id)}", StripeChargeResponse, flow="lookup"
            )
            with connector.reading_answer(NAME, mutating=False):
                return transaction_from_charge(charge, asked_id=transaction_id)
        intent, _ = await self._api.call(
            "GET",
            f"/v1/payment_intents/{connector.segment(transaction_id)}",
            StripePaymentIntentResponse,
            flow="lookup",
            params={"expand[]": "latest_charge"},
        )
        with connector.reading_answer(NAME, mutating=False):
            return transaction_from_payment_intent(intent)

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        wire = build_refund_request(request)
        key = {"Idempotency-Key": request.idempotency_key}
        refund, request_id = await self._api.call(
            "POST", "/v1/refunds", StripeRefundResponse, flow="create", form=wire.to_form(), headers=key
        )
        return connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id, mutating=True)

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        refund, request_id = await self._api.call(
            "GET", f"/v1/refunds/{connector.segment(processor_refund_id)}", StripeRefundResponse, flow="get"
        )
        return connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id)

    async def find_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund | None:
        """Every refund of the payment, page by page, matched by `metadata[refund_mcp_id]`."""
        params = refund_list_params(request.transaction_id)
        found: list[ProcessorRefund] = []
        while True:
            page, request_id = await connector.searching(
                self._api.call("GET", "/v1/refunds", StripeRefundList, flow="list", params=params), processor=NAME
            )
            ours = [refund for refund in page.data if is_ours(refund, request.refund_id)]
            found += [connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id) for refund in ours]
            if not page.has_more:
                return connector.the_one_found(found, request, processor=NAME)
            if not page.data:
                raise connector.truncated_search(NAME, request_id=request_id)
            params = {**params, "starting_after": page.data[-1].id}

    async def list_refunds(self, since: datetime) -> AsyncIterator[ProcessorRefund]:
        """`GET /v1/refunds?created[gte]=…`, page by page with `starting_after` (the last id seen)."""
        params = {"created[gte]": str(int(since.timestamp())), "limit": str(LIST_PAGE_SIZE)}
        while True:
            page, request_id = await self._api.call("GET", "/v1/refunds", StripeRefundList, flow="list", params=params)
            for refund in page.data:
                yield connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id)
            if not page.has_more or not page.data:
                return
            params = {**params, "starting_after": page.data[-1].id}

    async def cancel_refund(self, processor_refund_id: str) -> ProcessorRefund:
        # A key derived from the refund makes a retried cancel after a timeout replay the first answer.
        path = f"/v1/refunds/{connector.segment(processor_refund_id)}/cancel"
        key = {"Idempotency-Key": connector.derived_key("cancel", processor_refund_id)}
        refund, request_id = await self._api.call("POST", path, StripeRefundResponse, flow="cancel", headers=key)
        return connector.refund_answer(NAME, refund_from_wire, refund, request_id=request_id, mutating=True)
