"""Why a webhook delivery was refused, and the HTTP answer each reason gets.

    WebhookError                      status
     ├─ WebhookSignatureError         401  bad, missing, stale or unverifiable-by-design signature
     ├─ WebhookMalformed              400  the body (or a signed item) cannot be parsed
     ├─ WebhookTooLarge               413  the body is over the size cap
     ├─ WebhookNotConfigured          404  the processor is not configured here at all
     │                                503  the processor is, but its webhook secret is not (retry once it is)
     ├─ WebhookVerificationUnavailable 503 the processor's own verification API could not be asked (PayPal)
     ├─ WebhookRateLimited            429  too many unverified deliveries (or verifications in flight) now
     ├─ WebhookBusy                   503  too many deliveries being read at once
     └─ WebhookTimeout                408  the body did not arrive within the deadline

Messages are written by refund-mcp itself: they never quote the body, a header or a secret, so
they are safe to return to the sender and to put in the audit log.
"""

from __future__ import annotations


class WebhookError(Exception):
    status_code = 400
    code = "webhook_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WebhookSignatureError(WebhookError):
    status_code = 401
    code = "bad_signature"


class WebhookMalformed(WebhookError):
    status_code = 400
    code = "malformed"


class WebhookTooLarge(WebhookError):
    status_code = 413
    code = "too_large"


class WebhookNotConfigured(WebhookError):
    code = "not_configured"

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class WebhookVerificationUnavailable(WebhookError):
    status_code = 503
    code = "verification_unavailable"


class WebhookRateLimited(WebhookError):
    status_code = 429
    code = "rate_limited"


class WebhookBusy(WebhookError):
    status_code = 503
    code = "busy"


class WebhookTimeout(WebhookError):
    status_code = 408
    code = "timeout"
