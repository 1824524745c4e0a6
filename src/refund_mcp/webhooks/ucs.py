"""`POST /webhooks/ucs/{account}`: a connector's webhook, verified and parsed by the UCS server itself.

The raw delivery (body, headers, path and query, untouched) goes to `EventService.HandleEvent` with the
account's webhook secret; nothing is stored before UCS answers. The answer decides:

    source_verified false                    401, nothing recorded
    a refund (refunds_response)              recorded like any refund event, then answered with UCS's
                                             `event_ack_response` when it gives one (what the connector expects)
    anything else (payments, disputes, …)    acknowledged and recorded as ignored
    UCS refuses the body (INVALID_ARGUMENT…) 400
    UCS unreachable, timing out, or refusing our credentials   503 (the connector delivers again)

The gRPC client is imported only when a UCS delivery arrives, so servers without the `ucs` extra
still serve every other webhook.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from refund_mcp.domain.errors import ProcessorAuthFailed, ProcessorCallError, RefundError
from refund_mcp.webhooks import _common
from refund_mcp.webhooks.errors import (
    WebhookError,
    WebhookMalformed,
    WebhookNotConfigured,
    WebhookSignatureError,
    WebhookVerificationUnavailable,
)
from refund_mcp.webhooks.events import IgnoredEvent, WebhookEvent


def ucs_endpoint(app: Any, limits: Any) -> Callable[[Request], Awaitable[Response]]:
    """`limits` is the routes' Limits: asking UCS is an outbound call made for a delivery nobody has
    authenticated yet, so it passes the same gate as PayPal's verification, and a refusal before
    verification is counted and sampled into the log, not audited."""
    from refund_mcp.webhooks import routes

    async def receive(request: Request) -> Response:
        account = request.path_params["account"]
        raw: bytes | None = None
        verified = False
        try:
            adapter = app.processors.get(account)
            if adapter is None or app.processors.kind(account) != "ucs":
                raise WebhookNotConfigured(f"no UCS account {account[:20]!r} is configured on this server", status_code=404)
            if adapter.webhook_secret is None:
                raise WebhookNotConfigured(f"UCS account {account} has no webhook secret (webhook_secret_env)", status_code=503)

            async def verify(body: bytes) -> Any:
                async with limits.gate.admit(routes.source_of(request)):
                    return await _handle(adapter, body, request)

            raw, answer = await limits.receive(request, verify)
            if not answer.source_verified:
                raise WebhookSignatureError("UCS could not verify that this delivery comes from the connector")
            verified = True
            events = parse_handled(account, answer, raw)
        except WebhookError as exc:
            return await limits.refuse(app, "ucs", account, exc, raw, verified=verified)
        acknowledgement = None
        if answer.HasField("event_ack_response") and answer.event_ack_response.status_code:
            ack = answer.event_ack_response
            acknowledgement = Response(ack.body, status_code=ack.status_code, headers=dict(ack.headers))
        return await routes.apply_events(app, "ucs", events, acknowledgement)

    return receive


async def _handle(adapter: Any, raw: bytes, request: Request) -> Any:
    """HandleEvent's answer. Raises WebhookError for every way UCS did not give one."""
    try:
        return await adapter.handle_event(raw, request.headers.items(), uri=request.url.path, query=request.url.query)
    except ProcessorAuthFailed as exc:
        raise WebhookVerificationUnavailable("UCS refused this account's connector credentials") from exc
    except ProcessorCallError as exc:
        if exc.retryable:
            raise WebhookVerificationUnavailable("UCS could not be asked to verify the delivery; deliver it again") from exc
        raise WebhookMalformed("UCS could not parse this delivery") from exc
    except RefundError as exc:
        raise WebhookMalformed("UCS could not handle this delivery") from exc


def parse_handled(account: str, answer: Any, raw: bytes) -> list[WebhookEvent]:
    """The events in a verified HandleEvent answer. Raises WebhookMalformed for an odd refund."""
    from refund_mcp.domain.models import ProcessorRefund
    from refund_mcp.processors.ucs import mapping
    from refund_mcp.processors.ucs.generated import payment_pb2 as pb

    event_id = answer.merchant_event_id or "sha256:" + hashlib.sha256(raw).hexdigest()[:48]
    content = answer.event_content.WhichOneof("content")
    if content != "refunds_response":
        try:
            kind = pb.WebhookEventType.Name(answer.event_type)
        except ValueError:
            kind = "unknown"
        return [IgnoredEvent(processor=account, event_id=event_id, kind=kind.lower())]
    refund = answer.event_content.refunds_response
    if not refund.connector_refund_id or not refund.connector_transaction_id:
        raise WebhookMalformed("the refund in this delivery has no connector ids")
    status = mapping.refund_status(refund.status)
    amount = refund.refund_amount if refund.HasField("refund_amount") else None
    answer_refund = ProcessorRefund(
        processor_refund_id=mapping.compose_refund_id(refund.connector_transaction_id, refund.connector_refund_id),
        status=status,
        amount_minor=amount.minor_amount if amount is not None else 0,
        currency=mapping.currency_name(amount.currency) if amount is not None else "XXX",
        processor_status=mapping.status_word(refund.status),
        failure_reason=mapping.error_text(refund.error)[1] if refund.HasField("error") else None,
        transaction_id=refund.connector_transaction_id,
    )
    event = _common.refund_event(
        account, event_id, answer_refund, our_refund_id=refund.merchant_refund_id or None, occurred_at=None
    )
    if amount is None:  # no amount: ours is matched by id; a stranger's cannot be recorded without one
        from dataclasses import replace

        event = replace(event, amount_minor=None, currency=None)
    return [event]
