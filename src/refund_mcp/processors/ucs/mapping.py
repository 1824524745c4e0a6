"""Pure mappings between refund-mcp and the Unified Connector Service protos (no I/O).

Requests: `merchant_refund_id` is our refund id (`rf_…`), the connector's replay key; the per-request
`merchant_request_id` is the idempotency key the service derived for this attempt, so every retry of
one attempt is the same request. Metadata travels as the JSON object `refund_metadata`.

Statuses (`RefundStatus`):

    REFUND_SUCCESS               succeeded
    REFUND_PENDING               pending
    REFUND_MANUAL_REVIEW         pending (the connector holds it for review: not final, stays reserved)
    REFUND_FAILURE               failed (the connector made the refund and it failed)
    REFUND_TRANSACTION_FAILURE   the request itself failed at the connector: classified as an error
    REFUND_STATUS_UNSPECIFIED    pending (unknown keeps the amount reserved: the safe side)

Errors are classified for money (`Delivery`):

    gRPC status                                        error                 delivery
    no connection within the connect timeout           ProcessorUnavailable  NOT_SENT
    RESOURCE_EXHAUSTED                                 RateLimited           NOT_SENT
    UNAUTHENTICATED, PERMISSION_DENIED                 ProcessorAuthFailed   DECLINED
    INVALID_ARGUMENT, FAILED_PRECONDITION,             ProcessorError        DECLINED
      OUT_OF_RANGE, NOT_FOUND, UNIMPLEMENTED
    DEADLINE_EXCEEDED, UNKNOWN, INTERNAL, UNAVAILABLE  ProcessorUnavailable  OUTCOME_UNKNOWN
      (once connected), CANCELLED, ABORTED, DATA_LOSS,
      ALREADY_EXISTS, anything else

    an answer carrying `ErrorInfo` (connector HTTP status in `status_code`):
    400-499 other than 401/403/404/429: a decline    ProcessorError        DECLINED
    401 / 403                                          ProcessorAuthFailed   DECLINED
    429                                                RateLimited           NOT_SENT
    anything else (5xx, 0 = no connector answer)       ProcessorUnavailable  OUTCOME_UNKNOWN

Connector ids: a refund is tracked as `{connector_transaction_id}/{connector_refund_id}`, because
`RefundService.Get` needs both and the processor interface keeps one refund id.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorAuthFailed,
    ProcessorCallError,
    ProcessorError,
    ProcessorUnavailable,
    RateLimited,
    RefundError,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import ProcessorRefund, ProcessorRefundRequest, RefundStatus, TransactionInfo
from refund_mcp.processors.ucs.generated import payment_methods_pb2 as methods
from refund_mcp.processors.ucs.generated import payment_pb2 as pb

REFUND_ID_SEPARATOR = "/"

_STATUS = {
    pb.REFUND_SUCCESS: RefundStatus.SUCCEEDED,
    pb.REFUND_PENDING: RefundStatus.PENDING,
    pb.REFUND_MANUAL_REVIEW: RefundStatus.PENDING,
    pb.REFUND_FAILURE: RefundStatus.FAILED,
    pb.REFUND_TRANSACTION_FAILURE: RefundStatus.FAILED,
}

# Payments a refund can be made against.
REFUNDABLE_PAYMENTS = frozenset({pb.CHARGED, pb.PARTIAL_CHARGED, pb.PARTIAL_CHARGED_AND_CHARGEABLE})

_DECLINING_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Produced by the client library itself (or a proxy), not a complete answer from the server.
_LOCAL_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def refund_status(status: int) -> RefundStatus:
    return _STATUS.get(status, RefundStatus.PENDING)  # type: ignore[call-overload]


def status_word(status: int) -> str:
    try:
        return pb.RefundStatus.Name(status)
    except ValueError:
        return f"REFUND_STATUS_{status}"


def compose_refund_id(connector_transaction_id: str, connector_refund_id: str) -> str:
    return f"{connector_transaction_id}{REFUND_ID_SEPARATOR}{connector_refund_id}"


def split_refund_id(processor_refund_id: str) -> tuple[str, str]:
    """(connector transaction id, connector refund id). Raises RefundNotFound for an id we never made."""
    transaction_id, sep, refund_id = processor_refund_id.rpartition(REFUND_ID_SEPARATOR)
    if not sep or not transaction_id or not refund_id:
        raise RefundNotFound(f"{processor_refund_id!r} is not a refund id refund-mcp recorded for a UCS connector")
    return transaction_id, refund_id


def currency_code(currency: str) -> int:
    """The proto's Currency value. Raises ProcessorError (nothing sent) for a currency it does not list."""
    try:
        return pb.Currency.Value(currency.upper())
    except ValueError as exc:
        raise ProcessorError(f"the UCS API has no currency {currency!r}", processor="ucs") from exc


def currency_name(value: int) -> str:
    try:
        return pb.Currency.Name(value)
    except ValueError:
        return "XXX"


def build_refund_request(request: ProcessorRefundRequest, *, payment_amount_minor: int) -> pb.PaymentServiceRefundRequest:
    metadata = dict(request.metadata)
    metadata["refund_mcp_id"] = request.refund_id  # ours, whatever the caller's metadata says
    return pb.PaymentServiceRefundRequest(
        merchant_refund_id=request.refund_id,
        merchant_request_id=request.idempotency_key,
        connector_transaction_id=request.transaction_id,
        payment_amount=payment_amount_minor,
        refund_amount=pb.Money(minor_amount=request.amount_minor, currency=currency_code(request.currency)),
        reason=request.reason.value,
        refund_metadata=methods.SecretString(value=json.dumps(metadata, sort_keys=True, separators=(",", ":"))),
    )


def build_refund_get(processor_refund_id: str, *, request_id: str) -> pb.RefundServiceGetRequest:
    transaction_id, refund_id = split_refund_id(processor_refund_id)
    return pb.RefundServiceGetRequest(
        connector_transaction_id=transaction_id,
        connector_refund_id=refund_id,
        refund_id=refund_id,  # deprecated twin of connector_refund_id; older servers read only this one
        merchant_request_id=request_id,
    )


def build_payment_get(transaction_id: str, *, request_id: str) -> pb.PaymentServiceGetRequest:
    return pb.PaymentServiceGetRequest(connector_transaction_id=transaction_id, merchant_request_id=request_id)


def _timestamp(epoch: int | None) -> datetime | None:
    if not epoch or epoch < 0 or epoch >= 2**33:
        return None
    return datetime.fromtimestamp(epoch, UTC)


def error_text(error: pb.ErrorInfo) -> tuple[str | None, str]:
    """(the most specific code, a message) from an ErrorInfo."""
    unified, connector = error.unified_details, error.connector_details
    code = connector.code or unified.code or None
    message = connector.message or connector.reason or unified.message or unified.description or "no message"
    return code, message


def answer_error(
    processor: str, error: pb.ErrorInfo, status_code: int, *, flow: str, request_id: str | None
) -> RefundError:
    """The error for an answer that carries ErrorInfo (the connector refused or failed)."""
    code, message = error_text(error)
    said = f"{processor} (through UCS) answered HTTP {status_code or 'none'}, {code or 'no code'}: {message}"
    common = {"processor": processor, "http_status": status_code or None, "request_id": request_id, "processor_code": code, "answered": True}
    if status_code == 404 and flow == "lookup":
        return TransactionNotFound(f"{processor} has no such payment ({said})")
    if status_code == 404 and flow == "get":
        return RefundNotFound(f"{processor} has no such refund ({said})")
    if status_code in (401, 403):
        return ProcessorAuthFailed(said + "; check the connector credentials", delivery=Delivery.DECLINED, **common)
    if status_code == 429:
        return RateLimited(said + "; nothing was done, retry later", delivery=Delivery.NOT_SENT, **common)
    if 400 <= status_code < 500:
        return ProcessorError(said, delivery=Delivery.DECLINED, **common)
    return ProcessorUnavailable(
        said + "; the connector may have acted on the request, retry only with the same idempotency key",
        delivery=Delivery.OUTCOME_UNKNOWN,
        **common,
    )


def refund_from_response(processor: str, response: pb.RefundResponse, *, fallback_transaction_id: str | None = None, flow: str) -> ProcessorRefund:
    """A RefundResponse as our ProcessorRefund. Raises the classified error for an answer that says the
    request itself failed, and OUTCOME_UNKNOWN for a success without a refund id (nothing to track)."""
    request_id = response.response_headers.get("x-request-id") or None
    failed_request = response.status == pb.REFUND_TRANSACTION_FAILURE or (
        response.HasField("error") and not response.connector_refund_id
    )
    if failed_request:
        raise answer_error(processor, response.error, response.status_code, flow=flow, request_id=request_id)
    transaction_id = response.connector_transaction_id or fallback_transaction_id
    if not response.connector_refund_id or not transaction_id:
        raise ProcessorUnavailable(
            f"{processor} (through UCS) answered without a refund id; the refund may exist, retry with the same idempotency key",
            processor=processor,
            delivery=Delivery.OUTCOME_UNKNOWN,
            answered=True,
        )
    status = refund_status(response.status)
    amount = response.refund_amount if response.HasField("refund_amount") else None
    failure = error_text(response.error)[1] if response.HasField("error") else None
    return ProcessorRefund(
        processor_refund_id=compose_refund_id(transaction_id, response.connector_refund_id),
        status=status,
        amount_minor=amount.minor_amount if amount is not None else 0,
        currency=currency_name(amount.currency) if amount is not None else "XXX",
        processor_status=status_word(response.status),
        request_id=request_id,
        failure_reason=failure if status is RefundStatus.FAILED else None,
        transaction_id=transaction_id,
        created_at=_timestamp(response.created_at),
    )


def transaction_from_response(processor: str, transaction_id: str, response: pb.PaymentServiceGetResponse) -> TransactionInfo:
    """UCS reports no refunded total: refunds made outside refund-mcp are refused by the connector, not by us."""
    if response.HasField("error"):
        raise answer_error(processor, response.error, response.status_code, flow="lookup", request_id=None)
    if not response.HasField("amount"):
        raise ProcessorError(f"{processor} (through UCS) reported the payment without an amount", processor=processor, answered=True)
    amount = response.amount.minor_amount
    if response.HasField("captured_amount"):
        captured = response.captured_amount
    else:
        captured = amount if response.status == pb.CHARGED else 0
    try:
        status = pb.PaymentStatus.Name(response.status).lower()
    except ValueError:
        status = "unknown"
    return TransactionInfo(
        processor=processor,
        transaction_id=response.connector_transaction_id or transaction_id,
        amount_minor=amount,
        currency=currency_name(response.amount.currency),
        captured_minor=captured,
        refunded_minor=0,
        status=status,
        created_at=_timestamp(response.created_at),
        customer_ref=response.email or response.connector_customer_id or None,
        refundable=response.status in REFUNDABLE_PAYMENTS,
    )


def rpc_error(processor: str, code: grpc.StatusCode, details: str, *, flow: str) -> RefundError:
    """A gRPC status from UCS (or from the library, for deadlines) in the error tree.
    `details` must already be scrubbed of credentials."""
    said = f"UCS answered gRPC {code.name} for {processor}" + (f": {details[:200]}" if details else "")
    answered = code not in _LOCAL_CODES
    if code is grpc.StatusCode.NOT_FOUND and flow == "lookup":
        return TransactionNotFound(f"{processor} has no such payment ({said})")
    if code is grpc.StatusCode.NOT_FOUND and flow == "get":
        return RefundNotFound(f"{processor} has no such refund ({said})")
    if code is grpc.StatusCode.UNIMPLEMENTED and flow in ("lookup", "get"):
        return NotSupported(f"{processor} does not support this through UCS ({said})")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(said + "; nothing was done, retry later", processor=processor, answered=answered)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ProcessorAuthFailed(said + "; check the connector credentials", processor=processor, answered=answered)
    if code in _DECLINING_CODES:
        return ProcessorError(said, processor=processor, delivery=Delivery.DECLINED, answered=answered, processor_code=code.name)
    return ProcessorUnavailable(
        said + "; it may have acted on the request, so retry only with the same idempotency key",
        processor=processor,
        delivery=Delivery.OUTCOME_UNKNOWN,
        answered=answered,
        processor_code=code.name,
    )


def not_connected(processor: str, target: str) -> ProcessorCallError:
    return ProcessorUnavailable(
        f"could not connect to the UCS server for {processor} ({target}); the request was not sent and can be retried",
        processor=processor,
        delivery=Delivery.NOT_SENT,
    )
