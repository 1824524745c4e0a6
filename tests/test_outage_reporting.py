"""A processor that cannot be reached is reported as an outage ([processor_unavailable]), never as a
payment that does not exist, for a payment refund-mcp has no record of yet."""

from __future__ import annotations

import httpx2
import pytest

from mcp import Client

pytestmark = pytest.mark.anyio

CHARGE = {
    "id": "ch_known", "object": "charge", "amount": 5000, "amount_captured": 5000, "amount_refunded": 0, "captured": True,
    "currency": "usd", "status": "succeeded", "created": 1_900_000_000, "billing_details": {"email": "ana@example.com"},
}


def stripe_that_can_go_down() -> tuple[httpx2.MockTransport, dict[str, bool]]:
    state = {"down": False}

    def handle(request: httpx2.Request) -> httpx2.Response:
        if state["down"]:
            raise httpx2.ConnectError("connection refused", request=request)
        if request.method == "GET" and request.url.path == "/v1/charges/ch_known":
            return httpx2.Response(200, json=CHARGE)
        return httpx2.Response(404, json={"error": {"type": "invalid_request_error", "code": "resource_missing"}})

    return httpx2.MockTransport(handle), state


async def test_an_unreachable_processor_is_an_outage_not_a_missing_payment(app_factory):
    transport, state = stripe_that_can_go_down()
    async with httpx2.AsyncClient(transport=transport) as http:
        async with app_factory(env={"STRIPE_API_KEY": "sk_test_outage"}, http=http) as app, Client(app.server) as client:
            missing = await client.call_tool("lookup_transaction", {"transaction_id": "stripe:ch_nothere"})
            assert "[transaction_not_found]" in missing.content[0].text, "while up, absent is absent"
            await client.call_tool("lookup_transaction", {"transaction_id": "stripe:ch_known"})
            state["down"] = True
            calls = [
                ("lookup_transaction", {"transaction_id": "stripe:ch_unseen"}),
                ("check_refund_policy", {"transaction_id": "stripe:ch_unseen", "reason": "duplicate", "amount_minor": 100}),
                ("create_refund", {"transaction_id": "stripe:ch_unseen", "reason": "duplicate", "amount_minor": 100}),
            ]
            for name, arguments in calls:
                result = await client.call_tool(name, arguments)
                assert result.is_error
                text = result.content[0].text
                assert "[processor_unavailable]" in text and "not found" not in text, (name, text)
            known = await client.call_tool("lookup_transaction", {"transaction_id": "stripe:ch_known"})
            assert not known.is_error and known.structured_content["source"] == "records"
