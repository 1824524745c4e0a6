"""A stateful fake of Stripe's refund API, faithful to the wire.

Endpoints: POST /v1/refunds, GET /v1/refunds (list: `created[gte]`, `charge`, `payment_intent`,
`limit`, `starting_after`; newest first), GET /v1/refunds/{id}, POST /v1/refunds/{id}/cancel,
GET /v1/charges/{id}, GET /v1/payment_intents/{id} (`expand[]=latest_charge`).
`dashboard_refund()` makes a refund the way the Stripe Dashboard would (no refund-mcp metadata).
Form-encoded bodies, `Authorization: Bearer`, a `Request-Id` on every answer, error bodies
`{"error": {type, code, message, param, doc_url}}`. Objects carry the same keys as Stripe's own
fixtures (`stripe/openapi` fixtures3.json; checked by tests/processors/test_contracts.py).

Idempotency (docs.stripe.com/api/idempotent_requests): the first result of a POST is stored with
its status code and replayed byte for byte with `Idempotent-Replayed: true`; the same key with
other parameters (or another endpoint) is refused with 400 `idempotency_error`. Requests that fail
before executing (auth, injected 429/5xx, parameter validation) are not stored. Keys are pruned once
they are 24 hours old by `fake.clock` (Stripe: "eligible to be removed after at least 24 hours";
the fake removes them exactly then, so a test can cross the line without sleeping).

Stripe also saves a 5xx answer under the key and replays it. Two Stripe-only faults do that:
`next_500_stored` (nothing executes; the 500 is stored and replayed to every retry with the key)
and `next_500_after_commit` (the refund is made, then a 500 is stored and replayed instead of it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tests.fakes.common import (
    Clock,
    FakeProcessor,
    Faults,
    PaymentSeed,
    StoredAnswer,
    fingerprint,
    random_id,
    real_time,
)

DEFAULT_API_KEY = "sk_test_fake_refund_mcp_0000"
REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# Refund statuses whose amount counts against the charge (Stripe's amount_refunded includes pending ones).
_HOLDS = ("pending", "requires_action", "succeeded")
KEY_RETENTION = timedelta(hours=24)


@dataclass
class StripeFaults(Faults):
    next_500_stored: int = 0
    next_500_after_commit: int = 0


@dataclass
class _Payment:
    charge_id: str
    intent_id: str | None
    seed: PaymentSeed
    refund_ids: list[str] = field(default_factory=list)


@dataclass
class _Refund:
    id: str
    charge_id: str
    intent_id: str | None
    amount: int
    currency: str
    status: str
    reason: str | None
    metadata: dict[str, str]
    created: int
    failure_reason: str | None = None


class StripeFake(FakeProcessor):
    name = "stripe"

    faults: StripeFaults

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, clock: Clock = real_time) -> None:
        self.api_key = api_key
        self.payments: dict[str, _Payment] = {}  # by charge id and by intent id
        self.refunds: dict[str, _Refund] = {}
        self.idempotency: dict[str, StoredAnswer] = {}
        super().__init__(faults=StripeFaults(), clock=clock)

    # ------------------------------------------------------------------ wire helpers

    def _respond(self, body: dict[str, Any], status_code: int = 200) -> Response:
        return Response(
            json.dumps(body, indent=2).encode(),  # Stripe pretty-prints its JSON
            status_code=status_code,
            media_type="application/json",
            headers={"Request-Id": random_id("req_", 14), "Stripe-Version": "2026-06-24.dahlia"},
        )

    def _error(
        self,
        status_code: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> Response:
        error: dict[str, Any] = {"message": message, "type": type_}
        if code is not None:
            error["code"] = code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            error["param"] = param
        return self._respond({"error": error}, status_code)

    def server_error(self, status_code: int) -> Response:
        return self._error(status_code, "An unknown error occurred", type_="api_error")

    def rate_limited(self) -> Response:
        response = self._error(
            429,
            "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )
        response.headers["Retry-After"] = self.faults.retry_after
        return response

    def _unauthorized(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if not header:
            return self._error(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        key = header.removeprefix("Bearer ").strip()
        if key != self.api_key:
            # Stripe echoes a masked form of the key it got; the adapter must never repeat this body.
            return self._error(401, f"Invalid API Key provided: {key[:8]}****{key[-4:]}")
        return None

    # ------------------------------------------------------------------ objects

    def _charge_refunded(self, payment: _Payment) -> int:
        held = sum(self.refunds[r].amount for r in payment.refund_ids if self.refunds[r].status in _HOLDS)
        return payment.seed.refunded_minor + held

    def _charge_status(self, payment: _Payment) -> str:
        status = payment.seed.status or "succeeded"
        return "succeeded" if status in ("requires_capture", "uncaptured") else status

    def _captured(self, payment: _Payment) -> bool:
        return (payment.seed.status or "succeeded") == "succeeded"

    def refund_object(self, refund: _Refund) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": refund.id,
            "object": "refund",
            "amount": refund.amount,
            "balance_transaction": "txn_" + refund.id[3:] if refund.status == "succeeded" else None,
            "charge": refund.charge_id,
            "created": refund.created,
            "currency": refund.currency.lower(),
            "customer": None,
            "customer_account": None,
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "metadata": refund.metadata,
            "payment_intent": refund.intent_id,
            "payment_method": None,
            "reason": refund.reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": refund.status,
            "transfer_reversal": None,
        }
        if refund.status == "failed":
            obj["failure_reason"] = refund.failure_reason or "unknown"
            obj["failure_balance_transaction"] = None
        if refund.status == "requires_action":
            obj["next_action"] = {
                "type": "display_details",
                "display_details": {
                    "email_sent": {"email_sent_at": refund.created, "email_sent_to": "jenny@example.com"},
                    "expires_at": refund.created + 7 * 86400,
                },
            }
        return obj

    def charge_object(self, payment: _Payment) -> dict[str, Any]:
        seed = payment.seed
        captured = self._captured(payment)
        refunded = self._charge_refunded(payment)
        return {
            "id": payment.charge_id,
            "object": "charge",
            "amount": seed.amount_minor,
            "amount_captured": seed.amount_minor if captured else 0,
            "amount_refunded": refunded,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": "txn_" + payment.charge_id[3:] if captured else None,
            "billing_details": {
                "address": {
                    "city": None,
                    "country": None,
                    "line1": None,
                    "line2": None,
                    "postal_code": None,
                    "state": None,
                },
                "email": seed.customer_email,
                "name": "Jenny Rosen",
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": "REFUND-MCP FAKE",
            "captured": captured,
            "created": int(seed.created.timestamp()),
            "currency": seed.currency.lower(),
            "customer": seed.customer_id,
            "description": seed.description,
            "disputed": seed.disputed,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            "metadata": {},
            "on_behalf_of": None,
            "outcome": {
                "advice_code": None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "approved_by_network",
                "reason": None,
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": self._charge_status(payment) == "succeeded",
            "payment_intent": payment.intent_id,
            "payment_method": "pm_" + payment.charge_id[3:],
            "payment_method_details": {
                "card": {
                    "amount_authorized": seed.amount_minor,
                    "brand": "visa",
                    "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
                    "country": "US",
                    "exp_month": 8,
                    "exp_year": 2030,
                    "extended_authorization": {"status": "disabled"},
                    "fingerprint": "FakeFingerprint0",
                    "funding": "credit",
                    "incremental_authorization": {"status": "unavailable"},
                    "installments": None,
                    "last4": "4242",
                    "mandate": None,
                    "multicapture": {"status": "unavailable"},
                    "network": "visa",
                    "network_token": {"used": False},
                    "overcapture": {"maximum_amount_capturable": seed.amount_minor, "status": "unavailable"},
                    "three_d_secure": None,
                    "wallet": None,
                    "authorization_code": "123456",
                    "regulated_status": "unregulated",
                    "network_transaction_id": "1234567890",
                    "transaction_link_id": None,
                },
                "type": "card",
            },
            "receipt_email": seed.customer_email,
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/fake/{payment.charge_id}",
            "refunded": refunded >= seed.amount_minor,
            "refunds": {
                "object": "list",
                "data": [self.refund_object(self.refunds[r]) for r in payment.refund_ids],
                "has_more": False,
                "url": f"/v1/charges/{payment.charge_id}/refunds",
            },
            "review": None,
            "shipping": None,
            "source": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": self._charge_status(payment),
            "transfer_data": None,
            "transfer_group": None,
        }

    def payment_intent_object(self, payment: _Payment, *, expand_charge: bool) -> dict[str, Any]:
        seed = payment.seed
        assert payment.intent_id is not None
        status = seed.status or "succeeded"
        captured = self._captured(payment)
        return {
            "id": payment.intent_id,
            "object": "payment_intent",
            "amount": seed.amount_minor,
            "amount_capturable": seed.amount_minor if status == "requires_capture" else 0,
            "amount_details": {"tip": {}},
            "amount_received": seed.amount_minor if captured else 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": {"enabled": True},
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic" if captured else "manual",
            "client_secret": f"{payment.intent_id}_secret_fake",
            "confirmation_method": "automatic",
            "created": int(seed.created.timestamp()),
            "currency": seed.currency.lower(),
            "customer": seed.customer_id,
            "customer_account": None,
            "description": seed.description,
            "excluded_payment_method_types": None,
            "last_payment_error": None,
            "latest_charge": self.charge_object(payment) if expand_charge else payment.charge_id,
            "livemode": False,
            "managed_payments": {"enabled": False},
            "metadata": {},
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": "pm_" + payment.charge_id[3:],
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": seed.customer_email,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": status,
            "transfer_data": None,
            "transfer_group": None,
        }

    # ------------------------------------------------------------------ control

    def add_payment(self, seed: PaymentSeed) -> dict[str, Any]:
        if seed.kind == "payment_intent" or (seed.id or "").startswith("pi_"):
            intent_id = seed.id or random_id("pi_")
            charge_id = random_id("ch_")
        else:
            intent_id = None
            charge_id = seed.id or random_id("ch_")
        payment = _Payment(charge_id=charge_id, intent_id=intent_id, seed=seed)
        self.payments[charge_id] = payment
        if intent_id:
            self.payments[intent_id] = payment
        return {"id": intent_id or charge_id, "charge": charge_id, "payment_intent": intent_id}

    def state(self) -> dict[str, Any]:
        unique = {id(p): p for p in self.payments.values()}.values()
        return {
            "refund_count": len(self.refunds),
            "refunds": [self.refund_object(r) for r in self.refunds.values()],
            "payments": [self.charge_object(p) for p in unique],
        }

    def set_refund_status(
        self, refund_id: str, status: str, failure_reason: str | None = None
    ) -> dict[str, Any] | None:
        refund = self.refunds.get(refund_id)
        if refund is None:
            return None
        refund.status = status
        refund.failure_reason = failure_reason
        return self.refund_object(refund)

    def dashboard_refund(self, payment_id: str, amount: int | None = None, *, status: str | None = None) -> dict[str, Any]:
        """A refund made in the Stripe Dashboard: outside refund-mcp, with no refund_mcp metadata."""
        payment = self.payments[payment_id]
        form = {"charge": payment.charge_id, "reason": "requested_by_customer"}
        if amount is not None:
            form["amount"] = str(amount)
        response, _ = self._refund(form)
        if response.status_code != 200:
            raise ValueError(json.loads(bytes(response.body))["error"]["message"])
        refund = self.refunds[payment.refund_ids[-1]]
        if status is not None:
            refund.status = status
        return self.refund_object(refund)

    # ------------------------------------------------------------------ API

    def api_routes(self) -> list[BaseRoute]:
        return [
            self.route("/v1/refunds", self._create_refund, ["POST"]),
            self.route("/v1/refunds", self._list_refunds, ["GET"]),
            self.route("/v1/refunds/{refund_id}", self._get_refund, ["GET"]),
            self.route("/v1/refunds/{refund_id}/cancel", self._cancel_refund, ["POST"]),
            self.route("/v1/charges/{charge_id}", self._get_charge, ["GET"]),
            self.route("/v1/payment_intents/{intent_id}", self._get_intent, ["GET"]),
        ]

    async def _idempotent(self, request: Request, params: list[tuple[str, str]], execute: Any) -> Response:
        """Run `execute` once per Idempotency-Key; replay or refuse it afterwards."""
        key = request.headers.get("idempotency-key")
        request_print = fingerprint(request.url.path, sorted(params))
        self._prune_keys()
        if key is not None and (stored := self.idempotency.get(key)) is not None:
            if stored.fingerprint != request_print:
                return self._error(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                    type_="idempotency_error",
                )
            return stored.replay(
                **{"Idempotent-Replayed": "true", "Original-Request": stored.headers.get("request-id", "")}
            )
        if self.faults.next_500_stored > 0:
            self.faults.next_500_stored -= 1
            response, executed = self.server_error(500), True
        else:
            response, executed = await execute()
            if executed and self.faults.next_500_after_commit > 0:
                self.faults.next_500_after_commit -= 1
                response = self.server_error(500)
        if executed:
            if key is not None:
                self.idempotency[key] = StoredAnswer(
                    request_print,
                    response.status_code,
                    bytes(response.body),
                    dict(response.headers.items()),
                    stored_at=self.clock(),
                )
            await self.after_commit()
        return response

    def _prune_keys(self) -> None:
        """Forget every key stored 24 hours ago or earlier, as Stripe may."""
        cutoff = self.clock() - KEY_RETENTION
        for key in [k for k, stored in self.idempotency.items() if stored.stored_at and stored.stored_at <= cutoff]:
            del self.idempotency[key]

    async def _create_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        params = parse_qsl((await request.body()).decode(), keep_blank_values=True)

        async def execute() -> tuple[Response, bool]:
            return self._refund(dict(params))

        return await self._idempotent(request, params, execute)

    def _refund(self, form: dict[str, str]) -> tuple[Response, bool]:
        """Returns the answer and whether Stripe would store it (execution began)."""
        charge_id, intent_id = form.get("charge"), form.get("payment_intent")
        if bool(charge_id) == bool(intent_id):
            return self._error(
                400, "You must pass either `charge` or `payment_intent`.", code="parameter_missing"
            ), False
        reason = form.get("reason")
        if reason is not None and reason not in REASONS:
            return self._error(
                400,
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                code="parameter_invalid_string",
                param="reason",
            ), False
        amount_text = form.get("amount")
        if amount_text is not None and not amount_text.lstrip("-").isdigit():
            return self._error(
                400, f"Invalid integer: {amount_text}", code="parameter_invalid_integer", param="amount"
            ), False
        lookup_id = charge_id or intent_id
        payment = self.payments.get(lookup_id or "")
        if (
            payment is None
            or (charge_id and payment.charge_id != charge_id)
            or (intent_id and payment.intent_id != intent_id)
        ):
            what = "charge" if charge_id else "payment_intent"
            return self._error(404, f"No such {what}: '{lookup_id}'", code="resource_missing", param=what), False
        if amount_text is not None and int(amount_text) < 1:
            return self._error(
                400, "This value must be greater than or equal to 1.", code="parameter_invalid_integer", param="amount"
            ), False
        if not self._captured(payment):
            return self._error(
                400,
                f"Charge {payment.charge_id} has not been captured; it cannot be refunded.",
                code="charge_not_refundable",
            ), True
        if payment.seed.disputed:
            return self._error(
                400, f"Charge {payment.charge_id} has been charged back; cannot issue a refund.", code="charge_disputed"
            ), True
        remaining = payment.seed.amount_minor - self._charge_refunded(payment)
        if remaining <= 0:
            return self._error(
                400, f"Charge {payment.charge_id} has already been refunded.", code="charge_already_refunded"
            ), True
        amount = int(amount_text) if amount_text is not None else remaining
        if amount > remaining:
            return self._error(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                code="amount_too_large",
                param="amount",
            ), True
        metadata = {
            k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[") and k.endswith("]")
        }
        refund = _Refund(
            id=random_id("re_"),
            charge_id=payment.charge_id,
            intent_id=payment.intent_id,
            amount=amount,
            currency=payment.seed.currency,
            status=payment.seed.refund_outcome or "succeeded",
            reason=reason,
            metadata=metadata,
            created=int(payment.seed.created.timestamp()) + 60 * (len(self.refunds) + 1),
        )
        self.refunds[refund.id] = refund
        payment.refund_ids.append(refund.id)
        return self._respond(self.refund_object(refund)), True

    async def _list_refunds(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        query = request.query_params
        limit_text = query.get("limit", "10")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            return self._error(400, "This value must be between 1 and 100.", code="parameter_invalid_integer", param="limit")
        gte_text = query.get("created[gte]")
        if gte_text is not None and not gte_text.isdigit():
            return self._error(400, f"Invalid integer: {gte_text}", code="parameter_invalid_integer", param="created[gte]")
        listed = sorted(self.refunds.values(), key=lambda r: (r.created, r.id), reverse=True)
        if gte_text is not None:
            listed = [r for r in listed if r.created >= int(gte_text)]
        if (charge := query.get("charge")) is not None:
            if charge not in self.payments or self.payments[charge].charge_id != charge:
                return self._error(404, f"No such charge: '{charge}'", code="resource_missing", param="charge")
            listed = [r for r in listed if r.charge_id == charge]
        if (intent := query.get("payment_intent")) is not None:
            if intent not in self.payments or self.payments[intent].intent_id != intent:
                return self._error(
                    404, f"No such payment_intent: '{intent}'", code="resource_missing", param="payment_intent"
                )
            listed = [r for r in listed if r.intent_id == intent]
        if (after := query.get("starting_after")) is not None:
            ids = [r.id for r in listed]
            if after not in ids:
                return self._error(400, f"No such refund: '{after}'", code="resource_missing", param="starting_after")
            listed = listed[ids.index(after) + 1 :]
        limit = int(limit_text)
        return self._respond(
            {
                "object": "list",
                "data": [self.refund_object(r) for r in listed[:limit]],
                "has_more": len(listed) > limit,
                "url": "/v1/refunds",
            }
        )

    async def _get_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        refund = self.refunds.get(request.path_params["refund_id"])
        if refund is None:
            return self._error(
                404, f"No such refund: '{request.path_params['refund_id']}'", code="resource_missing", param="id"
            )
        return self._respond(self.refund_object(refund))

    async def _cancel_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        refund_id = request.path_params["refund_id"]

        async def execute() -> tuple[Response, bool]:
            refund = self.refunds.get(refund_id)
            if refund is None:
                return self._error(
                    404, f"No such refund: '{refund_id}'", code="resource_missing", param="refund"
                ), False
            if refund.status != "requires_action":
                return self._error(
                    400,
                    f"Refund {refund_id} cannot be canceled because it has a status of {refund.status}. "
                    "Only refunds with a status of requires_action can be canceled.",
                ), True
            refund.status = "canceled"
            return self._respond(self.refund_object(refund)), True

        return await self._idempotent(request, [], execute)

    async def _get_charge(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        charge_id = request.path_params["charge_id"]
        payment = self.payments.get(charge_id)
        if payment is None or payment.charge_id != charge_id:
            return self._error(404, f"No such charge: '{charge_id}'", code="resource_missing", param="id")
        return self._respond(self.charge_object(payment))

    async def _get_intent(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        intent_id = request.path_params["intent_id"]
        payment = self.payments.get(intent_id)
        if payment is None or payment.intent_id != intent_id:
            return self._error(404, f"No such payment_intent: '{intent_id}'", code="resource_missing", param="intent")
        expand = request.query_params.getlist("expand[]")
        return self._respond(self.payment_intent_object(payment, expand_charge="latest_charge" in expand))
