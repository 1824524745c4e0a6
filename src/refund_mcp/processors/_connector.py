"""The adapter framework: what every HTTP processor adapter shares, written once, so that an adapter
is its processor's pure mappings (request building, answer parsing, status and error tables) plus a
capability declaration, one module per processor.

    concern                                   lives in                    the adapter supplies
    transport, timeouts, redirects            _http.build_client / send   nothing
    every failure -> not sent / outcome       _http.send,                 its refusal table for the
      unknown / declined (+ answered)           common_status_error,        4xx it answers itself
                                                Connection.call             (`refusal`)
    secrets scrubbing                         _http.send (error bodies),  credentials only through
                                                Credentials                 `Credentials`
    request-id capture                        Connection.call             `request_id_of(response)`
    credentials, refresh on a 401             Connection.call             `Credentials` (static
                                                                            headers, or PayPal's token)
    answers -> ours, never 0 for money        reading_answer              pure mappings raising
                                                                            IncompleteAnswer
    amounts                                   _amounts.AmountScale        its currency table
    idempotency keys                          checked_key, derived_key    its key limit
    refund search by our id                   searching, the_one_found    how to list a payment's refunds

Extension points, for a new processor or per-account settings: a `Dialect` is what a processor
is (request id, refusal table, fixed headers); a `Connection(dialect, api_base=…, credentials=…,
headers=…)` is one account of it, so per-account settings (a `Stripe-Account` header, another
merchant account passed to the adapter's request builder) are constructor arguments and never
module state; `Credentials` is the seam for any auth scheme. A processor reached otherwise than over HTTP
(gRPC) implements `base.Processor` directly and reuses `ErrorAnswer`, `reading_answer`, the
search helpers and `AmountScale`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

import httpx2
from pydantic import BaseModel, ConfigDict

from refund_mcp.domain.errors import (
    Delivery,
    ProcessorCallError,
    ProcessorError,
    ProcessorUnavailable,
    RefundError,
)
from refund_mcp.domain.models import Capabilities, ProcessorRefund, ProcessorRefundRequest, RefundReason, RefundStatus
from refund_mcp.processors import _http
from refund_mcp.processors._amounts import AmountScale, IncompleteAnswer
from refund_mcp.processors.base import Processor

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class WireModel(BaseModel):
    """A processor's JSON object. Processors add fields over time; only what we read is declared."""

    model_config = ConfigDict(extra="ignore")

    def to_json(self) -> dict[str, Any]:
        """The body as the processor expects it: fields we leave unset are not sent at all."""
        return self.model_dump(exclude_none=True)


# --------------------------------------------------------------------------- refusals


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """One error answer of a processor, and the errors an adapter's refusal table builds from it.
    `said` is the processor's own words (": …" or ""), appended to every message."""

    processor: str
    status: int | None
    request_id: str | None
    said: str = ""

    def refused(self, what: str, *, code: str | None = None, processor_code: str | None = None) -> ProcessorError:
        """A decline: nothing was done. `what` completes "<processor> refused …"."""
        return ProcessorError(
            f"{self.processor} refused {what}{self.said}",
            processor=self.processor,
            code=code,
            http_status=self.status,
            request_id=self.request_id,
            processor_code=processor_code,
            answered=True,
        )

    def unmapped(self, processor_code: str | None) -> ProcessorError:
        """A refusal the adapter's table does not name."""
        return self.refused(f"the request (HTTP {self.status}, {processor_code or 'no code'})", processor_code=processor_code)

    def still_processing(self, what: str, *, processor_code: str | None) -> ProcessorUnavailable:
        """An earlier request with this key is still running: its outcome is not known yet, and it
        may still complete, so this is not `answered` (no new key may be used after it)."""
        return ProcessorUnavailable(
            f"{self.processor} is still processing {what}; retry later with the same idempotency key",
            processor=self.processor,
            delivery=Delivery.OUTCOME_UNKNOWN,
            http_status=self.status,
            request_id=self.request_id,
            processor_code=processor_code,
        )


ACCEPT_JSON: Mapping[str, str] = {"Accept": "application/json"}

# The adapter's error table: (status, body, *, flow, request_id, **refusal_context) -> the error.
Refusal = Callable[..., RefundError]
RequestIdOf = Callable[[httpx2.Response], "str | None"]


def request_id_header(name: str) -> RequestIdOf:
    """A processor that names each request in a response header (Stripe `Request-Id`)."""
    return lambda response: response.headers.get(name)


# --------------------------------------------------------------------------- credentials and calls


class Credentials(Protocol):
    """How an adapter authenticates. Credentials travel only in the headers built here, which is
    what lets `_http.send` cut them out of any error body that echoes them."""

    async def headers(self) -> dict[str, str]: ...

    def rejected(self, headers: Mapping[str, str]) -> bool:
        """The processor answered 401 to `headers`: True when fresh credentials are worth one retry."""
        ...


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """Headers built from a secret at each call (an API key, a bearer token); never refreshed."""

    build: Callable[[], dict[str, str]]

    async def headers(self) -> dict[str, str]:
        return self.build()

    def rejected(self, headers: Mapping[str, str]) -> bool:
        return False

    def __repr__(self) -> str:  # the built headers are credentials
        return "StaticCredentials(…)"


@dataclass(frozen=True, slots=True)
class Dialect:
    """What a processor is, whatever the account: what it can do, how it writes amounts, where it
    puts its request id, how it refuses (its error table), and the headers every request carries."""

    processor: str
    capabilities: Capabilities
    amounts: AmountScale
    request_id_of: RequestIdOf
    refusal: Refusal
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # More of the answer the refusal table reads, as keyword arguments (Adyen: `transient-error`).
    refusal_context: Callable[[httpx2.Response], dict[str, Any]] | None = None


class Connection:
    """One processor account's HTTP endpoint: base URL, credentials, per-account headers (e.g.
    `Stripe-Account`) and the client. It owns the client unless one is injected (tests, a pool)."""

    def __init__(
        self,
        dialect: Dialect,
        *,
        api_base: str,
        http: httpx2.AsyncClient | None,
        credentials: Credentials,
        headers: Mapping[str, str] | None = None,
        owns_http: bool = False,
    ) -> None:
        """`owns_http`: close the given client on `aclose` (an adapter that built it for its credentials)."""
        self.processor = dialect.processor
        self.base = api_base.rstrip("/")
        self._owns_http = http is None or owns_http
        self.http = http if http is not None else _http.build_client()
        self._credentials = credentials
        self.dialect = dialect
        self._headers = {**dialect.headers, **(headers or {})}

    async def call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        flow: str,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        form: Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[M, str | None]:
        """Send one request and read its answer into `model`; returns it with the request id.
        Raises ProcessorCallError (classified by `_http`) or the adapter's refusal for a 4xx."""
        extra = dict(headers or {})
        if form is not None:
            content = urlencode(list(form)).encode()
            extra["Content-Type"] = "application/x-www-form-urlencoded"
        elif content is not None:
            extra.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            auth = await self._credentials.headers()
            request = self.http.build_request(
                method, self.base + path, params=params, json=json, content=content, headers={**self._headers, **auth, **extra}
            )
            response = await _http.send(self.http, request, processor=self.processor, check_common_status=False)
            # A 401 was not acted on, so one retry with fresh credentials is safe, also for a create
            # (it carries the same idempotency key).
            if not (response.status_code == 401 and attempt == 1 and self._credentials.rejected(auth)):
                break
        request_id = self.dialect.request_id_of(response)
        if (error := _http.common_status_error(response, processor=self.processor, request_id=request_id)) is not None:
            raise error
        body = _http.json_or_none(response)
        if not response.is_success:
            context = self.dialect.refusal_context(response) if self.dialect.refusal_context else {}
            raise self.dialect.refusal(response.status_code, body, flow=flow, request_id=request_id, **context)
        parsed = _http.parse_answer(
            model, body, processor=self.processor, response=response, mutating=method == "POST", request_id=request_id
        )
        return parsed, request_id

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()


class HttpProcessor(Processor):
    """A processor adapter over a `Connection`; the adapter adds its mappings. Its name, capabilities
    and amounts are its Dialect's."""

    amounts: AmountScale

    def __init__(self, connection: Connection) -> None:
        self._api = connection
        self._http = connection.http
        self._base = connection.base
        self.name = connection.dialect.processor
        self.capabilities = connection.dialect.capabilities
        self.amounts = connection.dialect.amounts

    def check_amount(self, amount_minor: int, currency: str) -> None:
        self.amounts.to_wire(amount_minor, currency)

    async def aclose(self) -> None:
        await self._api.aclose()


# --------------------------------------------------------------------------- answers


@contextlib.contextmanager
def reading_answer(processor: str, *, mutating: bool, request_id: str | None = None) -> Iterator[None]:
    """Map a processor's answer to ours inside this block: an answer that lacks a money field (or
    carries an amount refund-mcp cannot hold) is an error, never 0. After a create the processor
    probably acted, so the outcome is unknown and the refund stays reserved."""
    try:
        yield
    except IncompleteAnswer as exc:
        if mutating:
            raise ProcessorUnavailable(
                f"{processor} answered, but its answer is incomplete ({exc}); the request was probably acted on, "
                "retry only with the same idempotency key",
                processor=processor,
                delivery=Delivery.OUTCOME_UNKNOWN,
                request_id=request_id,
                answered=True,
            ) from exc
        raise ProcessorError(
            f"{processor}'s answer is incomplete ({exc}); refund-mcp never takes a missing amount as 0",
            processor=processor,
            request_id=request_id,
            answered=True,
        ) from exc


def refund_answer(
    processor: str,
    mapping: Callable[..., ProcessorRefund],
    wire: Any,
    *,
    request_id: str | None,
    mutating: bool = False,
) -> ProcessorRefund:
    """`mapping(wire, request_id=…)` (an adapter's `refund_from_wire`) under `reading_answer`."""
    with reading_answer(processor, mutating=mutating, request_id=request_id):
        return mapping(wire, request_id=request_id)


def statuses(**words: Iterable[str]) -> dict[str, RefundStatus]:
    """A processor's refund status table, written as our status -> its words (upper- or lower-case as
    it writes them): `statuses(succeeded=["COMPLETED"], failed=["FAILED", "REJECTED"])`."""
    return {word: RefundStatus(ours) for ours, theirs in words.items() for word in theirs}


def processor_refund(
    table: Mapping[str, RefundStatus],
    word: str | None,
    *,
    refund_id: str,
    amount_minor: int,
    currency: str,
    request_id: str | None,
    upper: bool = True,
    **details: Any,
) -> ProcessorRefund:
    """A refund as the processor reports it: its own status word kept for the audit trail and mapped
    through its table. `details`: failure_reason, transaction_id, created_at."""
    return ProcessorRefund(
        processor_refund_id=refund_id,
        status=status_of(table, word, upper=upper),
        amount_minor=amount_minor,
        currency=currency,
        processor_status=word or "unknown",
        request_id=request_id,
        **details,
    )


def status_of(table: Mapping[str, RefundStatus], word: str | None, *, upper: bool = True) -> RefundStatus:
    """A processor's refund status to ours. An unknown or missing one is PENDING: it keeps the
    amount reserved until a known status arrives, which is the safe side for money."""
    key = (word or "").upper() if upper else (word or "").lower()
    return table.get(key, RefundStatus.PENDING)


# Our reasons in plain words, for processors whose reason is free text the payer or merchant reads.
REASON_WORDS: Mapping[RefundReason, str] = {
    RefundReason.DUPLICATE: "Duplicate charge",
    RefundReason.FRAUDULENT: "Fraudulent charge",
    RefundReason.REQUESTED_BY_CUSTOMER: "Requested by customer",
    RefundReason.PRODUCT_NOT_RECEIVED: "Product not received",
    RefundReason.PRODUCT_DEFECTIVE: "Product defective",
    RefundReason.SERVICE_ISSUE: "Service issue",
    RefundReason.GOODWILL: "Goodwill refund",
}


def reasons_as(table: Mapping[str, Iterable[RefundReason]]) -> dict[RefundReason, str]:
    """A processor's reason enum, written as {its word: our reasons}. Raises ValueError (at import)
    unless every reason of ours has exactly one word, so a new reason cannot go unmapped."""
    mapped: dict[RefundReason, str] = {}
    for word, reasons in table.items():
        for reason in reasons:
            if reason in mapped:
                raise ValueError(f"{reason} is mapped twice")
            mapped[reason] = word
    if missing := set(RefundReason) - set(mapped):
        raise ValueError(f"reasons without a processor word: {sorted(missing)}")
    return mapped


def with_note(text: str, note: str | None) -> str:
    """A reason's words and the operator's note on one line (free-text fields hold no newlines)."""
    if note and note.strip():
        return f"{text}: {' '.join(note.split())}"
    return text


def rfc3339(value: str | None) -> datetime | None:
    """A processor's timestamp ("2026-12-05T04:00:00Z"), or None when absent, unreadable or zoneless."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def segment(identifier: str) -> str:
    """An id as one URL path segment: a stray `/` or `?` cannot reach another endpoint."""
    return quote(identifier, safe="")


# --------------------------------------------------------------------------- idempotency keys


def checked_key(key: str, *, limit: int, processor: str) -> str:
    """The key, or ValueError when longer than the processor accepts: our keys are derived from our
    refund ids and always fit, so a longer one is a bug, never something to cut and send."""
    if len(key) > limit:
        raise ValueError(f"{processor} idempotency keys are at most {limit} characters")
    return key


def derived_key(purpose: str, identifier: str) -> str:
    """A key for a follow-up call (e.g. cancelling a refund), stable across retries of that call."""
    return f"refund-mcp-{purpose}-{identifier}"


# --------------------------------------------------------------------------- refund search


async def searching(call: Awaitable[T], *, processor: str) -> T:
    """One read of a refund search. Whatever stops it (an unknown payment, a refusal) means the
    search is incomplete, never that the refund does not exist: it becomes a ProcessorCallError."""
    try:
        return await call
    except ProcessorCallError:
        raise
    except RefundError as exc:
        raise ProcessorError(
            f"{processor} could not be searched for the refund ({exc}); nothing can be concluded from it",
            processor=processor,
        ) from exc


def truncated_search(processor: str, *, request_id: str | None) -> ProcessorError:
    return ProcessorError(
        f"{processor} said more refunds follow but sent an empty page; the search is incomplete",
        processor=processor,
        request_id=request_id,
    )


def the_one_found(
    found: Sequence[ProcessorRefund], request: ProcessorRefundRequest, *, processor: str
) -> ProcessorRefund | None:
    """The refund a complete search found for our refund id: None when there is none. Two are a
    double refund that already happened; that is for an operator, so it is an error, not a pick."""
    if len(found) > 1:
        ids = ", ".join(refund.processor_refund_id for refund in found)
        raise ProcessorError(
            f"{processor} holds {len(found)} refunds for {request.refund_id} ({ids}); "
            "an operator must reconcile them before anything else is sent",
            processor=processor,
        )
    return found[0] if found else None
