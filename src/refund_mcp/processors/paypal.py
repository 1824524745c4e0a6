"""PayPal adapter (Payments v2).

Wire: OAuth2 client-credentials token from `POST /v1/oauth2/token`; `POST
/v2/payments/captures/{id}/refund` (JSON, `PayPal-Request-Id` = idempotency key, `Prefer:
return=representation`), `GET /v2/payments/refunds/{id}`, `GET /v2/payments/captures/{id}`.
Amounts are decimal strings in PayPal's decimals for the currency (developer.paypal.com currency
codes): none for HUF, JPY and TWD (a decimal there is PayPal's DECIMAL_PRECISION error), ISO 4217
minor units for every other currency (Money: "a decimal fraction for currencies like TND").
In our units: USD 12.34 -> "12.34", JPY 1234 -> "1234", KWD 1.234 -> "1.234", HUF 1234 -> "1234",
ISK 1234 -> "1234", TWD 12.00 -> "12" (12.34 refused), UGX 1234 -> "1234", CLP 1234 -> "1234". The request
id is the `Paypal-Debug-Id` header (or the error body's `debug_id`).

Choices worth knowing:
- `custom_id` carries our refund id (PayPal's reconciliation field, shown in reports);
  `invoice_id` is left alone because PayPal refuses a reused one (DUPLICATE_INVOICE_ID) and the
  merchant may already use it for the order's invoice.
- `note_to_payer` is shown to the payer: it is the reason in plain words, then the note if any.
- Refunded-so-far on lookup: a capture carries no refunded total (only each refund's
  `seller_payable_breakdown.total_refunded_amount` does). A REFUNDED capture counts as fully
  refunded; COMPLETED as nothing refunded; PARTIALLY_REFUNDED reports 0, so refund-mcp's own
  records decide the remaining balance and PayPal's REFUND_AMOUNT_EXCEEDED stays the backstop.
- There is no cancel operation in the spec, so `cancel_refund` is the base class's NotSupported.
- No refund search (`find_refund` is the base class's NotSupported): Payments v2 cannot list a
  capture's refunds or find one by `custom_id`. PayPal keeps a PayPal-Request-Id for 45 days, which
  covers every normal retry; a refund in doubt for longer goes to an operator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx2
from pydantic import Field, SecretStr, ValidationError

from refund_mcp.domain.errors import (
    Delivery, ProcessorAuthFailed, ProcessorCallError, ProcessorError, ProcessorUnavailable, RefundError,
    RefundNotFound, TransactionNotFound,
)
from refund_mcp.domain.models import (
    Capabilities, ProcessorRefund, ProcessorRefundRequest, RefundReason, RefundStatus, TransactionInfo,
)
from refund_mcp.processors import _connector as connector
from refund_mcp.processors import _http
from refund_mcp.processors._amounts import AmountScale, Default, IncompleteAnswer

NAME = "paypal"
Flow = Literal["lookup", "create", "get", "verify"]
DEFAULT_API_BASE = "https://api-m.sandbox.paypal.com"
DEBUG_ID_HEADER = "Paypal-Debug-Id"
TOKEN_PATH = "/v1/oauth2/token"
# Refresh this long before PayPal's expiry so a token never dies between our check and its use.
TOKEN_REFRESH_MARGIN_SECONDS = 120.0
NOTE_TO_PAYER_MAX = 255
VERIFY_WEBHOOK_PATH = "/v1/notifications/verify-webhook-signature"

AMOUNTS = AmountScale(
    processor=NAME,
    decimals={"HUF": 0, "JPY": 0, "TWD": 0},
    default=Default.ISO,
    source="developer.paypal.com currency codes",
)


# --------------------------------------------------------------------------- wire structs


_Wire = connector.WireModel


class PayPalMoney(_Wire):
    currency_code: str
    value: str | None = Field(None, description="required by PayPal: absent is an incomplete answer, never 0")


class PayPalRefundRequest(_Wire):
    """Body of `POST /v2/payments/captures/{capture_id}/refund` (schema `refund_request`)."""

    amount: PayPalMoney | None = None
    custom_id: str | None = Field(None, description="our refund id: PayPal's reconciliation field")
    note_to_payer: str | None = Field(None, description="shown to the payer")


class PayPalTokenResponse(_Wire):
    access_token: str
    token_type: str = "Bearer"
    expires_in: float

    def __repr__(self) -> str:  # the token is a credential
        return f"PayPalTokenResponse(token_type={self.token_type!r}, expires_in={self.expires_in!r})"


class PayPalErrorDetail(_Wire):
    issue: str | None = None
    description: str | None = None


class PayPalErrorResponse(_Wire):
    name: str | None = None
    message: str | None = None
    debug_id: str | None = None
    details: list[PayPalErrorDetail] = []


class PayPalLink(_Wire):
    href: str
    rel: str


class PayPalStatusDetails(_Wire):
    reason: str | None = None


class PayPalRefundResponse(_Wire):
    """Schema `refund` (with `Prefer: return=representation`)."""

    id: str
    status: str | None = None
    status_details: PayPalStatusDetails | None = None
    links: list[PayPalLink] = []  # "up" names the capture
    amount: PayPalMoney | None = None
    custom_id: str | None = None
    create_time: str | None = None


class PayPalCaptureResponse(_Wire):
    """Schema `capture-2` (`GET /v2/payments/captures/{id}`)."""

    id: str
    status: str
    amount: PayPalMoney | None = Field(None, description="required by PayPal: absent is an incomplete answer")
    invoice_id: str | None = Field(None, description="the merchant's invoice, shown as the description")
    custom_id: str | None = None
    create_time: str | None = None


class PayPalVerifyWebhookSignatureResponse(_Wire):
    """Schema `verify_webhook_signature_response`: SUCCESS or FAILURE."""

    verification_status: str


# --------------------------------------------------------------------------- pure mapping

_STATUS = connector.statuses(succeeded=["COMPLETED"], pending=["PENDING"], failed=["FAILED"], cancelled=["CANCELLED"])

# The payer reads `note_to_payer`, so the customer's own request is worded to them.
_REASON_TEXT = {**connector.REASON_WORDS, RefundReason.REQUESTED_BY_CUSTOMER: "Refund requested by you"}

# 422 `issue` -> our code (schema `captures.refund-422`); anything else is processor_error.
_ISSUES = {
    "CAPTURE_FULLY_REFUNDED": "already_refunded",
    "REFUND_AMOUNT_EXCEEDED": "amount_exceeds_refundable",
    "REFUND_CAPTURE_CURRENCY_MISMATCH": "currency_mismatch",
    "CURRENCY_MISMATCH": "currency_mismatch",
    "REFUND_NOT_ALLOWED": "not_refundable",
    "REFUND_TIME_LIMIT_EXCEEDED": "not_refundable",
    "TRANSACTION_DISPUTED": "not_refundable",
    "REFUND_NOT_PERMITTED_DUE_TO_CHARGEBACK": "not_refundable",
}

# Capture statuses that mean money was captured (REFUNDED too: it was captured, then refunded).
_CAPTURED = frozenset({"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"})


def refund_status(paypal_status: str | None) -> RefundStatus:
    return connector.status_of(_STATUS, paypal_status)


def note_to_payer(reason: RefundReason, note: str | None) -> str:
    """The payer-visible text: one line (the spec's pattern `^.*$` has no newlines), ≤ 255 chars."""
    text = connector.with_note(_REASON_TEXT[reason], note)
    if len(text) > NOTE_TO_PAYER_MAX:
        text = text[: NOTE_TO_PAYER_MAX - 1] + "…"
    return text


def build_refund_request(request: ProcessorRefundRequest) -> PayPalRefundRequest:
    return PayPalRefundRequest(
        amount=PayPalMoney(
            currency_code=request.currency, value=AMOUNTS.to_decimal(request.amount_minor, request.currency)
        ),
        custom_id=request.refund_id,
        note_to_payer=note_to_payer(request.reason, request.note),
    )


def token_lifetime(expires_in: float) -> float:
    """How long to reuse a token: its lifetime minus a margin (half of it for very short tokens)."""
    return max(0.0, expires_in - min(TOKEN_REFRESH_MARGIN_SECONDS, expires_in / 2))


def _capture_id_from_links(links: list[PayPalLink]) -> str | None:
    for link in links:
        if link.rel == "up" and "/captures/" in link.href:
            return link.href.rstrip("/").rsplit("/", 1)[-1]
    return None


def refund_from_wire(refund: PayPalRefundResponse, *, request_id: str | None) -> ProcessorRefund:
    """Raises IncompleteAnswer when the amount is missing or not exact in its currency."""
    if refund.amount is None:
        raise IncompleteAnswer("paypal's refund has no amount")
    currency = refund.amount.currency_code.upper()
    amount = AMOUNTS.from_decimal(refund.amount.value, currency, what="refund amount")
    return connector.processor_refund(
        _STATUS, refund.status, refund_id=refund.id, amount_minor=amount, currency=currency, request_id=request_id,
        failure_reason=refund.status_details.reason if refund.status_details else None,
        transaction_id=_capture_id_from_links(refund.links), created_at=connector.rfc3339(refund.create_time),
    )


def replay_mismatch(
    request: ProcessorRefundRequest, refund: PayPalRefundResponse, answer: ProcessorRefund
) -> RefundError | None:
    """PayPal answers a reused PayPal-Request-Id with the original refund whatever the new body
    says; a different refund id or amount means the key was reused for another refund."""
    if (refund.custom_id is not None and refund.custom_id != request.refund_id) or (
        answer.amount_minor,
        answer.currency,
    ) != (request.amount_minor, request.currency):
        return ProcessorError(
            "paypal returned an earlier, different refund for this PayPal-Request-Id; "
            "the idempotency key was reused for another refund",
            processor=NAME,
            code="idempotency_conflict",
            request_id=answer.request_id,
            processor_code="PAYPAL_REQUEST_ID_REUSED",
        )
    return None


def transaction_from_capture(capture: PayPalCaptureResponse) -> TransactionInfo:
    """Raises IncompleteAnswer when the amount is missing or not exact in its currency."""
    if capture.amount is None:
        raise IncompleteAnswer("paypal's capture has no amount")
    currency = capture.amount.currency_code.upper()
    amount = AMOUNTS.from_decimal(capture.amount.value, currency, what="capture amount")
    status = capture.status.upper()
    captured = amount if status in _CAPTURED else 0
    return TransactionInfo(
        processor=NAME,
        transaction_id=capture.id,
        amount_minor=amount,
        currency=currency,
        captured_minor=captured,
        refunded_minor=captured if status == "REFUNDED" else 0,  # see the module docstring
        status=status.lower(),
        created_at=connector.rfc3339(capture.create_time),
        customer_ref=None,  # a capture names the payee (the merchant), never the payer
        description=capture.invoice_id or capture.custom_id,
        refundable=status in _CAPTURED,
    )


def verify_webhook_request_body(
    *,
    auth_algo: str,
    cert_url: str,
    transmission_id: str,
    transmission_sig: str,
    transmission_time: str,
    webhook_id: str,
    raw_event: bytes,
) -> bytes:
    """Body of `POST /v1/notifications/verify-webhook-signature` (schema `verify_webhook_signature`).

    `raw_event` (the delivered body, a UTF-8 JSON object) is embedded byte for byte rather than
    parsed and dumped again: the signature covers the event as PayPal sent it (its CRC32 is part of
    the signed string), and a re-serialized event with other spacing, escaping or number format is
    a known cause of FAILURE verdicts for authentic deliveries."""
    head = json.dumps(
        {
            "auth_algo": auth_algo,
            "cert_url": cert_url,
            "transmission_id": transmission_id,
            "transmission_sig": transmission_sig,
            "transmission_time": transmission_time,
            "webhook_id": webhook_id,
        },
        separators=(",", ":"),
    )
    return head[:-1].encode() + b',"webhook_event":' + raw_event + b"}"


def error_from_response(status: int, body: Any, *, flow: Flow, request_id: str | None) -> RefundError:
    """Map a PayPal 4xx (other than 401/403/429, handled in `_http`) to the error tree."""
    try:
        error = PayPalErrorResponse.model_validate(body)
    except ValidationError:
        error = PayPalErrorResponse()
    issues = [detail.issue for detail in error.details if detail.issue]
    first = next((detail for detail in error.details if detail.issue), None)
    said = f": {first.description}" if first and first.description else (f": {error.message}" if error.message else "")
    answer = connector.ErrorAnswer(NAME, status, request_id or error.debug_id, said)
    if status == 404 or error.name == "RESOURCE_NOT_FOUND":
        return RefundNotFound(f"paypal has no such refund{said}") if flow == "get" else TransactionNotFound(
            f"paypal has no such capture{said}"
        )
    if status == 409 or error.name == "RESOURCE_CONFLICT":
        # "A previous request on this resource is currently in progress": its outcome is not known yet.
        return answer.still_processing("an earlier request for this capture", processor_code=issues[0] if issues else error.name)
    mapped = next((issue for issue in issues if issue in _ISSUES), None)
    if mapped is not None:
        return answer.refused(f"the refund ({mapped})", code=_ISSUES[mapped], processor_code=mapped)
    return answer.unmapped(issues[0] if issues else error.name)



def _request_id(response: httpx2.Response) -> str | None:
    header = response.headers.get(DEBUG_ID_HEADER)
    if header:
        return header
    body = _http.json_or_none(response)
    debug_id = body.get("debug_id") if isinstance(body, dict) else None
    return debug_id if isinstance(debug_id, str) else None




class PayPalToken:
    """PayPal's OAuth2 client-credentials token as the adapter's `Credentials`: fetched once and
    shared by concurrent callers, reused until shortly before it expires, fetched anew after a 401."""

    def __init__(
        self, *, client_id: str, client_secret: SecretStr, token_url: str, http: httpx2.AsyncClient, clock: Callable[[], float]
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_url = token_url
        self._http = http
        self._clock = clock
        self._token: str | None = None
        self._valid_until = 0.0
        self._lock = asyncio.Lock()  # one fetch at a time: concurrent callers wait and share its token

    def __repr__(self) -> str:
        return f"PayPalToken(client_id={self._client_id!r})"

    async def headers(self) -> dict[str, str]:
        async with self._lock:
            if self._token is None or self._clock() >= self._valid_until:
                token, lifetime = await self._fetch()
                self._token, self._valid_until = token, self._clock() + lifetime
            return {"Authorization": f"Bearer {self._token}"}

    def rejected(self, headers: Mapping[str, str]) -> bool:
        # Forget only the token that failed: a concurrent caller may already have fetched a fresh one.
        if headers.get("Authorization") == f"Bearer {self._token}":
            self._token = None
        return True

    async def _fetch(self) -> tuple[str, float]:
        """Fetch a token. Any failure here means the actual API call was never sent (NOT_SENT)."""
        basic = base64.b64encode(f"{self._client_id}:{self._client_secret.get_secret_value()}".encode()).decode()
        request = self._http.build_request(
            "POST",
            self._token_url,
            content=b"grant_type=client_credentials",
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )
        try:
            response = await _http.send(self._http, request, processor=NAME, request_id_of=_request_id)
        except ProcessorCallError as exc:
            if exc.delivery is Delivery.OUTCOME_UNKNOWN:
                raise ProcessorUnavailable(
                    "paypal's token endpoint failed; the refund request itself was not sent and can be retried",
                    processor=NAME,
                    delivery=Delivery.NOT_SENT,
                    http_status=exc.http_status,
                    request_id=exc.request_id,
                ) from exc
            raise
        if not response.is_success:
            # 400 invalid_client / invalid_grant: the credentials or the app are wrong. The body is
            # never quoted (it describes the credentials); the refund itself was not sent.
            raise ProcessorAuthFailed(
                f"paypal refused the token request (HTTP {response.status_code}); "
                "check PAYPAL_CLIENT_ID, PAYPAL_CLIENT_SECRET and PAYPAL_API_BASE",
                processor=NAME,
                http_status=response.status_code,
                request_id=_request_id(response),
            )
        token = _http.parse_answer(
            PayPalTokenResponse,
            _http.json_or_none(response),
            processor=NAME,
            response=response,
            mutating=False,
            request_id=_request_id(response),
        )
        return token.access_token, token_lifetime(token.expires_in)


# --------------------------------------------------------------------------- the adapter

# No cancel and no refund search in Payments v2 (see the module docstring); PayPal keeps a
# PayPal-Request-Id for 45 days (developer.paypal.com/reference/guidelines/idempotency).
CAPABILITIES = Capabilities(
    cancel=False, status_api=True, lookup_api=True, partial_refunds=True, webhooks=True,
    idempotency_key_retention=timedelta(days=45), refund_search=False,
)
DIALECT = connector.Dialect(
    NAME, CAPABILITIES, AMOUNTS, request_id_of=_request_id, refusal=error_from_response, headers=connector.ACCEPT_JSON
)


class PayPalProcessor(connector.HttpProcessor):
    """One PayPal REST app: its client id and secret (for the OAuth token) and its endpoint."""

    def __init__(
        self, *, client_id: str, client_secret: SecretStr, api_base: str = DEFAULT_API_BASE,
        http: httpx2.AsyncClient | None = None,
    ) -> None:
        self._client_id = client_id
        self._clock: Callable[[], float] = time.monotonic  # replaceable in tests; never sleeps
        client = http if http is not None else _http.build_client()
        token = PayPalToken(
            client_id=client_id,
            client_secret=client_secret,
            token_url=api_base.rstrip("/") + TOKEN_PATH,
            http=client,
            clock=lambda: self._clock(),
        )
        super().__init__(
            connector.Connection(DIALECT, api_base=api_base, http=client, credentials=token, owns_http=http is None)
        )

    def __repr__(self) -> str:
        return f"PayPalProcessor(client_id={self._client_id!r}, api_base={self._base!r})"

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        capture, request_id = await self._api.call(
            "GET", f"/v2/payments/captures/{connector.segment(transaction_id)}", PayPalCaptureResponse, flow="lookup"
        )
        with connector.reading_answer(NAME, mutating=False, request_id=request_id):
            return transaction_from_capture(capture)

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        wire = build_refund_request(request)
        path = f"/v2/payments/captures/{connector.segment(request.transaction_id)}/refund"
        headers = {"PayPal-Request-Id": request.idempotency_key, "Prefer": "return=representation"}
        refund, request_id = await self._api.call(
            "POST", path, PayPalRefundResponse, flow="create", json=wire.to_json(), headers=headers
        )
        with connector.reading_answer(NAME, mutating=True, request_id=request_id):
            answer = refund_from_wire(refund, request_id=request_id)
        if (mismatch := replay_mismatch(request, refund, answer)) is not None:
            raise mismatch
        return answer

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        refund, request_id = await self._api.call(
            "GET", f"/v2/payments/refunds/{connector.segment(processor_refund_id)}", PayPalRefundResponse, flow="get"
        )
        with connector.reading_answer(NAME, mutating=False, request_id=request_id):
            return refund_from_wire(refund, request_id=request_id)

    async def verify_webhook_signature(
        self,
        *,
        auth_algo: str,
        cert_url: str,
        transmission_id: str,
        transmission_sig: str,
        transmission_time: str,
        webhook_id: str,
        raw_event: bytes,
    ) -> bool:
        """Ask PayPal whether a webhook delivery is authentic (True only for `SUCCESS`).

        The five transmission values come from the delivery's PAYPAL-* headers, `raw_event` is its
        body (a UTF-8 JSON object). Raises ProcessorCallError when PayPal cannot be asked or
        refuses the request (ProcessorError with HTTP 400/422 for values that cannot be a PayPal
        transmission), or another RefundError for an answer that makes no sense here (404)."""
        body = verify_webhook_request_body(
            auth_algo=auth_algo, cert_url=cert_url, transmission_id=transmission_id, transmission_sig=transmission_sig,
            transmission_time=transmission_time, webhook_id=webhook_id, raw_event=raw_event,
        )
        answer, _ = await self._api.call(
            "POST", VERIFY_WEBHOOK_PATH, PayPalVerifyWebhookSignatureResponse, flow="verify", content=body
        )
        return answer.verification_status == "SUCCESS"
