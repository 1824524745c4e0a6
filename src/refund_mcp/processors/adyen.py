"""Adyen adapter (Checkout API v71).

Wire: `POST {base}/payments/{paymentPspReference}/refunds` (JSON, `X-API-Key`, `Idempotency-Key`
≤ 64 characters). Adyen answers 201 `status: "received"`: the request was accepted, not the
refund. The outcome arrives later in a REFUND webhook, so a created refund is always PENDING here.

Adyen has no API to read a refund or a payment: `get_refund` raises NotSupported, and
`lookup_transaction` only knows what the `known_transactions` callback returns (transactions
recorded from signed AUTHORISATION / CAPTURE webhooks or an import).

No refund search (`find_refund` is the base class's NotSupported): Checkout has no GET for
refunds, so a refund cannot be found by our `reference`. Adyen keeps an Idempotency-Key for at
least 31 days (per company account, not across regional endpoints); a refund in doubt for longer
goes to an operator.

Amounts (docs.adyen.com/development-resources/currency-codes): `value` in Adyen's minor units,
which differ from ours for some currencies. None: CVE DJF GNF IDR JPY KMF KRW PYG RWF UGX VND VUV
XAF XOF XPF. Three: BHD IQD JOD KWD LYD OMR TND. Two, against ISO 4217 or Babel: CLP, ISK, HUF.
Adyen says most other currencies have two; that is trusted only where ISO 4217 says two as well,
and any other currency is refused rather than sent at a guessed scale. In our units: USD 12.34 ->
1234, JPY 1234 -> 1234, KWD 1.234 -> 1234, HUF 1234 -> 123400, ISK 1234 -> 123400, TWD 12.34 ->
1234, UGX 1234 -> 1234, CLP 1234 -> 123400.

Reasons (Adyen's enum FRAUD, CUSTOMER REQUEST, RETURN, DUPLICATE, OTHER): duplicate → DUPLICATE,
fraudulent → FRAUD, requested_by_customer and product_not_received → CUSTOMER REQUEST,
product_defective → RETURN (defective goods are normally sent back), service_issue and
goodwill → OTHER.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx2
from pydantic import SecretStr, ValidationError

from refund_mcp.domain.errors import NotSupported, RefundError, TransactionNotFound
from refund_mcp.domain.models import Capabilities, ProcessorRefund, ProcessorRefundRequest, RefundReason, TransactionInfo
from refund_mcp.processors import _connector as connector
from refund_mcp.processors import _http
from refund_mcp.processors._amounts import AmountScale, Default

NAME = "adyen"
DEFAULT_API_BASE = "https://checkout-test.adyen.com/v71"
IDEMPOTENCY_KEY_MAX = 64  # docs.adyen.com/development-resources/api-idempotency
REFERENCE_MAX = 80

_ZERO_DECIMAL = ("CVE", "DJF", "GNF", "IDR", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF")
_THREE_DECIMAL = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
AMOUNTS = AmountScale(
    processor=NAME,
    decimals={
        **dict.fromkeys(_ZERO_DECIMAL, 0),
        **dict.fromkeys(_THREE_DECIMAL, 3),
        **dict.fromkeys(("CLP", "ISK", "HUF"), 2),
    },
    default=Default.TWO_IF_ISO_AGREES,
    source="docs.adyen.com currency codes",
)


KnownTransactions = Callable[[str], Awaitable[TransactionInfo | None]]


# --------------------------------------------------------------------------- wire structs


_Wire = connector.WireModel


class AdyenAmount(_Wire):
    currency: str
    value: int


class AdyenRefundRequest(_Wire):
    """Body of the refunds call (schema `PaymentRefundRequest`); field names are Adyen's."""

    merchantAccount: str
    amount: AdyenAmount
    reference: str | None = None
    merchantRefundReason: str | None = None


class AdyenRefundResponse(_Wire):
    """Schema `PaymentRefundResponse`; `status` is always "received"."""

    pspReference: str
    paymentPspReference: str
    merchantAccount: str
    amount: AdyenAmount
    status: str


class AdyenServiceError(_Wire):
    errorCode: str | None = None
    message: str | None = None
    pspReference: str | None = None


# --------------------------------------------------------------------------- pure mapping

_REASON = connector.reasons_as(
    {
        "DUPLICATE": [RefundReason.DUPLICATE],
        "FRAUD": [RefundReason.FRAUDULENT],
        "CUSTOMER REQUEST": [RefundReason.REQUESTED_BY_CUSTOMER, RefundReason.PRODUCT_NOT_RECEIVED],
        "RETURN": [RefundReason.PRODUCT_DEFECTIVE],  # defective goods are normally sent back
        "OTHER": [RefundReason.SERVICE_ISSUE, RefundReason.GOODWILL],
    }
)

# Adyen `errorCode`s on the refund call that mean something specific to us
# (docs.adyen.com/development-resources/error-codes). Refusals of accepted refunds (over-refund,
# wrong currency for the payment) come later through the REFUND webhook's `reason`, not here.
_ERROR_CODES = {
    "100": ("processor_error", "no amount was specified"),
    "137": ("processor_error", "the amount is invalid"),
    "138": ("currency_mismatch", "the currency is not supported for this payment"),
}
IN_PROGRESS_CODE = "704"  # "request already processed or in progress" (API idempotency docs)


# "received" is the only status the refunds call answers, and it only means Adyen will process the
# refund: it stays pending until a REFUND webhook says how it ended.
_STATUS = connector.statuses(pending=["received"])


def adyen_reason(reason: RefundReason) -> str:
    return _REASON[reason]


def build_refund_request(request: ProcessorRefundRequest, *, merchant_account: str) -> AdyenRefundRequest:
    """Raises ValueError for an idempotency key Adyen would not accept (a bug, not a user error)."""
    connector.checked_key(request.idempotency_key, limit=IDEMPOTENCY_KEY_MAX, processor=NAME)
    return AdyenRefundRequest(
        merchantAccount=merchant_account,
        amount=AdyenAmount(currency=request.currency, value=AMOUNTS.to_wire(request.amount_minor, request.currency)),
        reference=request.refund_id[:REFERENCE_MAX],
        merchantRefundReason=adyen_reason(request.reason),
    )


def refund_from_wire(refund: AdyenRefundResponse) -> ProcessorRefund:
    """Raises IncompleteAnswer for an amount refund-mcp cannot hold exactly."""
    # "received" only means Adyen will process it: never report success before the webhook says so.
    currency = refund.amount.currency.upper()
    amount = AMOUNTS.from_wire(refund.amount.value, currency, what="refund amount")
    return connector.processor_refund(
        _STATUS, refund.status, refund_id=refund.pspReference, amount_minor=amount, currency=currency,
        request_id=refund.pspReference, transaction_id=refund.paymentPspReference,
    )


def error_from_response(
    status: int, body: Any, *, transient: bool, request_id: str | None, flow: str = "create"
) -> RefundError:
    """Map an Adyen ServiceError (other than 401/403/429/5xx, handled in `_http`) to the error tree.
    `transient` is the `transient-error: true` response header; every call Adyen answers here is a create."""
    try:
        error = AdyenServiceError.model_validate(body)
    except ValidationError:
        error = AdyenServiceError()
    code = error.errorCode
    answer = connector.ErrorAnswer(NAME, status, request_id or error.pspReference, f": {error.message}" if error.message else "")
    if code == IN_PROGRESS_CODE and transient:
        return answer.still_processing("an earlier request with this idempotency key", processor_code=code)
    if code == IN_PROGRESS_CODE:
        return answer.refused("to reuse this idempotency key for this request", code="idempotency_conflict", processor_code=code)
    if code in _ERROR_CODES:
        our_code, explanation = _ERROR_CODES[code]
        return answer.refused(f"the refund: {explanation}", code=our_code, processor_code=code)
    return answer.unmapped(code)


def _transient(response: httpx2.Response) -> dict[str, Any]:
    return {"transient": response.headers.get("transient-error", "").strip().lower() == "true"}


def unknown_transaction(transaction_id: str) -> TransactionNotFound:
    return TransactionNotFound(
        f"adyen transaction {transaction_id!r} is not known to refund-mcp. Adyen has no API to look up a "
        "payment: transactions become known from signed AUTHORISATION / CAPTURE webhooks (or an import). "
        "Check that Adyen webhooks reach refund-mcp, or use the payment's pspReference exactly."
    )


def _request_id(response: httpx2.Response) -> str | None:
    body = _http.json_or_none(response)
    psp = body.get("pspReference") if isinstance(body, dict) else None
    return psp if isinstance(psp, str) else None



# --------------------------------------------------------------------------- the adapter

# No refund or payment GET in Checkout (see the module docstring); Idempotency-Key is kept at least
# 31 days (docs.adyen.com/development-resources/api-idempotency).
CAPABILITIES = Capabilities(
    cancel=False, status_api=False, lookup_api=False, partial_refunds=True, webhooks=True,
    idempotency_key_retention=timedelta(days=31), refund_search=False,
)
DIALECT = connector.Dialect(
    NAME, CAPABILITIES, AMOUNTS, _request_id, error_from_response, headers=connector.ACCEPT_JSON, refusal_context=_transient
)


class AdyenProcessor(connector.HttpProcessor):
    """One Adyen merchant account: its API key, merchant account and endpoint are all arguments."""

    def __init__(
        self, *, api_key: SecretStr, merchant_account: str, api_base: str = DEFAULT_API_BASE,
        http: httpx2.AsyncClient | None = None, known_transactions: KnownTransactions | None = None,
    ) -> None:
        self._merchant_account = merchant_account
        self._known_transactions = known_transactions
        key = connector.StaticCredentials(lambda: {"X-API-Key": api_key.get_secret_value()})
        super().__init__(connector.Connection(DIALECT, api_base=api_base, http=http, credentials=key))

    def __repr__(self) -> str:
        return f"AdyenProcessor(merchant_account={self._merchant_account!r}, api_base={self._base!r})"

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        if self._known_transactions is not None:
            info = await self._known_transactions(transaction_id)
            if info is not None:
                return info
        raise unknown_transaction(transaction_id)

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        wire = build_refund_request(request, merchant_account=self._merchant_account)
        path = f"/payments/{connector.segment(request.transaction_id)}/refunds"
        key = {"Idempotency-Key": request.idempotency_key}
        refund, _ = await self._api.call("POST", path, AdyenRefundResponse, flow="create", json=wire.to_json(), headers=key)
        with connector.reading_answer(NAME, mutating=True, request_id=refund.pspReference):
            return refund_from_wire(refund)

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        raise NotSupported("Adyen has no refund status API; outcomes arrive by webhook")
