"""A fake Unified Connector Service: a real grpcio server speaking the vendored protos, with state.

It serves PaymentService.Get/Refund, RefundService.Get and EventService.HandleEvent for one
connector, on a free local port, in a thread pool of the test process (independent of the test's
event loop). Like the connector behind a real UCS it keeps refunds by `merchant_refund_id`: a
repeated request replays the refund it made instead of making another.

Every request is checked against the proto contract (`violations`): required ids set, amounts
positive, enum values defined, and the connector credentials present in metadata exactly as
configured. Faults (`faults.<name> = N`) are consumed one per refund call:

    unavailable           abort UNAVAILABLE before anything is done
    internal_before       abort INTERNAL before anything is done
    deadline_after_commit make the refund, then hold the answer until the client's deadline passed
    reset_after_commit    make the refund, then abort UNAVAILABLE (a connection lost mid-call)
    decline               the connector refuses: REFUND_TRANSACTION_FAILURE, HTTP 400, nothing made
    connector_5xx         the connector failed: REFUND_TRANSACTION_FAILURE, HTTP 502, nothing made

Webhooks: a body `{"merchant_refund_id", "connector_refund_id", "connector_transaction_id",
"status"}` signed as hex HMAC-SHA256 of the body in the `x-fake-signature` header, keyed with the
webhook secret that HandleEvent receives; a bad signature gives `source_verified = false`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from refund_mcp.processors.ucs.generated import payment_methods_pb2 as methods
from refund_mcp.processors.ucs.generated import payment_pb2 as pb
from refund_mcp.processors.ucs.generated import services_pb2_grpc as services

CONNECTOR = "checkout"
CONNECTOR_CONFIG = json.dumps({"config": {"Checkout": {"api_key": "sk_sbox_fake_ucs_checkout_0123456789", "processing_channel_id": "pc_fake"}}})
WEBHOOK_SECRET = "whsec_fake_ucs_checkout_abcdef"
SIGNATURE_HEADER = "x-fake-signature"
REQUIRED_METADATA = ("x-connector", "x-connector-config", "x-merchant-id", "x-tenant-id", "x-request-id")


@dataclass
class UcsFaults:
    unavailable: int = 0
    internal_before: int = 0
    deadline_after_commit: int = 0
    reset_after_commit: int = 0
    decline: int = 0
    connector_5xx: int = 0

    def take(self, name: str) -> bool:
        if getattr(self, name) > 0:
            setattr(self, name, getattr(self, name) - 1)
            return True
        return False


@dataclass
class FakePayment:
    id: str
    amount_minor: int
    currency: str
    status: int = pb.CHARGED
    email: str | None = None
    refund_outcome: int = pb.REFUND_SUCCESS


@dataclass
class FakeRefund:
    connector_refund_id: str
    merchant_refund_id: str
    transaction_id: str
    amount_minor: int
    currency: int
    status: int
    metadata: str
    reason: str


@dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class UcsFake:
    connector: str = CONNECTOR
    connector_config: str = CONNECTOR_CONFIG
    payments: dict[str, FakePayment] = field(default_factory=dict)
    refunds: list[FakeRefund] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    faults: UcsFaults = field(default_factory=UcsFaults)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------------ test controls

    def add_payment(self, payment_id: str, amount_minor: int, currency: str = "USD", **extra: Any) -> FakePayment:
        payment = FakePayment(payment_id, amount_minor, currency, **extra)
        self.payments[payment_id] = payment
        return payment

    def set_refund_status(self, connector_refund_id: str, status: int) -> None:
        for refund in self.refunds:
            if refund.connector_refund_id == connector_refund_id:
                refund.status = status

    def refund_calls(self) -> list[Call]:
        return [call for call in self.calls if call.method == "PaymentService/Refund"]

    def release(self) -> None:
        self._release.set()

    def signed_webhook(self, refund: FakeRefund, status: int, *, secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(
            {
                "merchant_refund_id": refund.merchant_refund_id,
                "connector_refund_id": refund.connector_refund_id,
                "connector_transaction_id": refund.transaction_id,
                "status": pb.RefundStatus.Name(status),
            }
        ).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return body, {SIGNATURE_HEADER: signature, "content-type": "application/json"}

    # ------------------------------------------------------------------ contract

    def _check(self, method: str, request: Any, context: grpc.ServicerContext) -> dict[str, str]:
        metadata = {key: value for key, value in context.invocation_metadata()}
        self.calls.append(Call(method, request, metadata))
        for key in REQUIRED_METADATA:
            if not metadata.get(key):
                self.violations.append(f"{method}: metadata {key} missing")
        if metadata.get("x-connector") != self.connector or metadata.get("x-connector-config") != self.connector_config:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid connector credentials")
        _check_enums(method, request, self.violations)
        return metadata

    def _require(self, method: str, condition: bool, what: str) -> None:
        if not condition:
            self.violations.append(f"{method}: {what}")

    # ------------------------------------------------------------------ RPCs

    def payment_get(self, request: pb.PaymentServiceGetRequest, context: grpc.ServicerContext) -> pb.PaymentServiceGetResponse:
        self._check("PaymentService/Get", request, context)
        self._require("PaymentService/Get", bool(request.connector_transaction_id), "connector_transaction_id empty")
        payment = self.payments.get(request.connector_transaction_id)
        if payment is None:
            return pb.PaymentServiceGetResponse(
                status=pb.PAYMENT_STATUS_UNSPECIFIED,
                status_code=404,
                error=pb.ErrorInfo(connector_details=pb.ConnectorErrorDetails(code="not_found", message="payment not found")),
            )
        answer = pb.PaymentServiceGetResponse(
            connector_transaction_id=payment.id,
            status=payment.status,
            status_code=200,
            amount=pb.Money(minor_amount=payment.amount_minor, currency=pb.Currency.Value(payment.currency)),
            captured_amount=payment.amount_minor if payment.status == pb.CHARGED else 0,
        )
        if payment.email:
            answer.email = payment.email
        return answer

    def refund(self, request: pb.PaymentServiceRefundRequest, context: grpc.ServicerContext) -> pb.RefundResponse:
        method = "PaymentService/Refund"
        metadata = self._check(method, request, context)
        self._require(method, request.HasField("merchant_refund_id") and request.merchant_refund_id.startswith("rf_"), "merchant_refund_id not ours")
        self._require(method, request.HasField("merchant_request_id") and bool(request.merchant_request_id), "merchant_request_id missing")
        self._require(method, bool(request.connector_transaction_id), "connector_transaction_id empty")
        self._require(method, request.payment_amount > 0, "payment_amount not positive")
        self._require(method, request.refund_amount.minor_amount > 0, "refund_amount not positive")
        self._require(method, metadata.get("x-connector-request-reference-id") == request.merchant_refund_id, "reference id is not the refund id")
        if request.HasField("refund_metadata"):
            try:
                json.loads(request.refund_metadata.value)
            except ValueError:
                self.violations.append(f"{method}: refund_metadata is not JSON")
        if self.faults.take("unavailable"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connect error")
        if self.faults.take("internal_before"):
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        if self.faults.take("decline"):
            return _transaction_failure(request, 400, "refund_declined", "the card issuer declined the refund")
        if self.faults.take("connector_5xx"):
            return _transaction_failure(request, 502, "bad_gateway", "the connector failed")
        with self._lock:
            refund = next((r for r in self.refunds if r.merchant_refund_id == request.merchant_refund_id), None)
            if refund is None:
                payment = self.payments.get(request.connector_transaction_id)
                if payment is None:
                    return _transaction_failure(request, 404, "not_found", "payment not found")
                refunded = sum(r.amount_minor for r in self.refunds if r.transaction_id == payment.id and r.status != pb.REFUND_FAILURE)
                if refunded + request.refund_amount.minor_amount > payment.amount_minor:
                    return _transaction_failure(request, 422, "refund_amount_exceeds_balance", "amount exceeds the refundable balance")
                refund = FakeRefund(
                    connector_refund_id=f"rfd_{next(self._ids):06d}",
                    merchant_refund_id=request.merchant_refund_id,
                    transaction_id=payment.id,
                    amount_minor=request.refund_amount.minor_amount,
                    currency=request.refund_amount.currency,
                    status=payment.refund_outcome,
                    metadata=request.refund_metadata.value,
                    reason=request.reason,
                )
                self.refunds.append(refund)
        if self.faults.take("deadline_after_commit"):
            remaining = context.time_remaining()
            self._release.wait(timeout=None if remaining is None else remaining + 1.0)
        if self.faults.take("reset_after_commit"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by peer")
        return _refund_response(refund)

    def refund_get(self, request: pb.RefundServiceGetRequest, context: grpc.ServicerContext) -> pb.RefundResponse:
        method = "RefundService/Get"
        self._check(method, request, context)
        self._require(method, bool(request.connector_transaction_id), "connector_transaction_id empty")
        self._require(method, bool(request.connector_refund_id), "connector_refund_id empty")
        for refund in self.refunds:
            if refund.connector_refund_id == request.connector_refund_id and refund.transaction_id == request.connector_transaction_id:
                return _refund_response(refund)
        context.abort(grpc.StatusCode.NOT_FOUND, "refund not found")
        raise AssertionError("unreachable")

    def handle_event(self, request: pb.EventServiceHandleRequest, context: grpc.ServicerContext) -> pb.EventServiceHandleResponse:
        method = "EventService/HandleEvent"
        self._check(method, request, context)
        details = request.request_details
        self._require(method, details.method == pb.HTTP_METHOD_POST, "method is not POST")
        self._require(method, request.HasField("webhook_secrets") and bool(request.webhook_secrets.secret), "webhook secret missing")
        try:
            body = json.loads(details.body)
            status = pb.RefundStatus.Value(body["status"])
        except (ValueError, KeyError, TypeError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot parse the webhook body")
        expected = hmac.new(request.webhook_secrets.secret.encode(), details.body, hashlib.sha256).hexdigest()
        verified = hmac.compare_digest(expected, details.headers.get(SIGNATURE_HEADER, ""))
        refund = pb.RefundResponse(
            merchant_refund_id=body.get("merchant_refund_id", ""),
            connector_refund_id=body.get("connector_refund_id", ""),
            connector_transaction_id=body.get("connector_transaction_id", ""),
            status=status,
            status_code=200,
        )
        match = next((r for r in self.refunds if r.connector_refund_id == refund.connector_refund_id), None)
        if match is not None:
            refund.refund_amount.CopyFrom(pb.Money(minor_amount=match.amount_minor, currency=match.currency))
        return pb.EventServiceHandleResponse(
            event_type=pb.WEBHOOK_REFUND_SUCCESS if status == pb.REFUND_SUCCESS else pb.WEBHOOK_REFUND_FAILURE,
            event_content=pb.EventContent(refunds_response=refund),
            source_verified=verified,
            event_ack_response=pb.EventAckResponse(status_code=200, body=b"[accepted]"),
        )


def _refund_response(refund: FakeRefund) -> pb.RefundResponse:
    return pb.RefundResponse(
        merchant_refund_id=refund.merchant_refund_id,
        connector_refund_id=refund.connector_refund_id,
        connector_transaction_id=refund.transaction_id,
        status=refund.status,
        status_code=200,
        refund_amount=pb.Money(minor_amount=refund.amount_minor, currency=refund.currency),
        refund_metadata=methods.SecretString(value=refund.metadata),
        refund_reason=refund.reason,
        response_headers={"x-request-id": f"req_{refund.connector_refund_id}"},
    )


def _transaction_failure(request: pb.PaymentServiceRefundRequest, status_code: int, code: str, message: str) -> pb.RefundResponse:
    return pb.RefundResponse(
        merchant_refund_id=request.merchant_refund_id,
        status=pb.REFUND_TRANSACTION_FAILURE,
        status_code=status_code,
        error=pb.ErrorInfo(connector_details=pb.ConnectorErrorDetails(code=code, message=message)),
    )


def _check_enums(method: str, message: Any, violations: list[str]) -> None:
    """Every enum field set on `message` (recursively) holds a value its enum defines."""
    for descriptor, value in message.ListFields():
        if descriptor.enum_type is not None:
            values = value if descriptor.is_repeated else [value]
            for item in values:
                if descriptor.enum_type.values_by_number.get(item) is None:
                    violations.append(f"{method}: {descriptor.name}={item} is not a {descriptor.enum_type.name}")
        elif descriptor.message_type is not None and not descriptor.message_type.GetOptions().map_entry:
            items = value if descriptor.is_repeated else [value]
            for item in items:
                _check_enums(method, item, violations)


class _Payment(services.PaymentServiceServicer):
    def __init__(self, fake: UcsFake) -> None:
        self.Get = fake.payment_get  # type: ignore[method-assign]
        self.Refund = fake.refund  # type: ignore[method-assign]


class _Refund(services.RefundServiceServicer):
    def __init__(self, fake: UcsFake) -> None:
        self.Get = fake.refund_get  # type: ignore[method-assign]


class _Event(services.EventServiceServicer):
    def __init__(self, fake: UcsFake) -> None:
        self.HandleEvent = fake.handle_event  # type: ignore[method-assign]


class RunningUcs:
    """The fake listening on 127.0.0.1:`port` until stop()."""

    def __init__(self, fake: UcsFake, *, tls: tuple[bytes, bytes] | None = None) -> None:
        """`tls`: (PEM private key, PEM certificate chain) to serve TLS instead of plaintext."""
        self.fake = fake
        self.tls = tls is not None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        services.add_PaymentServiceServicer_to_server(_Payment(fake), self.server)
        services.add_RefundServiceServicer_to_server(_Refund(fake), self.server)
        services.add_EventServiceServicer_to_server(_Event(fake), self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("localhost:0", grpc.ssl_server_credentials([tls]))
        self.server.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.fake.release()
        self.server.stop(grace=None).wait()
