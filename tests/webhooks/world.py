"""An App wired to all four fakes in process, with webhook secrets, its webhook routes on a bare
Starlette app, and helpers to deliver signed events (signed by tests/webhooks/signing.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import select
from starlette.applications import Starlette

from mcp import Client
from refund_mcp.app import App
from refund_mcp.store import tables
from refund_mcp.webhooks.limits import VerificationGate
from refund_mcp.webhooks.routes import Limits, webhook_routes
from tests.conftest import make_app, sqlite_url
from tests.fakes import adyen, paypal, square, stripe
from tests.fakes.common import FakeProcessor, PaymentSeed
from tests.test_processors_through_mcp import HostRouter
from tests.webhooks import signing

STRIPE_SECRET = "whsec_test_refund_mcp_0123456789abcdef"
PAYPAL_WEBHOOK_ID = "8PT597110X687430LKGECATA"
ADYEN_HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"  # Adyen's published test key
SQUARE_KEY = "square-signature-key-for-tests"
SQUARE_URL = "https://refunds.example.com/webhooks/square"

PAYMENT_IDS = {
    "stripe": "ch_3MmlLrLkdIwHu7ix0snN0B15",
    "paypal": "2GG279541U471931P",
    "adyen": "DZ4DPSHB4WD2WN82",
    "square": "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY",
}
ALL = list(PAYMENT_IDS)
Delivery = tuple[bytes, dict[str, str]]


def env() -> dict[str, str]:
    return {
        "REFUND_MCP_SANDBOX": "0",
        "STRIPE_API_KEY": stripe.DEFAULT_API_KEY,
        "STRIPE_API_BASE": "http://stripe.fake",
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "PAYPAL_CLIENT_ID": paypal.DEFAULT_CLIENT_ID,
        "PAYPAL_CLIENT_SECRET": paypal.DEFAULT_CLIENT_SECRET,
        "PAYPAL_API_BASE": "http://paypal.fake",
        "PAYPAL_WEBHOOK_ID": PAYPAL_WEBHOOK_ID,
        "ADYEN_API_KEY": adyen.DEFAULT_API_KEY,
        "ADYEN_MERCHANT_ACCOUNT": adyen.DEFAULT_MERCHANT_ACCOUNT,
        "ADYEN_API_BASE": "http://adyen.fake/v71",
        "ADYEN_HMAC_KEY": ADYEN_HMAC_KEY,
        "SQUARE_ACCESS_TOKEN": square.DEFAULT_ACCESS_TOKEN,
        "SQUARE_API_BASE": "http://square.fake",
        "SQUARE_WEBHOOK_SIGNATURE_KEY": SQUARE_KEY,
        "SQUARE_WEBHOOK_URL": SQUARE_URL,
    }


@dataclass
class World:
    app: App
    client: Client
    fakes: dict[str, FakeProcessor]
    router: HostRouter
    hooks: httpx2.AsyncClient  # the webhook routes, as a processor reaches them
    _events: int = 0

    # ------------------------------------------------------------------ set-up through the real entry points

    async def seed(self, name: str, *, amount_minor: int = 10000, **extra: Any) -> str:
        payment_id = PAYMENT_IDS[name]
        self.fakes[name].add_payment(
            PaymentSeed(id=payment_id, amount_minor=amount_minor, currency="USD", customer_email="ana@example.com", **extra)
        )
        if name == "adyen":
            # Adyen has no lookup API: its signed AUTHORISATION webhook is how refund-mcp learns of the payment.
            item = signing.adyen_item("AUTHORISATION", payment_id, value=amount_minor, merchant_reference="order-1")
            response = await self.deliver_adyen(item)
            assert response.status_code == 200, response.text
        return f"{name}:{payment_id}"

    async def tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.client.call_tool(name, arguments)
        assert not result.is_error, result.content[0].text
        return result.structured_content

    async def refund(self, transaction_id: str, amount_minor: int, reason: str = "service_issue") -> dict[str, Any]:
        return await self.tool(
            "create_refund", {"transaction_id": transaction_id, "reason": reason, "amount_minor": amount_minor}
        )

    async def status(self, refund_id: str) -> str:
        return (await self.tool("get_refund_status", {"refund_id": refund_id, "refresh": False}))["status"]

    async def refundable(self, transaction_id: str) -> int:
        return (await self.tool("lookup_transaction", {"transaction_id": transaction_id}))["refundable_minor"]

    # ------------------------------------------------------------------ deliveries

    def next_event_id(self, prefix: str) -> str:
        self._events += 1
        return f"{prefix}{self._events:06d}"

    async def post(self, name: str, body: bytes, headers: dict[str, str]) -> httpx2.Response:
        return await self.hooks.post(f"/webhooks/{name}", content=body, headers=headers)

    async def send(self, name: str, delivery: Delivery) -> httpx2.Response:
        return await self.post(name, *delivery)

    def stripe_delivery(
        self, kind: str, obj: dict[str, Any], *, event_id: str | None = None, timestamp: int | None = None,
        secret: str = STRIPE_SECRET,
    ) -> Delivery:
        now = int(time.time()) if timestamp is None else timestamp
        body = signing.dumps(signing.stripe_event(event_id or self.next_event_id("evt_"), kind, obj, now))
        return body, {"Stripe-Signature": signing.stripe_signature(body, secret, now)}

    def paypal_delivery(self, kind: str, refund: dict[str, Any], *, event_id: str | None = None) -> Delivery:
        body = signing.dumps(signing.paypal_event(event_id or self.next_event_id("WH-"), kind, refund))
        return body, signing.paypal_headers(body, PAYPAL_WEBHOOK_ID)

    def adyen_delivery(self, *items: dict[str, Any], key: str = ADYEN_HMAC_KEY) -> Delivery:
        body = signing.dumps(signing.adyen_notification(*(signing.adyen_signed(item, key) for item in items)))
        return body, {"Content-Type": "application/json"}

    def square_delivery(
        self, kind: str, refund: dict[str, Any], *, event_id: str | None = None, key: str = SQUARE_KEY, url: str = SQUARE_URL
    ) -> Delivery:
        body = signing.dumps(signing.square_event(event_id or self.next_event_id("sq-evt-"), kind, refund))
        return body, {"x-square-hmacsha256-signature": signing.square_signature(body, key, url)}

    async def deliver_adyen(self, *items: dict[str, Any]) -> httpx2.Response:
        return await self.send("adyen", self.adyen_delivery(*items))

    def fake_refund(self, name: str, processor_refund_id: str) -> dict[str, Any]:
        """The processor's own refund object, as its API would return it."""
        fake: Any = self.fakes[name]
        if name == "paypal":
            return fake.refund_object(fake.refunds[processor_refund_id], "https://api-m.paypal.com")
        return fake.refund_object(fake.refunds[processor_refund_id])

    # ------------------------------------------------------------------ what the store holds

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Refunds, transactions, recorded webhook events, and the audit log without refusal records."""
        async with self.app.db.read() as conn:
            out = {}
            for table in (tables.refunds, tables.transactions, tables.webhook_events):
                out[table.name] = [tuple(row) for row in (await conn.execute(select(table).order_by(*table.primary_key))).all()]
            audit = tables.audit_log
            rows = await conn.execute(
                select(audit.c.seq, audit.c.action, audit.c.target).where(audit.c.action != "webhook.rejected").order_by(audit.c.seq)
            )
            out["audit"] = [tuple(row) for row in rows.all()]
        return out

    async def audit_actions(self, target: str | None = None) -> list[tuple[str, str, str | None]]:
        audit = tables.audit_log
        query = select(audit.c.action, audit.c.outcome, audit.c.error_code).order_by(audit.c.seq)
        if target is not None:
            query = query.where(audit.c.target == target)
        async with self.app.db.read() as conn:
            return [tuple(row) for row in (await conn.execute(query)).all()]  # type: ignore[misc]

    async def refund_rows(self) -> list[Any]:
        async with self.app.db.read() as conn:
            return list((await conn.execute(select(tables.refunds).order_by(tables.refunds.c.created_at))).all())


def all_fakes() -> dict[str, FakeProcessor]:
    fakes: dict[str, FakeProcessor] = {
        "stripe": stripe.StripeFake(),
        "paypal": paypal.PayPalFake(),
        "adyen": adyen.AdyenFake(),
        "square": square.SquareFake(),
    }
    fakes["paypal"].add_webhook_cert(signing.PAYPAL_CERT_URL, (signing.PAYPAL_TEST_KEY_N, signing.PAYPAL_TEST_KEY_E))  # type: ignore[attr-defined]
    return fakes


@asynccontextmanager
async def open_world(tmp_path: Path, *, extra_env: dict[str, str] | None = None) -> AsyncIterator[World]:
    fakes = all_fakes()
    router = HostRouter(fakes)
    async with httpx2.AsyncClient(transport=router, timeout=httpx2.Timeout(5.0, read=0.5)) as http:
        async with make_app(sqlite_url(tmp_path), env={**env(), **(extra_env or {})}, http=http) as app:
            # These tests deliver many PayPal events from one address; the limits have tests of their own.
            unlimited = VerificationGate(per_source_burst=1e9, overall_burst=1e9, concurrent=1000)
            hooks_app = Starlette(routes=webhook_routes(app, Limits(gate=unlimited)))
            async with (
                Client(app.server) as client,
                httpx2.AsyncClient(transport=httpx2.ASGITransport(app=hooks_app), base_url="http://refund-mcp.test") as hooks,
            ):
                yield World(app, client, fakes, router, hooks)
