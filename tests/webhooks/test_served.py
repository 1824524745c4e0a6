"""A signed Stripe webhook delivered to a real `refund-mcp serve --transport http` process."""

from __future__ import annotations

import time

import httpx2
import pytest

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from tests.conftest import TEST_POLICY
from tests.fakes.stripe import DEFAULT_API_KEY
from tests.support.fake_process import fake_processor
from tests.support.servers import http_server
from tests.webhooks.signing import dumps, stripe_event, stripe_signature

pytestmark = pytest.mark.anyio

WEBHOOK_SECRET = "whsec_served_test_0123456789"


async def test_the_served_endpoint_applies_a_signed_event_and_refuses_a_forged_one(tmp_path):
    with fake_processor("stripe") as fake:
        fake.seed(id="ch_served", amount_minor=5000, currency="USD", refund_outcome="pending")
        env = {
            "REFUND_MCP_DB": f"sqlite+aiosqlite:///{tmp_path / 'served.sqlite3'}",
            "REFUND_MCP_POLICY": str(TEST_POLICY),
            "REFUND_MCP_SANDBOX": "0",
            "STRIPE_API_KEY": DEFAULT_API_KEY,
            "STRIPE_API_BASE": fake.base,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "REFUND_MCP_WORKER_INTERVAL_SECONDS": "3600",  # only the webhook may change the status here
        }
        with http_server(env, "--no-worker") as base:
            async with httpx2.AsyncClient(timeout=30) as http:
                async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
                    refund = (await client.call_tool(
                        "create_refund", {"transaction_id": "stripe:ch_served", "reason": "service_issue", "amount_minor": 1200}
                    )).structured_content
                    assert refund["status"] == "pending"
                    stripe_refund = fake.state()["refunds"][0]
                    event = stripe_event("evt_served_1", "refund.updated", {**stripe_refund, "status": "succeeded"}, int(time.time()))
                    body = dumps(event)
                    forged = await http.post(
                        f"{base}/webhooks/stripe", content=body,
                        headers={"Stripe-Signature": stripe_signature(body, "whsec_wrong_secret_000000", int(time.time())), "Content-Type": "application/json"},
                    )
                    assert forged.status_code == 401
                    still = (await client.call_tool("get_refund_status", {"refund_id": refund["refund_id"], "refresh": False})).structured_content
                    assert still["status"] == "pending"
                    signed = await http.post(
                        f"{base}/webhooks/stripe", content=body,
                        headers={"Stripe-Signature": stripe_signature(body, WEBHOOK_SECRET, int(time.time())), "Content-Type": "application/json"},
                    )
                    assert signed.status_code == 200, signed.text
                    done = (await client.call_tool("get_refund_status", {"refund_id": refund["refund_id"], "refresh": False})).structured_content
                    assert done["status"] == "succeeded"
                    replay = await http.post(
                        f"{base}/webhooks/stripe", content=body,
                        headers={"Stripe-Signature": stripe_signature(body, WEBHOOK_SECRET, int(time.time())), "Content-Type": "application/json"},
                    )
                    assert replay.status_code == 200
