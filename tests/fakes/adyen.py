"""A stateful fake of Adyen's Checkout refund call (v71 and later: the version is a path segment).

Endpoint: POST /{version}/payments/{paymentPspReference}/refunds, `X-API-Key`, JSON. Success is
201 `{merchantAccount, paymentPspReference, reference, pspReference, status: "received", amount}`;
errors are ServiceError `{status, errorCode, message, errorType, pspReference}`.

Like Adyen, the fake accepts a well-formed refund for any pspReference and decides later: an
unknown payment, an amount above what is left or another currency is only refused in the REFUND
webhook (success=false with a reason). The fake keeps that verdict in `outcome`/`reason` of each
refund (GET /_fake/state) and applies it when a test moves the refund on
(POST /_fake/refunds/{pspReference}/status {"status": "succeeded"|"failed"}).

Idempotency (docs.adyen.com/development-resources/api-idempotency): the first answer to an
`Idempotency-Key` is replayed byte for byte with the key echoed in the `Idempotency-Key` header.
For a duplicate the docs name "HTTP 422 - Unprocessable Entity or HTTP 409 - Conflict status with
the error code 704: 'request already processed or in progress'", where `transient-error: true`
means retry later with the same key. The fake answers a same-key request with a *different* body
with 422 / 704 and `transient-error: false` (never retry it): the documented code, applied to the
case the docs do not spell out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tests.fakes.common import FakeProcessor, PaymentSeed, StoredAnswer, fingerprint, random_id

DEFAULT_API_KEY = "AQE_fake_adyen_api_key_0000"
DEFAULT_MERCHANT_ACCOUNT = "RefundMcpFakeECOM"
REASONS = ("FRAUD", "CUSTOMER REQUEST", "RETURN", "DUPLICATE", "OTHER")
_REQUEST_FIELDS = {
    "amount",
    "applicationInfo",
    "capturePspReference",
    "enhancedSchemeData",
    "lineItems",
    "merchantAccount",
    "merchantRefundReason",
    "reference",
    "splits",
    "store",
}
_PSP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


@dataclass
class _Refund:
    psp_reference: str
    payment_psp_reference: str
    amount: int
    currency: str
    reference: str | None
    reason: str | None
    status: str  # "received", then what the REFUND webhook would say: "succeeded" / "failed"
    outcome: str  # the verdict Adyen will send: "succeeded" or "failed"
    outcome_reason: str | None


class AdyenFake(FakeProcessor):
    name = "adyen"

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, merchant_account: str = DEFAULT_MERCHANT_ACCOUNT) -> None:
        self.api_key = api_key
        self.merchant_account = merchant_account
        self.payments: dict[str, PaymentSeed] = {}
        self.refunds: dict[str, _Refund] = {}
        self.idempotency: dict[str, StoredAnswer] = {}
        super().__init__()

    # ------------------------------------------------------------------ wire helpers

    def _respond(self, body: dict[str, Any], status_code: int, headers: dict[str, str] | None = None) -> Response:
        return Response(
            json.dumps(body, separators=(",", ":")).encode(),
            status_code=status_code,
            media_type="application/json;charset=UTF-8",
            headers=headers,
        )

    def _error(
        self,
        status_code: int,
        error_code: str,
        message: str,
        error_type: str,
        *,
        headers: dict[str, str] | None = None,
        psp: bool = True,
    ) -> Response:
        body: dict[str, Any] = {
            "status": status_code,
            "errorCode": error_code,
            "message": message,
            "errorType": error_type,
        }
        if psp:
            body["pspReference"] = random_id("", 16, _PSP_ALPHABET)
        return self._respond(body, status_code, headers)

    def server_error(self, status_code: int) -> Response:
        return self._error(status_code, "905" if status_code == 500 else "000", "Internal error", "internal")

    def rate_limited(self) -> Response:
        return self._error(
            429, "000", "Too many requests", "validation", headers={"Retry-After": self.faults.retry_after}
        )

    def _unauthorized(self, request: Request) -> Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            return self._error(401, "000", "HTTP Status Response - Unauthorized", "security", psp=False)
        return None

    def refund_object(self, refund: _Refund) -> dict[str, Any]:
        return {
            "pspReference": refund.psp_reference,
            "paymentPspReference": refund.payment_psp_reference,
            "amount": {"currency": refund.currency, "value": refund.amount},
            "reference": refund.reference,
            "merchantRefundReason": refund.reason,
            "status": refund.status,
            "outcome": refund.outcome,
            "reason": refund.outcome_reason,
        }

    # ------------------------------------------------------------------ control

    def add_payment(self, seed: PaymentSeed) -> dict[str, Any]:
        psp = seed.id or random_id("", 16, _PSP_ALPHABET)
        self.payments[psp] = seed
        return {"id": psp}

    def state(self) -> dict[str, Any]:
        return {
            "refund_count": len(self.refunds),
            "refunds": [self.refund_object(r) for r in self.refunds.values()],
            "payments": [
                {
                    "pspReference": psp,
                    "amount": {"currency": s.currency, "value": s.amount_minor},
                    "refunded": self._refunded(psp),
                }
                for psp, s in self.payments.items()
            ],
        }

    def set_refund_status(
        self, refund_id: str, status: str, failure_reason: str | None = None
    ) -> dict[str, Any] | None:
        refund = self.refunds.get(refund_id)
        if refund is None:
            return None
        refund.status = status
        if failure_reason is not None:
            refund.outcome_reason = failure_reason
        return self.refund_object(refund)

    def _refunded(self, psp: str) -> int:
        seed = self.payments[psp]
        held = sum(
            r.amount
            for r in self.refunds.values()
            if r.payment_psp_reference == psp and r.outcome == "succeeded" and r.status != "failed"
        )
        return seed.refunded_minor + held

    # ------------------------------------------------------------------ API

    def api_routes(self) -> list[BaseRoute]:
        return [self.route("/{version}/payments/{psp}/refunds", self._create_refund, ["POST"])]

    async def _create_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        raw = await request.body()
        key = request.headers.get("idempotency-key")
        request_print = fingerprint(request.url.path, raw.decode(errors="replace"))
        if key is not None and (stored := self.idempotency.get(key)) is not None:
            if stored.fingerprint != request_print:
                return self._error(
                    422,
                    "704",
                    "request already processed or in progress",
                    "validation",
                    headers={"transient-error": "false", "Idempotency-Key": key},
                )
            return stored.replay()
        response, executed = self._refund(request.path_params["psp"], raw, key)
        if executed:
            if key is not None:
                self.idempotency[key] = StoredAnswer(
                    request_print, response.status_code, bytes(response.body), dict(response.headers.items())
                )
            await self.after_commit()
        return response

    def _refund(self, psp: str, raw: bytes, key: str | None) -> tuple[Response, bool]:
        echo = {"Idempotency-Key": key} if key is not None else None
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(400, "702", "Unexpected input: expected a JSON object", "validation"), False
        unknown = sorted(set(body) - _REQUEST_FIELDS)
        if unknown:
            return self._error(
                422,
                "000",
                f"Structure of PaymentRefundRequest contains the following unknown fields: {unknown}",
                "validation",
            ), False
        if body.get("merchantAccount") != self.merchant_account:
            return self._error(403, "901", "Invalid Merchant Account", "security"), False
        amount = body.get("amount")
        if not isinstance(amount, dict) or "value" not in amount:
            return self._error(422, "100", "No amount specified", "validation", headers=echo), True
        if not isinstance(amount["value"], int) or amount["value"] <= 0:
            return self._error(422, "137", "Invalid amount specified", "validation", headers=echo), True
        reason = body.get("merchantRefundReason")
        if reason is not None and reason not in REASONS:
            return self._error(422, "000", f"Invalid merchantRefundReason: {reason}", "validation", headers=echo), True
        outcome, why = "succeeded", None
        seed = self.payments.get(psp)
        if seed is None:
            outcome, why = "failed", "Original pspReference is invalid for this environment!"
        elif amount.get("currency") != seed.currency:
            outcome, why = "failed", "Modification in different currency than authorisation"
        elif amount["value"] > seed.amount_minor - self._refunded(psp):
            outcome, why = "failed", "Insufficient balance on payment"
        elif seed.refund_outcome == "failed":
            outcome, why = "failed", "Refused"
        refund = _Refund(
            psp_reference=random_id("", 16, _PSP_ALPHABET),
            payment_psp_reference=psp,
            amount=amount["value"],
            currency=str(amount.get("currency")),
            reference=body.get("reference"),
            reason=reason,
            status="received",
            outcome=outcome,
            outcome_reason=why,
        )
        self.refunds[refund.psp_reference] = refund
        answer: dict[str, Any] = {
            "merchantAccount": self.merchant_account,
            "paymentPspReference": psp,
            "pspReference": refund.psp_reference,
            "status": "received",
            "amount": {"currency": refund.currency, "value": refund.amount},
        }
        if refund.reference is not None:
            answer["reference"] = refund.reference
        if reason is not None:
            answer["merchantRefundReason"] = reason
        return self._respond(answer, 201, echo), True
