"""A stateful fake of PayPal's Payments v2 refund API and its OAuth2 token endpoint.

Endpoints: POST /v1/oauth2/token (Basic client_id:secret, `grant_type=client_credentials`),
POST /v2/payments/captures/{id}/refund, GET /v2/payments/refunds/{id},
GET /v2/payments/captures/{id}. JSON bodies, amounts as decimal strings, `Paypal-Debug-Id` on every
answer, errors `{name, message, debug_id, details: [{issue, description}], links}` with the issue
names and fixed descriptions of the spec (paypal-rest-api-specifications, payments_payment_v2.json).

Tokens: each fetch is counted (`token_fetches`), returns `expires_in = token_ttl` and is refused
(401) once that many seconds have passed; `expire_tokens()` (or POST /_fake/tokens/expire)
invalidates every issued token at once, which is how a test makes the next API call answer 401
without waiting.

Webhook verification: POST /v1/notifications/verify-webhook-signature (Bearer token) answers
`{"verification_status": "SUCCESS"|"FAILURE"}` by the offline algorithm PayPal documents: the
SHA256withRSA signature `transmission_sig` (base64) over
`transmission_id|transmission_time|webhook_id|crc32(event)`, checked with the public key of the
certificate at `cert_url`. Certificates are "downloaded" from `webhook_certs` (a test registers
its key with `add_webhook_cert`); an unknown URL, another algorithm or any mismatch is FAILURE.
The CRC32 is taken over `webhook_event` exactly as it appears in the request, so a caller that
re-serializes the delivered event gets FAILURE, as with PayPal. Every request is kept in
`verify_requests`.

Idempotency (developer.paypal.com/reference/guidelines/idempotency): a repeated `PayPal-Request-Id`
returns the original refund, whatever the new body says, in its *current* state ("PayPal provides
the status of a request at the current time"), so a replay is byte-identical only while the refund
has not changed. Injected faults never hit the token endpoint: they target the API calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from babel.numbers import get_currency_precision
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tests.fakes.common import FakeProcessor, PaymentSeed, iso_z, random_id

DEFAULT_CLIENT_ID = "fake-paypal-client-id"
DEFAULT_CLIENT_SECRET = "fake-paypal-client-secret"
_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
# Refund statuses that count against the capture.
_HOLDS = ("COMPLETED", "PENDING")

VERIFY_FIELDS = ("auth_algo", "cert_url", "transmission_id", "transmission_sig", "transmission_time", "webhook_id")
# DER prefix of DigestInfo for SHA-256 (RFC 8017 §9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")

# Fixed descriptions from schema `captures.refund-422` / `404` / `409`.
_DESCRIPTIONS = {
    "CAPTURE_FULLY_REFUNDED": "The capture has already been fully refunded",
    "REFUND_CAPTURE_CURRENCY_MISMATCH": "Refund must be in the same currency as the capture",
    "REFUND_NOT_ALLOWED": "Capture cannot be refunded.",
    "REFUND_AMOUNT_EXCEEDED": "The refund amount must be less than or equal to the capture amount that has not yet been refunded.",
    "REFUND_NOT_PERMITTED_DUE_TO_CHARGEBACK": "Refunds are not allowed on this capture due to a chargeback on the card or bank. Please contact the payee to resolve the chargeback.",
    "PENDING_CAPTURE": "Cannot initiate a refund as the capture is pending. Capture is typically pending when the payer has funded the transaction using e-check/bank funded.",
    "DECIMAL_PRECISION": "If the currency supports decimals, only two decimal place precision is supported.",
    "CANNOT_BE_ZERO_OR_NEGATIVE": "Must be greater than zero. If the currency supports decimals, only two decimal place precision is supported.",
    "INVALID_RESOURCE_ID": "Specified resource ID does not exist. Please check the resource ID and try again.",
    "PREVIOUS_REQUEST_IN_PROGRESS": "A previous request on this resource is currently in progress. Please wait for sometime and try again. It is best to space out the initial and the subsequent request(s) to avoid receiving this error.",
}


# developer.paypal.com currency codes: "This currency does not support decimals."
NO_DECIMALS = frozenset({"HUF", "JPY", "TWD"})


def money(amount_minor: int, currency: str) -> dict[str, str]:
    """A Money object as PayPal writes it: the value in major units, no decimals for HUF, JPY, TWD.
    `amount_minor` is in refund-mcp's (Babel's) units, as every fake's seeds are."""
    exponent = int(get_currency_precision(currency))
    value = Decimal(amount_minor).scaleb(-exponent)
    places = 0 if currency in NO_DECIMALS else exponent
    if currency in NO_DECIMALS and value != value.to_integral_value():
        raise ValueError(f"PayPal cannot hold {currency} {value}: the currency takes no decimals")
    return {"currency_code": currency, "value": f"{value:.{places}f}"}


def parse_money(value: str, currency: str) -> int | None:
    """Minor units, or None when `value` has decimals PayPal refuses for the currency (DECIMAL_PRECISION)."""
    exponent = int(get_currency_precision(currency))
    if currency in NO_DECIMALS and "." in value:
        return None
    try:
        scaled = Decimal(value).scaleb(exponent)
    except InvalidOperation:
        return None
    return int(scaled) if scaled == scaled.to_integral_value() else None


def rsa_sha256_verify(public_key: tuple[int, int], message: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-256 ("SHA256withRSA"), RFC 8017 §8.2.2."""
    modulus, exponent = public_key
    size = (modulus.bit_length() + 7) // 8
    if len(signature) != size or int.from_bytes(signature, "big") >= modulus:
        return False
    encoded = pow(int.from_bytes(signature, "big"), exponent, modulus).to_bytes(size, "big")
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    expected = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return hmac.compare_digest(encoded, expected)


def raw_member(text: str, name: str) -> str | None:
    """The exact source text of a top-level member's value in a JSON object, or None."""
    decoder = json.JSONDecoder()
    try:
        index = _JSON_SPACE.match(text, 0).end()  # type: ignore[union-attr]
        if text[index : index + 1] != "{":
            return None
        index = _JSON_SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
        while text[index : index + 1] == '"':
            key, index = json.decoder.scanstring(text, index + 1)  # type: ignore[attr-defined]
            index = _JSON_SPACE.match(text, index).end()  # type: ignore[union-attr]
            if text[index : index + 1] != ":":
                return None
            start = _JSON_SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
            _, end = decoder.raw_decode(text, start)
            if key == name:
                return text[start:end]
            index = _JSON_SPACE.match(text, end).end()  # type: ignore[union-attr]
            if text[index : index + 1] == ",":
                index = _JSON_SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
    except ValueError:
        return None
    return None


@dataclass
class _Capture:
    id: str
    seed: PaymentSeed
    refund_ids: list[str]


@dataclass
class _Refund:
    id: str
    capture_id: str
    amount: int
    currency: str
    status: str
    custom_id: str | None
    invoice_id: str | None
    note_to_payer: str | None
    created: datetime
    updated: datetime
    running_total: int  # total refunded on the capture including this one, when it was made


class PayPalFake(FakeProcessor):
    name = "paypal"

    def __init__(self, *, client_id: str = DEFAULT_CLIENT_ID, client_secret: str = DEFAULT_CLIENT_SECRET) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = 32400  # seconds, what PayPal usually grants
        self.token_fetches = 0
        self.tokens: dict[str, float] = {}  # token -> monotonic time it stops being accepted
        self.reject_all_tokens = False  # every API call answers 401, even with a fresh token
        self.captures: dict[str, _Capture] = {}
        self.refunds: dict[str, _Refund] = {}
        self.request_ids: dict[str, str] = {}  # PayPal-Request-Id -> refund id
        self.webhook_certs: dict[str, tuple[int, int]] = {}  # cert_url -> RSA public key (n, e)
        self.verify_requests: list[dict[str, Any]] = []
        super().__init__()

    def add_webhook_cert(self, cert_url: str, public_key: tuple[int, int]) -> None:
        """Serve the certificate of a webhook signing key at `cert_url`."""
        self.webhook_certs[cert_url] = public_key

    def dashboard_refund(self, capture_id: str, amount: int, *, status: str = "COMPLETED") -> dict[str, Any]:
        """A refund made in the PayPal dashboard (or a reversal by PayPal): no custom_id."""
        capture = self.captures[capture_id]
        now = datetime.now(UTC).replace(microsecond=0)
        refund = _Refund(
            id=random_id("", 17, _ID_ALPHABET),
            capture_id=capture.id,
            amount=amount,
            currency=capture.seed.currency,
            status=status,
            custom_id=None,
            invoice_id=None,
            note_to_payer=None,
            created=now,
            updated=now,
            running_total=self._refunded(capture) + amount,
        )
        self.refunds[refund.id] = refund
        capture.refund_ids.append(refund.id)
        return self.refund_object(refund, "https://api-m.paypal.com")

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def faults_apply_to(self, request: Request) -> bool:
        return request.url.path != "/v1/oauth2/token"

    # ------------------------------------------------------------------ wire helpers

    def _respond(self, body: dict[str, Any], status_code: int = 200) -> Response:
        return Response(
            json.dumps(body, separators=(",", ":")).encode(),
            status_code=status_code,
            media_type="application/json",
            headers={"Paypal-Debug-Id": random_id("", 13, "0123456789abcdef")},
        )

    def _error(
        self, status_code: int, name: str, message: str, issues: tuple[str, ...] = (), field: str | None = None
    ) -> Response:
        debug_id = random_id("", 13, "0123456789abcdef")
        details = []
        for issue in issues:
            detail: dict[str, Any] = {"issue": issue, "description": _DESCRIPTIONS.get(issue, issue)}
            if field is not None:
                detail.update(field=field, location="body")
            details.append(detail)
        body: dict[str, Any] = {"name": name, "message": message, "debug_id": debug_id}
        if details:
            body["details"] = details
        anchor = issues[0] if issues else name
        body["links"] = [
            {
                "href": f"https://developer.paypal.com/docs/api/payments/v2/#error-{anchor}",
                "rel": "information_link",
                "method": "GET",
            }
        ]
        response = self._respond(body, status_code)
        response.headers["Paypal-Debug-Id"] = debug_id
        return response

    def _unprocessable(self, issue: str, field: str | None = None) -> Response:
        return self._error(
            422,
            "UNPROCESSABLE_ENTITY",
            "The requested action could not be performed, semantically incorrect, or failed business validation.",
            (issue,),
            field,
        )

    def _not_found(self) -> Response:
        return self._error(
            404, "RESOURCE_NOT_FOUND", "The specified resource does not exist.", ("INVALID_RESOURCE_ID",)
        )

    def server_error(self, status_code: int) -> Response:
        if status_code == 503:
            return self._error(503, "SERVICE_UNAVAILABLE", "Service Unavailable.")
        return self._error(500, "INTERNAL_SERVER_ERROR", "An internal server error occurred.")

    def rate_limited(self) -> Response:
        response = self._error(429, "RATE_LIMIT_REACHED", "Too many requests. Blocked due to rate limiting.")
        response.headers["Retry-After"] = self.faults.retry_after
        return response

    def _unauthorized(self, request: Request) -> Response | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if self.tokens.get(token, 0.0) <= time.monotonic() or self.reject_all_tokens:
            return self._error(
                401,
                "AUTHENTICATION_FAILURE",
                "Authentication failed due to missing authorization header, or invalid authentication credentials.",
            )
        return None

    # ------------------------------------------------------------------ objects

    def _refunded(self, capture: _Capture) -> int:
        held = sum(self.refunds[r].amount for r in capture.refund_ids if self.refunds[r].status in _HOLDS)
        return capture.seed.refunded_minor + held

    def _capture_status(self, capture: _Capture) -> str:
        if capture.seed.status and capture.seed.status != "COMPLETED":
            return capture.seed.status
        refunded = self._refunded(capture)
        if refunded >= capture.seed.amount_minor:
            return "REFUNDED"
        return "PARTIALLY_REFUNDED" if refunded else "COMPLETED"

    def capture_object(self, capture: _Capture, base: str) -> dict[str, Any]:
        seed = capture.seed
        amount = money(seed.amount_minor, seed.currency)
        obj: dict[str, Any] = {
            "id": capture.id,
            "amount": amount,
            "final_capture": True,
            "seller_protection": {
                "status": "ELIGIBLE",
                "dispute_categories": ["ITEM_NOT_RECEIVED", "UNAUTHORIZED_TRANSACTION"],
            },
            "seller_receivable_breakdown": {
                "gross_amount": amount,
                "paypal_fee": money(0, seed.currency),
                "net_amount": amount,
            },
            "status": self._capture_status(capture),
            "supplementary_data": {"related_ids": {"order_id": "ORDER" + capture.id[:12]}},
            "payee": {"email_address": "merchant@example.com", "merchant_id": "FAKEMERCHANT2"},
            "create_time": iso_z(seed.created),
            "update_time": iso_z(seed.created),
            "links": [
                {"href": f"{base}/v2/payments/captures/{capture.id}", "rel": "self", "method": "GET"},
                {"href": f"{base}/v2/payments/captures/{capture.id}/refund", "rel": "refund", "method": "POST"},
            ],
        }
        if seed.description:
            obj["invoice_id"] = seed.description[:127]
        return obj

    def refund_object(self, refund: _Refund, base: str, *, minimal: bool = False) -> dict[str, Any]:
        links = [
            {"href": f"{base}/v2/payments/refunds/{refund.id}", "rel": "self", "method": "GET"},
            {"href": f"{base}/v2/payments/captures/{refund.capture_id}", "rel": "up", "method": "GET"},
        ]
        if minimal:
            return {"id": refund.id, "status": refund.status, "links": links}
        amount = money(refund.amount, refund.currency)
        obj: dict[str, Any] = {
            "id": refund.id,
            "amount": amount,
            "seller_payable_breakdown": {
                "gross_amount": amount,
                "paypal_fee": money(0, refund.currency),
                "net_amount": amount,
                "total_refunded_amount": money(refund.running_total, refund.currency),
            },
            "status": refund.status,
            "create_time": iso_z(refund.created),
            "update_time": iso_z(refund.updated),
            "links": links,
        }
        if refund.status in ("PENDING", "FAILED"):
            obj["status_details"] = {"reason": "ECHECK"}
        for key in ("custom_id", "invoice_id", "note_to_payer"):
            if getattr(refund, key) is not None:
                obj[key] = getattr(refund, key)
        return obj

    # ------------------------------------------------------------------ control

    def add_payment(self, seed: PaymentSeed) -> dict[str, Any]:
        capture_id = seed.id or random_id("", 17, _ID_ALPHABET)
        self.captures[capture_id] = _Capture(capture_id, seed, [])
        return {"id": capture_id}

    def state(self) -> dict[str, Any]:
        base = "http://fake.paypal"
        return {
            "refund_count": len(self.refunds),
            "refunds": [self.refund_object(r, base) for r in self.refunds.values()],
            "payments": [self.capture_object(c, base) for c in self.captures.values()],
            "token_fetches": self.token_fetches,
        }

    def set_refund_status(
        self, refund_id: str, status: str, failure_reason: str | None = None
    ) -> dict[str, Any] | None:
        refund = self.refunds.get(refund_id)
        if refund is None:
            return None
        refund.status = status.upper()
        refund.updated = refund.updated + timedelta(seconds=1)
        return self.refund_object(refund, "http://fake.paypal")

    # ------------------------------------------------------------------ API

    def api_routes(self) -> list[BaseRoute]:
        async def expire(request: Request) -> Response:
            self.expire_tokens()
            return self._respond({"expired": True})

        return [
            Route("/_fake/tokens/expire", expire, methods=["POST"]),
            self.route("/v1/oauth2/token", self._token, ["POST"]),
            self.route("/v2/payments/captures/{capture_id}/refund", self._create_refund, ["POST"]),
            self.route("/v2/payments/captures/{capture_id}", self._get_capture, ["GET"]),
            self.route("/v2/payments/refunds/{refund_id}", self._get_refund, ["GET"]),
            self.route("/v1/notifications/verify-webhook-signature", self._verify_webhook_signature, ["POST"]),
        ]

    async def _verify_webhook_signature(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            text = (await request.body()).decode("utf-8")
            body = json.loads(text)
        except ValueError:
            return self._error(
                400, "INVALID_REQUEST", "Request is not well-formed, syntactically incorrect, or violates schema.",
                ("MALFORMED_REQUEST_JSON",),
            )
        if not isinstance(body, dict):
            body = {}
        for name in (*VERIFY_FIELDS, "webhook_event"):
            expected_type = dict if name == "webhook_event" else str
            if not isinstance(body.get(name), expected_type):
                return self._error(
                    400, "VALIDATION_ERROR", "Invalid request - see details.", ("MISSING_REQUIRED_PARAMETER",), f"/{name}"
                )
        self.verify_requests.append(body)
        event_text = raw_member(text, "webhook_event")
        public_key = self.webhook_certs.get(body["cert_url"])
        verdict = "FAILURE"
        if public_key is not None and body["auth_algo"] == "SHA256withRSA" and event_text is not None:
            crc = zlib.crc32(event_text.encode())
            signed = f"{body['transmission_id']}|{body['transmission_time']}|{body['webhook_id']}|{crc}".encode()
            try:
                signature = base64.b64decode(body["transmission_sig"], validate=True)
            except ValueError:
                signature = b""
            if rsa_sha256_verify(public_key, signed, signature):
                verdict = "SUCCESS"
        return self._respond({"verification_status": verdict})

    async def _token(self, request: Request) -> Response:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization", "") != f"Basic {expected}":
            return self._respond({"error": "invalid_client", "error_description": "Client Authentication failed"}, 401)
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("grant_type") != "client_credentials":
            return self._respond({"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"}, 400)
        self.token_fetches += 1
        token = random_id("A21AA", 60, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        self.tokens[token] = time.monotonic() + self.token_ttl
        return self._respond(
            {
                "scope": "https://uri.paypal.com/services/payments/refund https://uri.paypal.com/services/payments/payment",
                "access_token": token,
                "token_type": "Bearer",
                "app_id": "APP-80W284485P519543T",
                "expires_in": self.token_ttl,
                "nonce": iso_z(datetime.now(UTC)) + random_id("", 20),
            }
        )

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def _create_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        base = self._base(request)
        minimal = request.headers.get("prefer", "return=minimal") != "return=representation"
        request_id = request.headers.get("paypal-request-id")
        if request_id is not None and request_id in self.request_ids:
            # Same PayPal-Request-Id: the original refund, as it is now, whatever this body says.
            return self._respond(
                self.refund_object(self.refunds[self.request_ids[request_id]], base, minimal=minimal), 201
            )
        capture = self.captures.get(request.path_params["capture_id"])
        if capture is None:
            return self._not_found()
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self._error(
                400,
                "INVALID_REQUEST",
                "Request is not well-formed, syntactically incorrect, or violates schema.",
                ("MALFORMED_REQUEST_JSON",),
            )
        note = body.get("note_to_payer")
        if note is not None and not (1 <= len(note) <= 255):
            return self._error(
                400,
                "INVALID_REQUEST",
                "Request is not well-formed, syntactically incorrect, or violates schema.",
                ("INVALID_STRING_LENGTH",),
                "/note_to_payer",
            )
        seed = capture.seed
        status = self._capture_status(capture)
        if seed.disputed:
            return self._unprocessable("REFUND_NOT_PERMITTED_DUE_TO_CHARGEBACK")
        if status == "PENDING":
            return self._unprocessable("PENDING_CAPTURE")
        if status not in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"):
            return self._unprocessable("REFUND_NOT_ALLOWED")
        remaining = seed.amount_minor - self._refunded(capture)
        if remaining <= 0:
            return self._unprocessable("CAPTURE_FULLY_REFUNDED")
        amount = remaining
        if "amount" in body:
            requested = body["amount"]
            if requested.get("currency_code") != seed.currency:
                return self._unprocessable("REFUND_CAPTURE_CURRENCY_MISMATCH", "/amount/currency_code")
            parsed = parse_money(str(requested.get("value", "")), seed.currency)
            if parsed is None:
                return self._unprocessable("DECIMAL_PRECISION", "/amount/value")
            if parsed <= 0:
                return self._unprocessable("CANNOT_BE_ZERO_OR_NEGATIVE", "/amount/value")
            if parsed > remaining:
                return self._unprocessable("REFUND_AMOUNT_EXCEEDED", "/amount/value")
            amount = parsed
        now = datetime.now(UTC).replace(microsecond=0)
        refund = _Refund(
            id=random_id("", 17, _ID_ALPHABET),
            capture_id=capture.id,
            amount=amount,
            currency=seed.currency,
            status=seed.refund_outcome or "COMPLETED",
            custom_id=body.get("custom_id"),
            invoice_id=body.get("invoice_id"),
            note_to_payer=note,
            created=now,
            updated=now,
            running_total=self._refunded(capture) + amount,
        )
        self.refunds[refund.id] = refund
        capture.refund_ids.append(refund.id)
        if request_id is not None:
            self.request_ids[request_id] = refund.id
        response = self._respond(self.refund_object(refund, base, minimal=minimal), 201)
        await self.after_commit()
        return response

    async def _get_refund(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        refund = self.refunds.get(request.path_params["refund_id"])
        if refund is None:
            return self._not_found()
        return self._respond(self.refund_object(refund, self._base(request)))

    async def _get_capture(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        capture = self.captures.get(request.path_params["capture_id"])
        if capture is None:
            return self._not_found()
        return self._respond(self.capture_object(capture, self._base(request)))
