"""The HTTP boundary of the processor adapters: one client recipe and one error classification.

Every adapter sends its requests through `send()`, the only place where transport failures
and generic HTTP answers become errors of the domain tree. The classification decides what
happens to money, so it is deliberately conservative: anything that may have reached the
processor is OUTCOME_UNKNOWN (keep the reservation, retry with the same idempotency key).

    what happened                                   error                  delivery
    ConnectError, ConnectTimeout, PoolTimeout,      ProcessorUnavailable   NOT_SENT
      ProxyError, UnsupportedProtocol, InvalidURL
    ReadTimeout, WriteTimeout, ReadError,           ProcessorUnavailable   OUTCOME_UNKNOWN
      WriteError, RemoteProtocolError, any other
      transport or decoding error
    HTTP 5xx                                        ProcessorUnavailable   OUTCOME_UNKNOWN (answered)
    HTTP 429                                        RateLimited            NOT_SENT (retry_after)
    HTTP 401, 403                                   ProcessorAuthFailed    DECLINED
    any other status                                returned to the adapter, which maps the
                                                    processor's own error body

`answered` is True on the errors built here from a complete HTTP answer (status and body read: a
5xx, 429, 401/403, an unreadable 2xx) and False when the exchange broke off (timeouts, resets). A
processor such as Stripe stores a complete 5xx under the idempotency key and replays it to every
retry, so only after one is a new key of any use (once a search says the refund does not exist).
An adapter's "still in progress" answers (Stripe 409 idempotency_key_in_use, PayPal 409, Adyen 704
transient) stay False on purpose: the first request may still complete.

Messages never contain credentials: they are built from the processor name, the status code
and the exception *type*, never from request headers or from an auth failure's body (Stripe,
for one, echoes part of the API key there).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx2
from pydantic import BaseModel, ValidationError

from refund_mcp.domain.errors import (
    Delivery,
    ProcessorAuthFailed,
    ProcessorCallError,
    ProcessorError,
    ProcessorUnavailable,
    RateLimited,
)

logger = logging.getLogger(__name__)

# Connect fails fast (an unreachable processor is NOT_SENT and the refund is queued at once);
# read is generous because refund calls legitimately take seconds at some processors, and a
# read timeout is the expensive OUTCOME_UNKNOWN case.
DEFAULT_TIMEOUT = httpx2.Timeout(connect=5.0, read=20.0, write=10.0, pool=5.0)
DEFAULT_LIMITS = httpx2.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0)
USER_AGENT = "refund-mcp/0.1"

M = TypeVar("M", bound=BaseModel)
RequestIdOf = Callable[[httpx2.Response], "str | None"]

# Raised before a single byte left this process: retrying cannot duplicate anything.
_NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx2.ConnectError,
    httpx2.ConnectTimeout,
    httpx2.PoolTimeout,
    httpx2.ProxyError,
    httpx2.UnsupportedProtocol,
    httpx2.InvalidURL,
)


def build_client(
    *,
    timeout: httpx2.Timeout = DEFAULT_TIMEOUT,
    limits: httpx2.Limits = DEFAULT_LIMITS,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """The AsyncClient an adapter owns when none is injected. Redirects are never followed:
    a processor API that redirects a POST is misconfigured, and following it could resend money."""
    return httpx2.AsyncClient(
        timeout=timeout,
        limits=limits,
        transport=transport,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )


@contextlib.asynccontextmanager
async def translate_transport_errors(processor: str) -> AsyncIterator[None]:
    """Turn httpx2 exceptions raised inside the block into ProcessorUnavailable with a delivery."""
    try:
        yield
    except _NOT_SENT_ERRORS as exc:
        raise ProcessorUnavailable(
            f"could not connect to {processor} ({type(exc).__name__}); the request was not sent and can be retried",
            processor=processor,
            delivery=Delivery.NOT_SENT,
        ) from exc
    except httpx2.TimeoutException as exc:
        raise ProcessorUnavailable(
            f"{processor} did not answer in time ({type(exc).__name__}); it may have acted on the request, "
            "so retry only with the same idempotency key",
            processor=processor,
            delivery=Delivery.OUTCOME_UNKNOWN,
        ) from exc
    except (httpx2.TransportError, httpx2.DecodingError) as exc:
        raise ProcessorUnavailable(
            f"the connection to {processor} failed after the request was sent ({type(exc).__name__}); "
            "the outcome is unknown, so retry only with the same idempotency key",
            processor=processor,
            delivery=Delivery.OUTCOME_UNKNOWN,
        ) from exc


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 850 / asctime forms carry no zone; HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def common_status_error(
    response: httpx2.Response, *, processor: str, request_id: str | None, now: datetime | None = None
) -> ProcessorCallError | None:
    """The error for statuses every processor means the same way, or None for the adapter to map."""
    status = response.status_code
    if status >= 500:
        return ProcessorUnavailable(
            f"{processor} answered HTTP {status} (server error); it may have acted on the request, "
            "so retry only with the same idempotency key",
            processor=processor,
            delivery=Delivery.OUTCOME_UNKNOWN,
            http_status=status,
            request_id=request_id,
            answered=True,
        )
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=now)
        wait = f"retry after {retry_after:g} s" if retry_after is not None else "retry later"
        return RateLimited(
            f"{processor} is rate limiting requests (HTTP 429); nothing was done, {wait}",
            processor=processor,
            delivery=Delivery.NOT_SENT,
            http_status=status,
            request_id=request_id,
            retry_after=retry_after,
            answered=True,
        )
    if status in (401, 403):
        # The body is deliberately not quoted: some processors echo part of the credential in it.
        what = "rejected the credentials" if status == 401 else "refused this operation for these credentials"
        return ProcessorAuthFailed(
            f"{processor} {what} (HTTP {status}); check the configured API credentials and their permissions",
            processor=processor,
            delivery=Delivery.DECLINED,
            http_status=status,
            request_id=request_id,
            answered=True,
        )
    return None


async def send(
    http: httpx2.AsyncClient,
    request: httpx2.Request,
    *,
    processor: str,
    request_id_of: RequestIdOf | None = None,
    check_common_status: bool = True,
) -> httpx2.Response:
    """Send `request`, translating transport errors; with `check_common_status`, also raise for
    5xx / 429 / 401 / 403. Any other answer is returned for the adapter to interpret."""
    async with translate_transport_errors(processor):
        response = await http.send(request)
    if response.status_code >= 400:
        response = _without_echoed_credentials(request, response)
    logger.debug("%s %s %s -> %s", processor, request.method, request.url.path, response.status_code)
    if check_common_status:
        error = common_status_error(
            response, processor=processor, request_id=request_id_of(response) if request_id_of else None
        )
        if error is not None:
            raise error
    return response


def _request_credentials(request: httpx2.Request) -> list[str]:
    """The credential values this request carried: bearer tokens, Basic pairs, API keys."""
    found: list[str] = []
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value:
        found.append(value)
    elif scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user = password = ""
        found += [value, *(part for part in (user, password) if part)]
    if key := request.headers.get("X-API-Key"):
        found.append(key)
    return [item for item in found if len(item) >= 8]


def _without_echoed_credentials(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response:
    """An error body that echoes the credential we sent would carry it into messages, logs and the audit
    log; cut it out here, at the one boundary every processor answer crosses."""
    secrets = _request_credentials(request)
    body = response.content
    if not secrets or not any(secret.encode() in body for secret in secrets):
        return response
    for secret in secrets:
        body = body.replace(secret.encode(), b"[redacted]")
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in (b"content-length", b"content-encoding")]
    return httpx2.Response(response.status_code, headers=headers, content=body, request=request, extensions=response.extensions)


def json_or_none(response: httpx2.Response) -> Any:
    """The decoded JSON body, or None when the body is empty or not JSON (a proxy's HTML page)."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def unreadable_answer(
    processor: str, response: httpx2.Response, *, mutating: bool, request_id: str | None
) -> ProcessorCallError:
    """A 2xx whose body we cannot understand. After a mutating call the processor did act,
    so the refund must stay reserved (OUTCOME_UNKNOWN) rather than be reported as failed."""
    message = f"{processor} answered HTTP {response.status_code} with a body refund-mcp could not read"
    if mutating:
        return ProcessorUnavailable(
            message + "; the request was probably acted on, retry only with the same idempotency key",
            processor=processor,
            delivery=Delivery.OUTCOME_UNKNOWN,
            http_status=response.status_code,
            request_id=request_id,
            answered=True,
        )
    return ProcessorError(
        message, processor=processor, http_status=response.status_code, request_id=request_id, answered=True
    )


def parse_answer(
    model: type[M], body: Any, *, processor: str, response: httpx2.Response, mutating: bool, request_id: str | None
) -> M:
    """Validate a 2xx body into its wire struct; an unreadable one raises `unreadable_answer`."""
    if body is None:
        raise unreadable_answer(processor, response, mutating=mutating, request_id=request_id)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise unreadable_answer(processor, response, mutating=mutating, request_id=request_id) from exc
