"""Machinery shared by the wire-faithful processor fakes.

Each fake (`tests/fakes/stripe.py`, …) is a class holding its state, with a Starlette `.app`.
The same object works two ways:

- in process: `httpx2.AsyncClient(transport=FakeTransport(fake.app))`. `FakeTransport` wraps
  `httpx2.ASGITransport`, records every exchange (for contract tests) and honours the client's
  read timeout, which ASGITransport alone ignores;
- as a separate process: `python -m tests.fakes.serve stripe --port 12111` (state lives there).

Control API, identical on every fake (never subject to faults or auth):

    POST /_fake/faults                 JSON, e.g. {"next_503": 2, "next_429": 1, "retry_after": "3"}
    POST /_fake/payments               JSON: seed a payment (fields in `PaymentSeed`), returns its ids
    GET  /_fake/state                  refund_count, refunds, payments, requests (+ per-fake extras)
    POST /_fake/refunds/{id}/status    JSON {"status": <the processor's own word>, "failure_reason"?}
    POST /_fake/release                let requests stalled by `next_timeout_after_commit` finish

Faults (`fake.faults.<name> = N` in process, or over HTTP) are consumed one per API request, in
this order: next_500, next_503, next_429 (answered before anything executes, so nothing is
stored), then next_timeout_after_commit (the refund is created and its idempotent answer stored,
then the response never comes until released: the client sees a read timeout). Fakes may add
their own faults by subclassing `Faults` (Stripe's stored 5xx answers).

Time: `fake.clock` (a callable returning an aware datetime, real time by default) is the fake's
now; tests replace it to age idempotency keys without sleeping.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

Handler = Callable[[Request], Awaitable[Response]]
Clock = Callable[[], datetime]


def real_time() -> datetime:
    return datetime.now(UTC)


@dataclass
class Faults:
    next_500: int = 0
    next_503: int = 0
    next_429: int = 0
    retry_after: str = "1"  # Retry-After value sent with 429: delta-seconds or an HTTP-date
    next_timeout_after_commit: int = 0

    def update(self, values: Mapping[str, Any]) -> None:
        known = [f.name for f in fields(self)]
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(known)}")
            setattr(self, key, str(value) if key == "retry_after" else int(value))


@dataclass
class PaymentSeed:
    """A payment as a test describes it; each fake renders it in its own wire format."""

    amount_minor: int
    currency: str
    id: str | None = None
    status: str | None = None  # the processor's own payment status; None: captured / completed
    customer_email: str | None = None
    customer_id: str | None = None
    description: str | None = None
    refunded_minor: int = 0  # refunded before the fake knew it (outside refund-mcp)
    disputed: bool = False
    refund_outcome: str | None = None  # the processor's status for refunds of this payment
    kind: str | None = None  # Stripe: "charge" (default) or "payment_intent"
    created: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PaymentSeed:
        values = dict(data)
        if isinstance(values.get("created"), str):
            values["created"] = datetime.fromisoformat(values["created"])
        if isinstance(values.get("created"), int | float):
            values["created"] = datetime.fromtimestamp(values["created"], UTC)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown payment fields {sorted(unknown)}; known: {sorted(known)}")
        values["currency"] = str(values["currency"]).upper()
        return cls(**values)


@dataclass
class StoredAnswer:
    """The first answer to an idempotency key, replayed byte for byte."""

    fingerprint: str
    status_code: int
    body: bytes
    headers: dict[str, str]
    stored_at: datetime | None = None

    def replay(self, **extra_headers: str) -> Response:
        return Response(self.body, status_code=self.status_code, headers={**self.headers, **extra_headers})


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def random_id(prefix: str = "", length: int = 24, alphabet: str = string.ascii_letters + string.digits) -> str:
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


class FakeProcessor:
    """Base of the fakes: faults, stalls, request counting and the /_fake control routes."""

    name = "fake"

    def __init__(self, *, faults: Faults | None = None, clock: Clock = real_time) -> None:
        self.faults = faults if faults is not None else Faults()
        self.clock = clock
        self.request_count = 0
        self._stalls: list[anyio.Event] = []
        self.app = Starlette(routes=[*self._control_routes(), *self.api_routes()])

    # ------------------------------------------------------------------ for subclasses

    def api_routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def add_payment(self, seed: PaymentSeed) -> dict[str, Any]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_refund_status(
        self, refund_id: str, status: str, failure_reason: str | None = None
    ) -> dict[str, Any] | None:
        raise NotImplementedError

    def server_error(self, status_code: int) -> Response:
        raise NotImplementedError

    def rate_limited(self) -> Response:
        raise NotImplementedError

    def faults_apply_to(self, request: Request) -> bool:
        return True

    # ------------------------------------------------------------------ helpers

    def route(self, path: str, handler: Handler, methods: list[str]) -> Route:
        """An API route: counted, and subject to the fault toggles."""

        async def endpoint(request: Request) -> Response:
            self.request_count += 1
            if self.faults_apply_to(request):
                if self.faults.next_500 > 0:
                    self.faults.next_500 -= 1
                    return self.server_error(500)
                if self.faults.next_503 > 0:
                    self.faults.next_503 -= 1
                    return self.server_error(503)
                if self.faults.next_429 > 0:
                    self.faults.next_429 -= 1
                    return self.rate_limited()
            return await handler(request)

        return Route(path, endpoint, methods=methods)

    async def after_commit(self) -> None:
        """Called once the refund and its idempotent answer are stored: maybe never answer."""
        if self.faults.next_timeout_after_commit > 0:
            self.faults.next_timeout_after_commit -= 1
            event = anyio.Event()
            self._stalls.append(event)
            await event.wait()

    def release_stalled(self) -> int:
        stalled, self._stalls = self._stalls, []
        for event in stalled:
            event.set()
        return len(stalled)

    # ------------------------------------------------------------------ control API

    def _control_routes(self) -> list[Route]:
        async def set_faults(request: Request) -> Response:
            try:
                self.faults.update(await request.json())
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(asdict(self.faults))

        async def add_payment(request: Request) -> Response:
            try:
                seed = PaymentSeed.from_json(await request.json())
            except (ValueError, TypeError, KeyError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(self.add_payment(seed), status_code=201)

        async def get_state(request: Request) -> Response:
            return JSONResponse({**self.state(), "requests": self.request_count, "faults": asdict(self.faults)})

        async def set_status(request: Request) -> Response:
            data = await request.json()
            refund = self.set_refund_status(
                request.path_params["refund_id"], str(data["status"]), data.get("failure_reason")
            )
            if refund is None:
                return JSONResponse({"error": "no such refund"}, status_code=404)
            return JSONResponse(refund)

        async def release(request: Request) -> Response:
            return JSONResponse({"released": self.release_stalled()})

        return [
            Route("/_fake/faults", set_faults, methods=["POST"]),
            Route("/_fake/payments", add_payment, methods=["POST"]),
            Route("/_fake/state", get_state, methods=["GET"]),
            Route("/_fake/refunds/{refund_id:path}/status", set_status, methods=["POST"]),
            Route("/_fake/release", release, methods=["POST"]),
        ]


# ---------------------------------------------------------------------- in-process transport


@dataclass
class Exchange:
    """One request an adapter sent and the answer it got (None: it timed out)."""

    request: httpx2.Request
    response: httpx2.Response | None

    @property
    def path(self) -> str:
        return self.request.url.path

    def request_json(self) -> Any:
        return json.loads(self.request.content) if self.request.content else None

    def response_json(self) -> Any:
        if self.response is None or not self.response.content:
            return None
        return self.response.json()


class FakeTransport(httpx2.AsyncBaseTransport):
    """ASGITransport over a fake's app that records exchanges and enforces the read timeout.

    httpx2's ASGITransport runs the app inline and ignores timeouts; a real socket would raise
    ReadTimeout, so this does the same when the app has not answered within the client's read
    timeout (the fake stalls on an event that never fires, so no test depends on real time)."""

    def __init__(self, app: Any) -> None:
        self._inner = httpx2.ASGITransport(app=app)
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        read_timeout = (request.extensions.get("timeout") or {}).get("read")
        try:
            with anyio.fail_after(read_timeout) if read_timeout is not None else nullcontext():
                response = await self._inner.handle_async_request(request)
                await response.aread()
        except TimeoutError as exc:
            self.exchanges.append(Exchange(request, None))
            raise httpx2.ReadTimeout("the fake processor did not answer in time", request=request) from exc
        self.exchanges.append(Exchange(request, response))
        return response

    def to(self, path_prefix: str) -> list[Exchange]:
        return [exchange for exchange in self.exchanges if exchange.path.startswith(path_prefix)]


def client_for(fake: FakeProcessor, *, read_timeout: float = 10.0) -> tuple[httpx2.AsyncClient, FakeTransport]:
    """An AsyncClient wired to `fake` in process, and its recording transport."""
    transport = FakeTransport(fake.app)
    client = httpx2.AsyncClient(
        transport=transport, timeout=httpx2.Timeout(10.0, read=read_timeout), follow_redirects=False
    )
    return client, transport


def iso_z(moment: datetime, *, millis: bool = False) -> str:
    """RFC 3339 in UTC with a Z, as PayPal and Square write times."""
    moment = moment.astimezone(UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
