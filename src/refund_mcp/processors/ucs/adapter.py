"""The `ucs` backend: one connector of a Unified Connector Service (connector-service) server over gRPC.

Each configured account is one connector (`checkout`, `braintree`, …) with its own credentials; any
number of them may share one server. Calls:

    lookup_transaction   PaymentService.Get
    create_refund        PaymentService.Refund   (merchant_refund_id = rf_…, merchant_request_id = key)
    get_refund           RefundService.Get
    handle_event         EventService.HandleEvent (webhooks: UCS verifies and parses)

Metadata on every call: `x-connector` (the connector's name), `x-connector-config` (its credentials,
JSON, a secret), `x-merchant-id`, `x-tenant-id`, `x-request-id` (the per-request id) and, for a
refund, `x-connector-request-reference-id` (our refund id). Every call has a deadline; before a
mutating call the channel must connect within the connect timeout, which is what makes a refused
connection *not sent* rather than *outcome unknown* (see mapping.py for the whole table).

The blocking grpcio client runs in worker threads: unlike grpc.aio it is bound to no event loop, so
one adapter serves any loop (the CLI, the HTTP server, tests) and a deadline is enforced by gRPC
itself whatever happens to the awaiting task.

Credentials never leave this object except in call metadata: they are not in repr, messages
(server details are scrubbed of every credential value), logs or errors.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from typing import Any

import grpc
from anyio import to_thread
from pydantic import SecretStr

from refund_mcp.domain.errors import Delivery, NotSupported, ProcessorUnavailable, RefundError
from refund_mcp.domain.models import Capabilities, ProcessorRefund, ProcessorRefundRequest, TransactionInfo
from refund_mcp.processors.base import Processor
from refund_mcp.processors.ucs import mapping
from refund_mcp.processors.ucs.config import parse_target
from refund_mcp.processors.ucs.generated import payment_pb2 as pb
from refund_mcp.processors.ucs.generated import services_pb2_grpc as services

logger = logging.getLogger(__name__)

NAME = "ucs"
DEFAULT_DEADLINE_SECONDS = 20.0
DEFAULT_CONNECT_SECONDS = 5.0
HEALTH_CHECK = "/grpc.health.v1.Health/Check"  # health_check.proto; an empty request asks about the server


def _identity(value: bytes) -> bytes:
    return value


def secret_values(config: SecretStr) -> list[str]:
    """The connector config and every string inside it, for scrubbing server messages."""
    raw = config.get_secret_value()
    found = [raw]
    try:
        stack: list[Any] = [json.loads(raw)]
    except ValueError:
        stack = []
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return [value for value in found if len(value) >= 6]


class UcsProcessor(Processor):
    name = NAME
    capabilities = Capabilities(
        cancel=False,  # the API has no refund cancellation
        status_api=True,
        lookup_api=True,  # PaymentService.Get, where the connector supports it (else not_supported)
        partial_refunds=True,
        webhooks=True,
        idempotency_key_retention=None,  # per connector, not published by UCS
        # RefundService.Get needs the connector's refund id; a search by merchant_refund_id alone is not
        # supported by every connector, so it is not claimed.
        refund_search=False,
    )

    def __init__(
        self,
        *,
        account: str,
        url: str,
        connector: str,
        connector_config: SecretStr,
        merchant_id: str = "refund-mcp",
        tenant_id: str = "public",
        root_certificates: bytes | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        connect_seconds: float = DEFAULT_CONNECT_SECONDS,
        webhook_secret: SecretStr | None = None,
    ) -> None:
        self.account = account
        self.connector = connector
        self._target, self._tls = parse_target(url)
        self._config = connector_config
        self._merchant_id = merchant_id
        self._tenant_id = tenant_id
        self._root_certificates = root_certificates
        self._deadline = deadline_seconds
        self._connect = connect_seconds
        self.webhook_secret = webhook_secret
        self._secrets = secret_values(connector_config) + ([webhook_secret.get_secret_value()] if webhook_secret else [])
        self._channel: grpc.Channel | None = None
        # Payment amounts seen by lookups: PaymentService.Refund wants the original amount.
        self._payment_amounts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"UcsProcessor(account={self.account!r}, connector={self.connector!r}, target={self._target!r}, tls={self._tls})"

    # ------------------------------------------------------------------ plumbing

    def _channel_now(self) -> grpc.Channel:
        if self._channel is None:
            if self._tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
                self._channel = grpc.secure_channel(self._target, credentials)
            else:
                self._channel = grpc.insecure_channel(self._target)
        return self._channel

    def _metadata(self, request_id: str, reference: str | None = None) -> list[tuple[str, str]]:
        metadata = [
            ("x-connector", self.connector),
            ("x-connector-config", self._config.get_secret_value()),
            ("x-merchant-id", self._merchant_id),
            ("x-tenant-id", self._tenant_id),
            ("x-request-id", request_id),
        ]
        if reference is not None:
            metadata.append(("x-connector-request-reference-id", reference))
        return metadata

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    async def _connected(self) -> grpc.Channel:
        """The channel once a server answers on it. Raises NOT_SENT when none does within the connect timeout.

        The probe is the standard health check, waiting for the connection: any answer at all (even
        UNIMPLEMENTED) proves the server is reachable, and any failure happened before the real request
        was sent. Only a connection lost between the probe and the call is then *outcome unknown*."""
        channel = self._channel_now()
        probe = channel.unary_unary(HEALTH_CHECK, request_serializer=_identity, response_deserializer=_identity)
        try:
            await to_thread.run_sync(functools.partial(probe, b"", timeout=self._connect, wait_for_ready=True))
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise mapping.not_connected(self.account, self._target) from None
        return channel

    async def _call(self, method: Any, request: Any, *, flow: str, request_id: str, reference: str | None = None) -> Any:
        call = functools.partial(method, request, metadata=self._metadata(request_id, reference), timeout=self._deadline)
        try:
            return await to_thread.run_sync(call)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = self.scrub((exc.details() if isinstance(exc, grpc.Call) else None) or "")
            logger.debug("ucs %s %s -> %s", self.account, flow, code.name)
            raise mapping.rpc_error(self.account, code, details, flow=flow) from None

    def _scrubbed(self, error: Exception) -> Exception:
        if hasattr(error, "message"):
            error.message = self.scrub(error.message)  # type: ignore[attr-defined]
            error.args = (error.message,)  # type: ignore[attr-defined]
        return error

    # ------------------------------------------------------------------ the interface

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        channel = await self._connected()
        request = mapping.build_payment_get(transaction_id, request_id=f"refund-mcp-lookup-{transaction_id}"[:120])
        response = await self._call(
            services.PaymentServiceStub(channel).Get, request, flow="lookup", request_id=request.merchant_request_id
        )
        try:
            info = mapping.transaction_from_response(self.account, transaction_id, response)
        except Exception as exc:
            raise self._scrubbed(exc) from None
        self._payment_amounts[info.transaction_id] = info.amount_minor
        if len(self._payment_amounts) > 10_000:
            self._payment_amounts.clear()
        return info

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        payment_amount = self._payment_amounts.get(request.transaction_id)
        if payment_amount is None:  # a retry after a restart: ask again
            try:
                payment_amount = (await self.lookup_transaction(request.transaction_id)).amount_minor
            except RefundError as exc:
                # Nothing was sent. Never a decline: an earlier attempt may be at the connector, and a
                # failed lookup must not mark that refund failed and release its amount.
                raise ProcessorUnavailable(
                    f"could not read the payment's amount from {self.account}, which a UCS refund needs; "
                    "nothing was sent and the refund will be retried",
                    processor=self.account,
                    delivery=Delivery.NOT_SENT,
                ) from exc
        wire = mapping.build_refund_request(request, payment_amount_minor=payment_amount)
        channel = await self._connected()
        response = await self._call(
            services.PaymentServiceStub(channel).Refund,
            wire,
            flow="create",
            request_id=request.idempotency_key,
            reference=request.refund_id,
        )
        try:
            return mapping.refund_from_response(
                self.account, response, fallback_transaction_id=request.transaction_id, flow="create"
            )
        except Exception as exc:
            raise self._scrubbed(exc) from None

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        request = mapping.build_refund_get(processor_refund_id, request_id=f"refund-mcp-get-{processor_refund_id}"[:120])
        channel = await self._connected()
        response = await self._call(services.RefundServiceStub(channel).Get, request, flow="get", request_id=request.merchant_request_id)
        try:
            return mapping.refund_from_response(
                self.account, response, fallback_transaction_id=request.connector_transaction_id, flow="get"
            )
        except Exception as exc:
            raise self._scrubbed(exc) from None

    async def handle_event(
        self, body: bytes, headers: Iterable[tuple[str, str]], *, uri: str, query: str
    ) -> pb.EventServiceHandleResponse:
        """Forward a webhook delivery, untouched, for UCS to verify and parse. Raises RefundError."""
        if self.webhook_secret is None:
            raise NotSupported(f"{self.account} has no webhook secret configured")
        details = pb.RequestDetails(method=pb.HTTP_METHOD_POST, uri=uri, headers=dict(headers), body=body)
        if query:
            details.query_params = query
        request = pb.EventServiceHandleRequest(
            request_details=details,
            webhook_secrets=pb.WebhookSecrets(secret=self.webhook_secret.get_secret_value()),
        )
        channel = await self._connected()
        return await self._call(services.EventServiceStub(channel).HandleEvent, request, flow="event", request_id="refund-mcp-webhook")

    async def aclose(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

