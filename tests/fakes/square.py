"""A stateful fake of Square's Refunds and Payments APIs.

Endpoints: POST /v2/refunds (RefundPayment), GET /v2/refunds (ListPaymentRefunds: `begin_time`,
`end_time`, `sort_order`, `status`, `limit`, `cursor`), GET /v2/refunds/{id}, GET /v2/payments/{id};
`Authorization: Bearer`, `Square-Version`, JSON. Answers `{"refund": …}` / `{"payment": …}`;
errors `{"errors": [{category, code, detail, field}]}` with codes from Square's ErrorCode enum
(square/connect-api-specification api.json, RefundPayment's x-endpoint-errors).

Idempotency (developer.squareup.com/docs/working-with-apis/idempotency): the body's
`idempotency_key`; the same key with the same body replays the first answer byte for byte, the
same key with a different body is refused with 400 IDEMPOTENCY_KEY_REUSED. Square does not publish
how long it keeps keys; `forget_idempotency_keys()` plays the day it forgets them.

A payment's refunds: `GET /v2/payments/{id}` lists their ids in `refund_ids` (every refund of the
payment, whatever its status; omitted while there is none), each read with `GET /v2/refunds/{id}`.

Refunds start PENDING (Square completes card refunds asynchronously) unless the payment was
seeded with another `refund_outcome`. Square's exact code for a refund in a currency other than
the payment's is not documented; the fake answers UNSUPPORTED_CURRENCY ("The API request
references an unsupported currency"), the closest documented one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tests.fakes.common import FakeProcessor, PaymentSeed, StoredAnswer, fingerprint, iso_z, random_id

DEFAULT_ACCESS_TOKEN = "EAAAfake_square_access_token_0000"
IDEMPOTENCY_KEY_MAX = 45
# Refund statuses that count against the payment's refundable amount.
_HOLDS = ("PENDING", "COMPLETED")
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class _Payment:
    id: str
    seed: PaymentSeed
    refund_ids: list[str] = field(default_factory=list)


@dataclass
class _Refund:
    id: str
    payment_id: str
    amount: int
    currency: str
    status: str
    reason: str | None
    created: datetime
    updated: datetime


class SquareFake(FakeProcessor):
    name = "square"

    def __init__(self, *, access_token: str = DEFAULT_ACCESS_TOKEN) -> None:
        self.access_token = access_token
        self.payments: dict[str, _Payment] = {}
        self.refunds: dict[str, _Refund] = {}
        self.idempotency: dict[str, StoredAnswer] = {}
        self.square_versions: list[str | None] = []  # the Square-Version of every API request
        self.list_page_size = 100  # ListPaymentRefunds' default page size; tests lower it to see pagination
        super().__init__()

    # ------------------------------------------------------------------ wire helpers

    def _respond(self, body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(
            json.dumps(body).encode(), status_code=status_code, media_type="application/json", headers=headers
        )

    def _error(
        self,
        status_code: int,
        category: str,
        code: str,
        detail: str,
        field_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        error = {"category": category, "code": code, "detail": detail}
        if field_ is not None:
            error["field"] = field_
        return self._respond({"errors": [error]}, status_code, headers)

    def server_error(self, status_code: int) -> Response:
        if status_code == 503:
            return self._error(503, "API_ERROR", "SERVICE_UNAVAILABLE", "Service Unavailable")
        return self._error(500, "API_ERROR", "INTERNAL_SERVER_ERROR", "An internal error has occurred")

    def rate_limited(self) -> Response:
        return self._error(
            429, "RATE_LIMIT_ERROR", "RATE_LIMITED", "Rate limited", headers={"Retry-After": self.faults.retry_after}
        )

    def _unauthorized(self, request: Request) -> Response | None:
        self.square_versions.append(request.headers.get("square-version"))
        if request.headers.get("authorization", "") != f"Bearer {self.access_token}":
            return self._error(401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", "This request could not be authorized.")
        return None

    # ------------------------------------------------------------------ objects

    def _held(self, payment: _Payment, statuses: tuple[str, ...]) -> int:
        return payment.seed.refunded_minor + sum(
            self.refunds[r].amount for r in payment.refund_ids if self.refunds[r].status in statuses
        )

    def refund_object(self, refund: _Refund) -> dict[str, Any]:
        return {
            "id": refund.id,
            "status": refund.status,
            "location_id": "LFAKELOCATION01",
            "unlinked": False,
            "destination_type": "CARD",
            "amount_money": {"amount": refund.amount, "currency": refund.currency},
            "payment_id": refund.payment_id,
            "order_id": "ORDERFAKE" + refund.payment_id[:12],
            "reason": refund.reason,
            "created_at": iso_z(refund.created, millis=True),
            "updated_at": iso_z(refund.updated, millis=True),
        }

    def payment_object(self, payment: _Payment) -> dict[str, Any]:
        seed = payment.seed
        money = {"amount": seed.amount_minor, "currency": seed.currency}
        obj: dict[str, Any] = {
            "id": payment.id,
            "created_at": iso_z(seed.created, millis=True),
            "updated_at": iso_z(seed.created, millis=True),
            "amount_money": money,
            "total_money": money,
            "approved_money": money,
            "status": seed.status or "COMPLETED",
            "source_type": "CARD",
            "location_id": "LFAKELOCATION01",
            "order_id": "ORDERFAKE" + payment.id[:12],
            "receipt_number": payment.id[:4],
            "receipt_url": f"https://squareup.com/receipt/preview/{payment.id}",
            "version_token": random_id("", 43, _ALNUM),
        }
        refunded = self._held(payment, ("COMPLETED",))  # "refunded to date": completed refunds
        if refunded:
            obj["refunded_money"] = {"amount": refunded, "currency": seed.currency}
        if payment.refund_ids:
            obj["refund_ids"] = list(payment.refund_ids)
        if seed.customer_email:
            obj["buyer_email_address"] = seed.customer_email
        if seed.customer_id:
            obj["customer_id"] = seed.customer_id
        if seed.description:
            obj["note"] = seed.description
        return obj

    # ------------------------------------------------------------------ control

    def add_payment(self, seed: PaymentSeed) -> dict[str, Any]:
        payment_id = seed.id or random_id("", 29, _ALNUM)
        self.payments[payment_id] = _Payment(payment_id, seed)
        return {"id": payment_id}

    def state(self) -> dict[str, Any]:
        return {
            "refund_count": len(self.refunds),
            "refunds": [self.refund_object(r) for r in self.refunds.values()],
            "payments": [self.payment_object(p) for p in self.payments.values()],
            "square_versions": self.square_versions,
        }

    def set_refund_status(
        self, refund_id: str, status: str, failure_reason: str | None = None
    ) -> dict[str, Any] | None:
        refund = self.refunds.get(refund_id)
        if refund is None:
            return None
        refund.status = status.upper()
        refund.updated = datetime.now(UTC)
        return self.refund_object(refund)

    def forget_idempotency_keys(self) -> int:
        """Square forgets every key it holds (when is unpublished); returns how many."""
        forgotten = len(self.idempotency)
        self.idempotency.clear()
        return forgotten

    def dashboard_refund(self, payment_id: str, amount: int, *, status: str = "COMPLETED") -> dict[str, Any]:
        """A refund made in the Square Dashboard or at a register: outside refund-mcp."""
        payment = self.payments[payment_id]
        now = datetime.now(UTC)
        refund = _Refund(
            id=f"{payment.id}_{random_id('', 40, _ALNUM)}",
            payment_id=payment.id,
            amount=amount,
            currency=payment.seed.currency,
            status=status,
            reason="Refunded in the Square Dashboard",
            created=now,
            updated=now,
        )
        self.refunds[refund.id] = refund
        payment.refund_ids.append(refund.id)
        return self.refund_object(refund)

    # ------------------------------------------------------------------ API

    def api_routes(self) -> list[BaseRoute]:
        return [
            self.route("/v2/refunds", self._create_refund, ["POST"]),
            self.route("/v2/refunds", self._list_refunds, ["GET"]),
            self.route("/v2/refunds/{refund_id}", self._get_refund, ["GET"]),
            self.route("/v2/payments/{payment_id}", self._get_payment, ["GET"]),
        ]

    async def _create_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(
                400, "INVALID_REQUEST_ERROR", "EXPECTED_JSON_BODY", "The request body is not a JSON object."
            )
        if not isinstance(body, dict):
            return self._error(
                400, "INVALID_REQUEST_ERROR", "EXPECTED_JSON_BODY", "The request body is not a JSON object."
            )
        key = body.get("idempotency_key")
        if not key:
            return self._error(
                400, "INVALID_REQUEST_ERROR", "MISSING_REQUIRED_PARAMETER", "Field must be set", "idempotency_key"
            )
        if len(key) > IDEMPOTENCY_KEY_MAX:
            return self._error(
                400,
                "INVALID_REQUEST_ERROR",
                "VALUE_TOO_LONG",
                f"Field must not be greater than {IDEMPOTENCY_KEY_MAX} length",
                "idempotency_key",
            )
        request_print = fingerprint(body)
        if (stored := self.idempotency.get(key)) is not None:
            if stored.fingerprint != request_print:
                return self._error(
                    400,
                    "INVALID_REQUEST_ERROR",
                    "IDEMPOTENCY_KEY_REUSED",
                    "The idempotency key can only be retried with the same request data.",
                    "idempotency_key",
                )
            return stored.replay()
        response, executed = self._refund(body)
        if executed:
            self.idempotency[key] = StoredAnswer(
                request_print, response.status_code, bytes(response.body), dict(response.headers.items())
            )
            await self.after_commit()
        return response

    def _refund(self, body: dict[str, Any]) -> tuple[Response, bool]:
        money = body.get("amount_money")
        if not isinstance(money, dict) or not isinstance(money.get("amount"), int):
            return self._error(
                400, "INVALID_REQUEST_ERROR", "MISSING_REQUIRED_PARAMETER", "Field must be set", "amount_money.amount"
            ), False
        payment = self.payments.get(str(body.get("payment_id")))
        if payment is None:
            return self._error(
                404, "INVALID_REQUEST_ERROR", "NOT_FOUND", f"Could not find payment with id: {body.get('payment_id')}"
            ), False
        seed = payment.seed
        status = seed.status or "COMPLETED"
        if money.get("currency") != seed.currency:
            return self._error(
                400,
                "INVALID_REQUEST_ERROR",
                "UNSUPPORTED_CURRENCY",
                f"The currency {money.get('currency')} does not match the payment currency {seed.currency}.",
                "amount_money.currency",
            ), True
        if seed.disputed:
            return self._error(
                400,
                "REFUND_ERROR",
                "PAYMENT_NOT_REFUNDABLE_DUE_TO_DISPUTE",
                "The payment is not refundable because it has been disputed.",
            ), True
        if status == "APPROVED":
            return self._error(
                400,
                "REFUND_ERROR",
                "REFUND_ERROR_PAYMENT_NEEDS_COMPLETION",
                "The payment is approved and needs to be completed before it can be refunded.",
            ), True
        if status != "COMPLETED":
            return self._error(
                400, "REFUND_ERROR", "PAYMENT_NOT_REFUNDABLE", f"A {status} payment cannot be refunded."
            ), True
        if money["amount"] <= 0:
            return self._error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_VALUE",
                "Amount must be greater than zero.",
                "amount_money.amount",
            ), True
        if money["amount"] > seed.amount_minor - self._held(payment, _HOLDS):
            return self._error(
                400,
                "REFUND_ERROR",
                "REFUND_AMOUNT_INVALID",
                "The requested refund amount exceeds the amount available to refund.",
                "amount_money.amount",
            ), True
        now = datetime.now(UTC)
        refund = _Refund(
            id=f"{payment.id}_{random_id('', 40, _ALNUM)}",
            payment_id=payment.id,
            amount=money["amount"],
            currency=seed.currency,
            status=seed.refund_outcome or "PENDING",
            reason=body.get("reason"),
            created=now,
            updated=now,
        )
        self.refunds[refund.id] = refund
        payment.refund_ids.append(refund.id)
        return self._respond({"refund": self.refund_object(refund)}), True

    async def _list_refunds(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        query = request.query_params
        now = datetime.now(UTC)
        try:
            begin = datetime.fromisoformat(query["begin_time"]) if "begin_time" in query else now - timedelta(days=365)
            end = datetime.fromisoformat(query["end_time"]) if "end_time" in query else now
        except ValueError:
            return self._error(400, "INVALID_REQUEST_ERROR", "INVALID_TIME", "Invalid time format.", "begin_time")
        if begin.tzinfo is None or end.tzinfo is None:
            return self._error(400, "INVALID_REQUEST_ERROR", "INVALID_TIME", "Time must carry an offset.", "begin_time")
        order = query.get("sort_order", "DESC")
        if order not in ("ASC", "DESC"):
            return self._error(400, "INVALID_REQUEST_ERROR", "INVALID_ENUM_VALUE", f"Invalid sort_order {order}.", "sort_order")
        limit_text = query.get("limit", str(self.list_page_size))
        if not limit_text.isdigit() or int(limit_text) < 1:
            return self._error(400, "INVALID_REQUEST_ERROR", "INVALID_VALUE", "limit must be positive.", "limit")
        limit = min(int(limit_text), 100)
        offset = 0
        if "cursor" in query:
            try:
                offset = int(base64.urlsafe_b64decode(query["cursor"].encode()).decode().removeprefix("offset:"))
            except ValueError:
                return self._error(400, "INVALID_REQUEST_ERROR", "INVALID_CURSOR", "The pagination cursor is invalid.", "cursor")
        listed = [
            r
            for r in self.refunds.values()
            if begin <= r.created <= end and query.get("status", r.status) == r.status
        ]
        listed.sort(key=lambda r: (r.created, r.id), reverse=order == "DESC")
        page = listed[offset : offset + limit]
        body: dict[str, Any] = {}
        if page:
            body["refunds"] = [self.refund_object(r) for r in page]
        if offset + limit < len(listed):
            body["cursor"] = base64.urlsafe_b64encode(f"offset:{offset + limit}".encode()).decode()
        return self._respond(body)

    async def _get_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        refund = self.refunds.get(request.path_params["refund_id"])
        if refund is None:
            return self._error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                f"Could not find payment refund with id: {request.path_params['refund_id']}",
            )
        return self._respond({"refund": self.refund_object(refund)})

    async def _get_payment(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        payment = self.payments.get(request.path_params["payment_id"])
        if payment is None:
            return self._error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                f"Could not find payment with id: {request.path_params['payment_id']}",
            )
        return self._respond({"payment": self.payment_object(payment)})
