"""One payment, one identity: a payment intent and its charge share one balance, one refund count and
one duplicate window, whichever name a caller or a webhook uses. Stripe's adapter answers a lookup of
either name with the charge as the canonical id and the payment intent as an alias."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp import Client
from refund_mcp.domain.models import RefundStatus
from refund_mcp.service.refunds import RefundService
from refund_mcp.webhooks.events import RefundEvent
from tests.conftest import make_app, sqlite_url
from tests.fakes import stripe
from tests.fakes.common import PaymentSeed
from tests.test_processors_through_mcp import HostRouter

pytestmark = pytest.mark.anyio

INTENT = "pi_3MtwBwLkdIwHu7ix28a3tqPa"
POLICY = """\
version: 1
reasons: [service_issue, requested_by_customer]
limits:
  per_refund: {USD: 100000}
  max_refunds_per_transaction: 2
duplicate_window_seconds: 900
"""


@dataclasses.dataclass
class Stripe:
    client: Client
    service: RefundService
    fake: stripe.StripeFake
    charge: str


@asynccontextmanager
async def stripe_with_two_names(tmp_path: Path) -> AsyncIterator[Stripe]:
    fake = stripe.StripeFake()
    charge = fake.add_payment(PaymentSeed(id=INTENT, amount_minor=10000, currency="USD"))["charge"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = {"REFUND_MCP_SANDBOX": "0", "STRIPE_API_KEY": stripe.DEFAULT_API_KEY, "STRIPE_API_BASE": "http://stripe.fake"}
    async with httpx2.AsyncClient(transport=HostRouter({"stripe": fake})) as http:
        async with make_app(sqlite_url(tmp_path), policy=policy, env=env, http=http) as app, Client(app.server) as client:
            yield Stripe(client, app.service, fake, charge)


async def refund(client: Client, transaction_id: str, amount_minor: int) -> Any:
    return await client.call_tool(
        "create_refund", {"transaction_id": transaction_id, "reason": "service_issue", "amount_minor": amount_minor}
    )


async def test_refunds_on_a_payment_intent_and_its_charge_count_against_one_limit(tmp_path):
    async with stripe_with_two_names(tmp_path) as s:
        made = [
            await refund(s.client, f"stripe:{INTENT}", 1000),
            await refund(s.client, INTENT, 1100),
            await refund(s.client, f"stripe:{s.charge}", 1200),
            await refund(s.client, s.charge, 1300),
        ]
        assert [result.is_error for result in made] == [False, False, True, True]
        for refused in made[2:]:
            assert "[policy_denied]" in refused.content[0].text
            assert "max_refunds_per_transaction" in refused.content[0].text
        assert {result.structured_content["transaction_id"] for result in made[:2]} == {f"stripe:{s.charge}"}
        assert s.fake.state()["refund_count"] == 2


async def test_both_names_show_one_balance_one_refund_list_and_one_duplicate_window(tmp_path):
    async with stripe_with_two_names(tmp_path) as s:
        first = (await refund(s.client, f"stripe:{INTENT}", 2500)).structured_content
        again = await refund(s.client, f"stripe:{s.charge}", 2500)
        assert again.structured_content["duplicate_of"] == first["refund_id"]
        for name in (f"stripe:{INTENT}", f"stripe:{s.charge}", INTENT):
            payment = (await s.client.call_tool("lookup_transaction", {"transaction_id": name})).structured_content
            assert (payment["transaction_id"], payment["refundable_minor"]) == (f"stripe:{s.charge}", 7500)
            listed = (await s.client.call_tool("list_refunds", {"transaction_id": name})).structured_content
            assert [r["refund_id"] for r in listed["refunds"]] == [first["refund_id"]]
        over = await refund(s.client, f"stripe:{INTENT}", 7600)
        assert over.is_error and "[amount_exceeds_refundable]" in over.content[0].text
        assert s.fake.state()["refund_count"] == 1


async def test_a_webhook_naming_only_the_payment_intent_counts_against_the_charge(tmp_path):
    async with stripe_with_two_names(tmp_path) as s:
        await s.client.call_tool("lookup_transaction", {"transaction_id": f"stripe:{s.charge}"})  # names recorded
        outcome = await s.service.apply_event(
            RefundEvent(processor="stripe", event_id="evt_elsewhere_1", processor_refund_id="re_made_in_dashboard",
                        status=RefundStatus.SUCCEEDED, processor_status="succeeded", transaction_id=INTENT,
                        amount_minor=4000, currency="USD")
        )
        assert outcome == "external"
        payment = (await s.client.call_tool("lookup_transaction", {"transaction_id": f"stripe:{INTENT}"})).structured_content
        assert payment["refundable_minor"] == 6000
        assert [r["processor_refund_id"] for r in payment["refunds"]] == ["re_made_in_dashboard"]


async def _record_alias(app: Any, alias: str, canonical: str) -> None:
    from datetime import UTC, datetime

    from refund_mcp.store import tables

    async with app.db.write() as conn:
        await conn.execute(
            tables.transaction_aliases.insert().values(
                alias=alias, bare_id=alias.partition(":")[2], transaction_id=canonical, recorded_at=datetime.now(UTC)
            )
        )


async def test_a_recorded_alias_wins_even_when_the_processor_answers_for_the_name_itself(app_factory):
    """The alias check runs inside the write that records the answer; when the name turns out to be an
    alias of another payment, that payment is asked about and recorded instead, as if resolved first."""
    async with app_factory() as app:
        await _record_alias(app, "sandbox:demo_usd_large", "sandbox:demo_usd_order")
        await _record_alias(app, "sandbox:gone_name", "sandbox:demo_jpy_order")  # the processor does not know this name
        from refund_mcp.service.refunds import RefundInput
        from refund_mcp.store import queries

        made = await app.service.create_refund("agent-1", RefundInput(transaction_id="sandbox:demo_usd_large", reason="service_issue", amount_minor=100))
        assert made.transaction_id == "sandbox:demo_usd_order"
        looked = await app.service.lookup_transaction("agent-1", "sandbox:demo_usd_large")
        assert looked.transaction_id == "sandbox:demo_usd_order" and looked.refunded_minor + looked.reserved_minor == 100
        checked = await app.service.check_refund_policy("agent-1", "sandbox:demo_usd_large", "service_issue", 100)
        assert checked.transaction_id == "sandbox:demo_usd_order"
        assert (await app.service.lookup_transaction("agent-1", "sandbox:gone_name")).transaction_id == "sandbox:demo_jpy_order"
        async with app.db.read() as conn:
            assert await queries.get_transaction(conn, "sandbox:demo_usd_large") is None  # nothing recorded under the alias
