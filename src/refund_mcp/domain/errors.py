"""The error tree. Every error a caller can see carries one of the contract's codes.

    RefundError                         [code] message, what to do next
     ├─ ValidationFailed                validation_error
     ├─ PolicyDenied                    policy_denied
     ├─ ConfirmationDeclined            confirmation_declined
     ├─ TransactionNotFound             transaction_not_found
     ├─ RefundNotFound                  refund_not_found
     ├─ AmountExceedsRefundable         amount_exceeds_refundable
     ├─ CurrencyMismatch                currency_mismatch
     ├─ AlreadyRefunded                 already_refunded
     ├─ NotRefundable                   not_refundable
     ├─ NotSupported                    not_supported
     ├─ IdempotencyConflict             idempotency_conflict
     ├─ Unauthorized / Forbidden        unauthorized / forbidden
     └─ ProcessorCallError              a processor answered badly or not at all; carries `delivery`
         ├─ ProcessorUnavailable        processor_unavailable (timeouts, 5xx, connection errors)
         ├─ RateLimited                 rate_limited (429, with retry_after)
         ├─ ProcessorAuthFailed         processor_auth_failed (401/403)
         └─ ProcessorError              processor_error (any other refusal)

A ProcessorCallError may also carry one of the business codes above (e.g. a Stripe
`charge_already_refunded` becomes code `already_refunded`) through `code=`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class RefundError(Exception):
    code: str = "processor_error"

    def __init__(self, message: str, *, code: str | None = None, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.fields = list(fields)

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ValidationFailed(RefundError):
    code = "validation_error"

    def __str__(self) -> str:
        named = ", ".join(field for field in self.fields if field not in self.message)
        return f"[{self.code}] {named + ': ' if named else ''}{self.message}"


class PolicyDenied(RefundError):
    code = "policy_denied"


class ConfirmationDeclined(RefundError):
    code = "confirmation_declined"


class TransactionNotFound(RefundError):
    code = "transaction_not_found"


class RefundNotFound(RefundError):
    code = "refund_not_found"


class AmountExceedsRefundable(RefundError):
    code = "amount_exceeds_refundable"


class CurrencyMismatch(RefundError):
    code = "currency_mismatch"


class AlreadyRefunded(RefundError):
    code = "already_refunded"


class NotRefundable(RefundError):
    code = "not_refundable"


class NotSupported(RefundError):
    code = "not_supported"


class IdempotencyConflict(RefundError):
    code = "idempotency_conflict"


class Unauthorized(RefundError):
    code = "unauthorized"


class Forbidden(RefundError):
    code = "forbidden"


class Delivery(enum.Enum):
    """What a failed processor call means for money (see the adapters' error translation).

    NOT_SENT: the processor never acted on the request; retrying later is safe.
    OUTCOME_UNKNOWN: the request may have been acted on (timeout after sending, 5xx);
        keep the reservation and retry with the same idempotency key, never free the balance.
    DECLINED: the processor answered and refused; nothing was created.
    """

    NOT_SENT = "not_sent"
    OUTCOME_UNKNOWN = "outcome_unknown"
    DECLINED = "declined"


class ProcessorCallError(RefundError):
    code = "processor_error"
    delivery: Delivery = Delivery.DECLINED

    def __init__(
        self,
        message: str,
        *,
        processor: str,
        code: str | None = None,
        delivery: Delivery | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        processor_code: str | None = None,
        answered: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.processor = processor
        if delivery is not None:
            self.delivery = delivery
        self.http_status = http_status
        self.request_id = request_id
        self.retry_after = retry_after
        self.processor_code = processor_code
        # The processor sent a complete HTTP answer (e.g. a whole 5xx body), as opposed to a timeout or a
        # reset. Stripe stores such an answer under the idempotency key and replays it to every retry, so
        # after one the refund is looked up and, if absent, retried under a new derived key.
        self.answered = answered

    @property
    def retryable(self) -> bool:
        """True when the refund must stay reserved and be retried with the same idempotency key."""
        return self.delivery is not Delivery.DECLINED


class ProcessorUnavailable(ProcessorCallError):
    code = "processor_unavailable"
    delivery = Delivery.OUTCOME_UNKNOWN


class RateLimited(ProcessorCallError):
    code = "rate_limited"
    delivery = Delivery.NOT_SENT


class ProcessorAuthFailed(ProcessorCallError):
    code = "processor_auth_failed"
    delivery = Delivery.DECLINED


class ProcessorError(ProcessorCallError):
    code = "processor_error"
    delivery = Delivery.DECLINED
