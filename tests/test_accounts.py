"""Several accounts per processor side by side: two Stripe accounts (one a Connect account) and two Adyen
merchant accounts, each against its own fake, through the MCP tools and the per-account webhook routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select
from starlette.applications import Starlette

from mcp import Client
from refund_mcp.app import App
from refund_mcp.store import tables
from refund_mcp.webhooks.events import PaymentEvent
from refund_mcp.webhooks.routes import webhook_routes
from tests.conftest import make_app, sqlite_url
from tests.fakes import adyen, stripe
from tests.fakes.common import FakeProcessor, PaymentSeed
from tests.test_processors_through_mcp import HostRouter
from tests.webhooks import signing

pytestmark = pytest.mark.anyio

POLICY = Path(__file__).parent / "support" / "accounts_policy.yaml"
KEYS = {"stripe@eu": "sk_test_fake_eu_account_1111", "stripe@us": "sk_test_fake_us_account_2222"}
ADYEN_KEYS = {"adyen@nl": "AQE_fake_adyen_nl_key_3333", "adyen@us": "AQE_fake_adyen_us_key_4444"}
MERCHANTS = {"adyen@nl": "ShopNL", "adyen@us": "ShopUS"}
EU_WEBHOOK_SECRET = "whsec_fake_eu_account_5555"
SAME_CHARGE = "ch_3SameIdInBothAccounts00"


@dataclass
class World:
    app: App
    client: Client
    fakes: dict[str, FakeProcessor]
    router: HostRouter
    hooks: httpx2.AsyncClient

    async def tool(self, name: str, **arguments):
        return await self.client.call_tool(name, arguments)

    def requests(self, account: str, method: str = "POST") -> list[httpx2.Request]:
        return [ex.request for ex in self.router.transports[f"{account.replace('@', '-')}.fake"].exchanges if ex.request.method == method]


def write_processors_file(tmp_path: Path) -> Path:
    path = tmp_path / "processors.yaml"
    path.write_text(
        "accounts:\n"
        "  stripe@eu: {processor: stripe, api_key_env: STRIPE_EU_KEY, webhook_secret_env: STRIPE_EU_WHSEC, api_base: 'http://stripe-eu.fake'}\n"
        "  stripe@us: {processor: stripe, api_key_file: us.key, stripe_account: acct_123, api_base: 'http://stripe-us.fake'}\n"
        "  adyen@nl: {processor: adyen, api_key_env: ADYEN_NL_KEY, merchant_account: ShopNL, api_base: 'http://adyen-nl.fake/v71'}\n"
        "  adyen@us: {processor: adyen, api_key_env: ADYEN_US_KEY, merchant_account: ShopUS, api_base: 'http://adyen-us.fake/v71'}\n"
    )
    (tmp_path / "us.key").write_text(KEYS["stripe@us"] + "\n")
    return path


@pytest.fixture
async def world(tmp_path) -> AsyncIterator[World]:
    fakes: dict[str, FakeProcessor] = {
        "stripe-eu": stripe.StripeFake(api_key=KEYS["stripe@eu"]),
        "stripe-us": stripe.StripeFake(api_key=KEYS["stripe@us"]),
        "adyen-nl": adyen.AdyenFake(api_key=ADYEN_KEYS["adyen@nl"], merchant_account="ShopNL"),
        "adyen-us": adyen.AdyenFake(api_key=ADYEN_KEYS["adyen@us"], merchant_account="ShopUS"),
    }
    env = {
        "REFUND_MCP_SANDBOX": "0",
        "REFUND_MCP_PROCESSORS": str(write_processors_file(tmp_path)),
        "STRIPE_EU_KEY": KEYS["stripe@eu"],
        "STRIPE_EU_WHSEC": EU_WEBHOOK_SECRET,
        "ADYEN_NL_KEY": ADYEN_KEYS["adyen@nl"],
        "ADYEN_US_KEY": ADYEN_KEYS["adyen@us"],
    }
    router = HostRouter(fakes)
    async with httpx2.AsyncClient(transport=router, timeout=httpx2.Timeout(5.0, read=0.5)) as http:
        async with make_app(sqlite_url(tmp_path), env=env, http=http, policy=POLICY) as app, Client(app.server) as client:
            hooks_app = Starlette(routes=webhook_routes(app))
            async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=hooks_app), base_url="http://refund-mcp") as hooks:
                yield World(app, client, fakes, router, hooks)


def seed_stripe(world: World, account: str, amount: int, charge: str = SAME_CHARGE) -> None:
    world.fakes[account.replace("@", "-")].add_payment(PaymentSeed(id=charge, amount_minor=amount, currency="USD"))


async def test_two_stripe_accounts_side_by_side_never_mix(world):
    seed_stripe(world, "stripe@eu", 10000)
    seed_stripe(world, "stripe@us", 4000)
    ambiguous = await world.tool("lookup_transaction", transaction_id=SAME_CHARGE)
    assert ambiguous.is_error and "[validation_error]" in ambiguous.content[0].text
    assert f"stripe@eu:{SAME_CHARGE}" in ambiguous.content[0].text and f"stripe@us:{SAME_CHARGE}" in ambiguous.content[0].text
    also = await world.tool("create_refund", transaction_id=f"stripe:{SAME_CHARGE}", reason="service_issue", amount_minor=100)
    assert also.is_error and "[validation_error]" in also.content[0].text
    assert world.requests("stripe@eu") == [] and world.requests("stripe@us") == []

    eu = (await world.tool("lookup_transaction", transaction_id=f"stripe@eu:{SAME_CHARGE}")).structured_content
    us = (await world.tool("lookup_transaction", transaction_id=SAME_CHARGE, processor="stripe@us")).structured_content
    assert (eu["processor"], eu["amount_minor"], eu["transaction_id"]) == ("stripe@eu", 10000, f"stripe@eu:{SAME_CHARGE}")
    assert (us["processor"], us["amount_minor"]) == ("stripe@us", 4000)

    eu_refund = (await world.tool("create_refund", transaction_id=f"stripe@eu:{SAME_CHARGE}", reason="service_issue", amount_minor=2500, metadata={"ticket": "EU-1"})).structured_content
    us_refund = (await world.tool("create_refund", transaction_id=f"stripe@us:{SAME_CHARGE}", reason="service_issue", amount_minor=1000)).structured_content
    assert (eu_refund["processor"], eu_refund["status"]) == ("stripe@eu", "succeeded")
    assert (us_refund["processor"], us_refund["status"]) == ("stripe@us", "succeeded")
    assert world.fakes["stripe-eu"].state()["refund_count"] == 1 and world.fakes["stripe-us"].state()["refund_count"] == 1
    eu_sent = world.requests("stripe@eu")[0]
    assert "Stripe-Account" not in eu_sent.headers and b"metadata%5Bticket%5D=EU-1" in eu_sent.content
    assert all(request.headers["Stripe-Account"] == "acct_123" for request in world.requests("stripe@us", "GET") + world.requests("stripe@us"))

    # The policy names accounts: stripe@us refunds above USD 15 are denied, stripe@eu ones are not.
    denied = await world.tool("create_refund", transaction_id=f"stripe@us:{SAME_CHARGE}", reason="service_issue", amount_minor=2000)
    assert denied.is_error and "[policy_denied]" in denied.content[0].text and "limited to USD 15" in denied.content[0].text
    listed = (await world.tool("list_refunds", processor="stripe@eu")).structured_content["refunds"]
    assert [r["refund_id"] for r in listed] == [eu_refund["refund_id"]] and listed[0]["metadata"] == {"ticket": "EU-1"}
    both = (await world.tool("list_refunds", processor="stripe")).structured_content["refunds"]
    assert {r["refund_id"] for r in both} == {eu_refund["refund_id"], us_refund["refund_id"]}
    async with world.app.db.read() as conn:
        bodies = (await conn.execute(select(tables.audit_log.c.body).where(tables.audit_log.c.target == eu_refund["refund_id"]))).scalars().all()
    assert any(f"stripe@eu:{SAME_CHARGE}" in body for body in bodies)


async def test_an_unconfigured_account_is_refused_naming_the_configured_ones(world):
    result = await world.tool("lookup_transaction", transaction_id="stripe@fr:ch_1")
    assert result.is_error and "[validation_error]" in result.content[0].text and "stripe@eu" in result.content[0].text
    bad = await world.tool("lookup_transaction", transaction_id="ch_1", processor="Stripe EU")
    assert bad.is_error and "[validation_error]" in bad.content[0].text


async def test_two_adyen_merchant_accounts_each_refund_under_their_own(world):
    for account, psp in (("adyen@nl", "NLPSP0000000001"), ("adyen@us", "USPSP0000000001")):
        world.fakes[account.replace("@", "-")].add_payment(PaymentSeed(id=psp, amount_minor=8000, currency="USD"))
        await world.app.service.apply_event(
            PaymentEvent(processor=account, event_id=f"auth-{psp}", transaction_id=psp, amount_minor=8000, currency="USD",
                         captured_minor=8000, status="authorised", occurred_at=datetime.now(UTC) - timedelta(days=1))
        )
    nl = (await world.tool("create_refund", transaction_id="NLPSP0000000001", reason="service_issue", amount_minor=1500)).structured_content
    us = (await world.tool("create_refund", transaction_id="adyen@us:USPSP0000000001", reason="service_issue", amount_minor=700)).structured_content
    assert (nl["processor"], us["processor"]) == ("adyen@nl", "adyen@us")
    nl_sent, us_sent = world.requests("adyen@nl")[0], world.requests("adyen@us")[0]
    assert b'"merchantAccount":"ShopNL"' in nl_sent.content.replace(b" ", b"") and nl_sent.headers["x-api-key"] == ADYEN_KEYS["adyen@nl"]
    assert b'"merchantAccount":"ShopUS"' in us_sent.content.replace(b" ", b"") and us_sent.headers["x-api-key"] == ADYEN_KEYS["adyen@us"]


async def test_webhooks_are_verified_per_account(world):
    seed_stripe(world, "stripe@eu", 10000)
    refund = (await world.tool("create_refund", transaction_id=f"stripe@eu:{SAME_CHARGE}", reason="service_issue", amount_minor=500)).structured_content
    stripe_refund = {**world.fakes["stripe-eu"].state()["refunds"][0], "status": "failed"}
    now = int(time.time())
    body = signing.dumps(signing.stripe_event("evt_eu_1", "refund.updated", stripe_refund, now))
    wrong = await world.hooks.post("/webhooks/stripe/eu", content=body, headers={"Stripe-Signature": signing.stripe_signature(body, "whsec_other_0000000", now)})
    assert wrong.status_code == 401
    unconfigured = await world.hooks.post("/webhooks/stripe/us", content=body, headers={"Stripe-Signature": signing.stripe_signature(body, EU_WEBHOOK_SECRET, now)})
    assert unconfigured.status_code == 503  # stripe@us has no webhook secret
    missing = await world.hooks.post("/webhooks/stripe/fr", content=body, headers={"Stripe-Signature": signing.stripe_signature(body, EU_WEBHOOK_SECRET, now)})
    assert missing.status_code == 404
    signed = await world.hooks.post("/webhooks/stripe/eu", content=body, headers={"Stripe-Signature": signing.stripe_signature(body, EU_WEBHOOK_SECRET, now)})
    assert signed.status_code == 200, signed.text
    status = (await world.tool("get_refund_status", refund_id=refund["refund_id"], refresh=False)).structured_content
    assert status["status"] == "failed" and status["processor"] == "stripe@eu"
