"""`POST /webhooks/{stripe,paypal,adyen,square}` (the single account) and `/webhooks/{processor}/{label}`
(account `processor@label`): read the raw body, verify with that account's secret, parse, apply.

What a delivery gets back (the contract: 2xx recorded or replayed, 400 malformed, 401 bad or
missing signature, 5xx only when it could not be recorded, so the processor retries):

    200  every event recorded, or a replay (Adyen: the body `[accepted]`, which it expects)
    400  the body cannot be parsed                 401  bad, missing or stale signature
    404  the processor is not configured here      413  the body is over MAX_BODY_BYTES
    408  the body did not arrive within BODY_DEADLINE_SECONDS
    429  too many unverified deliveries to ask PayPal (or UCS) about now (limits.py)
    503  its webhook secret is not configured, PayPal could not be asked to verify, too many
         deliveries are being received at once, or an event was deferred (service/events.py), all
         of which succeed on a later delivery
    500  the database failed while recording

The routes need no bearer token: the processor's signature is the authentication. So until a
signature is verified, a delivery costs only bounded, in-memory work: at most MAX_IN_FLIGHT bodies
of at most MAX_BODY_BYTES are read at once, each within a deadline; a refusal is counted in the
metrics (refund_mcp_webhook_deliveries) and sampled into the log, never written to the database;
a verification that calls out (PayPal, UCS) is made only within VerificationGate's limits. A
delivery whose signature verified is audited: refused (`webhook.rejected`, reason and status,
never the body or a header) or applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from refund_mcp import metrics
from refund_mcp.audit.log import AuditEntry, append
from refund_mcp.webhooks import adyen, paypal, square, stripe
from refund_mcp.webhooks.errors import WebhookBusy, WebhookError, WebhookNotConfigured, WebhookTimeout, WebhookTooLarge
from refund_mcp.webhooks.events import WebhookEvent
from refund_mcp.webhooks.limits import LogSampler, VerificationGate

logger = logging.getLogger("refund_mcp.webhooks")

# Refund events are a few KiB (Stripe inlines at most 10 refunds of a charge); 256 KiB leaves room
# for any of them while keeping what an unauthenticated sender can make us buffer small.
MAX_BODY_BYTES = 256 * 1024
# A processor sends its body at once; a sender that trickles it holds a slot for this long at most.
BODY_DEADLINE_SECONDS = 10.0
# Deliveries read and verified at the same time, across all webhook routes (bounds memory and sockets).
MAX_IN_FLIGHT = 32
RETRY_AFTER_SECONDS = "60"
METRIC_PROCESSORS = frozenset({"stripe", "paypal", "adyen", "square", "ucs"})
VERDICTS = frozenset({"accepted", "replay", "bad_signature", "malformed", "unconfigured", "rate_limited", "too_large", "error"})
_VERDICT_OF_CODE = {
    "bad_signature": "bad_signature",
    "malformed": "malformed",
    "too_large": "too_large",
    "not_configured": "unconfigured",
    "rate_limited": "rate_limited",
}

Verifier = Callable[[bytes, Request], Awaitable[None]]


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing more than `limit` bytes without reading them all. Raises WebhookTooLarge."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WebhookTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _not_configured(processor: str, setting: str | None) -> WebhookNotConfigured:
    if setting is None:
        return WebhookNotConfigured(f"{processor} is not configured on this server", status_code=404)
    return WebhookNotConfigured(f"{processor} webhooks need {setting}, which is not set", status_code=503)


def _verifier(app: Any, processor: str, account: str, gate: VerificationGate) -> Verifier:
    """The check for one account of a processor, built per delivery from the current settings.
    Raises WebhookNotConfigured when the account or its webhook secret is missing."""
    found = app.settings.account_settings(account)
    config = found[1] if found is not None and found[0] == processor else None
    now = app.service.clock
    if processor == "stripe":
        if config is None or config.webhook_secret is None:
            raise _not_configured(account, None if config is None else "its webhook secret (STRIPE_WEBHOOK_SECRET)")
        secret = config.webhook_secret.get_secret_value()

        async def check_stripe(raw: bytes, request: Request) -> None:
            stripe.verify_stripe(raw, request.headers, secret, now())

        return check_stripe
    if processor == "paypal":
        adapter = app.processors.get(account)
        if config is None or adapter is None or not config.webhook_id:
            raise _not_configured(account, None if config is None else "its webhook id (PAYPAL_WEBHOOK_ID)")
        webhook_id = config.webhook_id

        async def check_paypal(raw: bytes, request: Request) -> None:
            await paypal.verify_paypal(raw, request.headers, webhook_id, adapter, gate=gate, source=source_of(request))

        return check_paypal
    if processor == "adyen":
        if config is None or config.hmac_key is None:
            raise _not_configured(account, None if config is None else "its HMAC key (ADYEN_HMAC_KEY)")
        key = config.hmac_key.get_secret_value()
        adyen.hmac_key(key)  # a key that is not hex is a configuration error (503), not a bad signature

        async def check_adyen(raw: bytes, request: Request) -> None:
            adyen.verify_adyen(raw, request.headers, key, now())

        return check_adyen
    if config is None or config.webhook_signature_key is None or not config.webhook_url:
        missing = "its signature key and URL (SQUARE_WEBHOOK_SIGNATURE_KEY and SQUARE_WEBHOOK_URL)"
        raise _not_configured(account, None if config is None else missing)
    signature_key = config.webhook_signature_key.get_secret_value()
    url = config.webhook_url

    async def check_square(raw: bytes, request: Request) -> None:
        square.verify_square(raw, request.headers, signature_key, now(), notification_url=url)

    return check_square


PARSERS: dict[str, Callable[[bytes], list[WebhookEvent]]] = {
    "stripe": stripe.parse_stripe,
    "paypal": paypal.parse_paypal,
    "adyen": adyen.parse_adyen,
    "square": square.parse_square,
}


async def _audit_rejection(app: Any, processor: str, error: WebhookError, size: int | None) -> None:
    """Only for deliveries whose signature verified: the processor sent them, so they are bounded by it."""
    entry = AuditEntry(
        actor=f"webhook:{processor}",
        action="webhook.rejected",
        target=None,
        outcome="rejected",
        error_code=error.code,
        detail={"reason": error.message, "status": error.status_code, "bytes": size},
    )
    try:
        async with app.db.write() as conn:
            await append(conn, entry)
    except SQLAlchemyError:
        # The delivery is refused either way; an unrecordable refusal must not turn into a 500.
        logger.exception("could not write the audit record of a refused %s webhook", processor)


def count(processor: str, verdict: str) -> None:
    metrics.WEBHOOK_DELIVERIES.labels(
        processor=metrics.closed_label(processor, METRIC_PROCESSORS), verdict=metrics.closed_label(verdict, VERDICTS)
    ).inc()


def source_of(request: Request) -> str:
    """The sender's address, for per-source limits (behind a proxy: the proxy's)."""
    return request.client.host if request.client is not None else "unknown"


def _refusal(processor: str, error: WebhookError) -> Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if error.status_code in (429, 503) else None
    return JSONResponse({"error": error.code, "message": error.message}, status_code=error.status_code, headers=headers)


class Limits:
    """What one app's webhook routes share: the verification gate, the log sampler, the cap on
    deliveries being received at once and the body deadline."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        body_deadline_seconds: float = BODY_DEADLINE_SECONDS,
        max_in_flight: int = MAX_IN_FLIGHT,
        gate: VerificationGate | None = None,
    ) -> None:
        self.gate = gate or VerificationGate(clock=clock)
        self.sampler = LogSampler(clock=clock)
        self.body_deadline_seconds = body_deadline_seconds
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def receive(self, request: Request, verify: Callable[[bytes], Awaitable[Any]]) -> tuple[bytes, Any]:
        """Read the body (capped, within the deadline) and run `verify` on it, holding one of the
        in-flight slots. Returns (body, what verify returned). Raises WebhookError."""
        if self.in_flight >= self.max_in_flight:
            raise WebhookBusy("too many deliveries are being received; deliver it again later")
        self.in_flight += 1
        try:
            with anyio.fail_after(self.body_deadline_seconds):
                raw = await read_body(request)
            return raw, await verify(raw)
        except TimeoutError as exc:
            raise WebhookTimeout(f"the body did not arrive within {self.body_deadline_seconds:g} s") from exc
        finally:
            self.in_flight -= 1

    async def refuse(
        self, app: Any, processor: str, account: str, error: WebhookError, raw: bytes | None, *, verified: bool
    ) -> Response:
        """Answer a refused delivery. Verified: counted and audited. Not verified: counted and sampled
        into the log, nothing durable."""
        verdict = _VERDICT_OF_CODE.get(error.code, "error")
        count(processor, verdict)
        if verified:
            await _audit_rejection(app, account, error, None if raw is None else len(raw))
        else:
            skipped = self.sampler.sample((processor, verdict))
            if skipped is not None:
                logger.warning(
                    "refused a %s webhook delivery (%s, %d): %s; %d similar refusal(s) not logged since the last line",
                    processor, verdict, error.status_code, error.message, skipped,
                )
        return _refusal(processor, error)


def _endpoint(app: Any, processor: str, limits: Limits, account: str | None = None) -> Callable[[Request], Awaitable[Response]]:
    """`/webhooks/{processor}` (its single account), or one named account when `account` is None: the
    route's `{account}` label then names `processor@label`."""
    parse = PARSERS[processor]

    async def receive(request: Request) -> Response:
        name = account or _account_name(processor, request)
        raw: bytes | None = None
        verified = False
        try:
            verify = _verifier(app, processor, name, limits.gate)
            # Over the raw bytes, before anything is parsed or stored.
            raw, _ = await limits.receive(request, lambda body: verify(body, request))
            verified = True
            events = [_for_account(event, name) for event in parse(raw)]
        except WebhookError as exc:
            return await limits.refuse(app, processor, name, exc, raw, verified=verified)
        return await apply_events(app, processor, events)

    return receive


def _account_name(processor: str, request: Request) -> str:
    return f"{processor}@{request.path_params['account']}"


def _for_account(event: WebhookEvent, account: str) -> WebhookEvent:
    """Events name the account they arrived for: that is where their payments and refunds are recorded."""
    return event if event.processor == account else replace(event, processor=account)


async def apply_events(app: Any, processor: str, events: list[WebhookEvent], acknowledgement: Response | None = None) -> Response:
    """Record verified events and answer the delivery (shared by every processor's endpoint)."""
    outcomes: list[str] = []
    try:
        for event in events:
            outcomes.append(await app.service.apply_event(event))
    except SQLAlchemyError:
        count(processor, "error")
        logger.exception("could not record a %s webhook; answering 500 so it is delivered again", processor)
        return JSONResponse({"error": "not_recorded", "message": "the event could not be recorded; retry"}, status_code=500)
    if "deferred" in outcomes:
        count(processor, "error")
        return JSONResponse(
            {"error": "deferred", "message": "an event waits for a refund in flight; deliver it again", "outcomes": outcomes},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    count(processor, "replay" if outcomes and all(outcome == "replay" for outcome in outcomes) else "accepted")
    if acknowledgement is not None:
        return acknowledgement
    if processor == "adyen":
        return PlainTextResponse(adyen.ACKNOWLEDGEMENT)
    return JSONResponse({"received": len(outcomes), "outcomes": outcomes})


def webhook_routes(app: Any, limits: Limits | None = None) -> list[Route]:
    """The webhook routes for `app` (refund_mcp.app.App), to mount beside /mcp: one per processor for its
    single account, one per processor for its named accounts, and one for UCS accounts.

    `limits` bounds unauthenticated work (tests pass one with their own clock or gate)."""
    from refund_mcp.webhooks.ucs import ucs_endpoint

    limits = limits or Limits()
    single = [
        Route(f"/webhooks/{processor}", _endpoint(app, processor, limits, processor), methods=["POST"], name=f"webhook_{processor}")
        for processor in PARSERS
    ]
    named = [
        Route(
            f"/webhooks/{processor}/{{account}}", _endpoint(app, processor, limits), methods=["POST"], name=f"webhook_{processor}_account"
        )
        for processor in PARSERS
    ]
    return [*single, *named, Route("/webhooks/ucs/{account}", ucs_endpoint(app, limits), methods=["POST"], name="webhook_ucs")]
