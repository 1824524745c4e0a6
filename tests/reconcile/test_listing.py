"""The adapters' `list_refunds`, against the fakes: filters and pagination on the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import NotSupported
from refund_mcp.processors import stripe as stripe_adapter
from refund_mcp.processors.adyen import AdyenProcessor
from refund_mcp.processors.paypal import PayPalProcessor
from refund_mcp.processors.square import SquareProcessor
from refund_mcp.processors.stripe import StripeProcessor
from tests.fakes import square, stripe
from tests.fakes.common import PaymentSeed, client_for

pytestmark = pytest.mark.anyio


async def test_stripe_lists_every_refund_since_a_date_page_by_page(monkeypatch):
    fake = stripe.StripeFake()
    old = fake.add_payment(PaymentSeed(amount_minor=10000, currency="USD", created=datetime.now(UTC) - timedelta(days=90)))
    new = fake.add_payment(PaymentSeed(amount_minor=10000, currency="USD"))
    fake.dashboard_refund(old["id"], 100)
    made = [fake.dashboard_refund(new["id"], 100 + n)["id"] for n in range(5)]
    monkeypatch.setattr(stripe_adapter, "LIST_PAGE_SIZE", 2)
    client, transport = client_for(fake)
    async with client:
        adapter = StripeProcessor(api_key=SecretStr(stripe.DEFAULT_API_KEY), api_base="http://stripe.fake", http=client)
        listed = [refund async for refund in adapter.list_refunds(datetime.now(UTC) - timedelta(days=1))]
    assert sorted(refund.processor_refund_id for refund in listed) == sorted(made)
    assert {refund.currency for refund in listed} == {"USD"}
    pages = transport.to("/v1/refunds")
    assert len(pages) == 3
    assert "starting_after" not in pages[0].request.url.params and pages[2].request.url.params["starting_after"]
    assert all(page.request.url.params["limit"] == "2" for page in pages)


async def test_square_lists_every_refund_since_a_date_following_the_cursor():
    fake = square.SquareFake()
    fake.list_page_size = 2
    payment = fake.add_payment(PaymentSeed(amount_minor=10000, currency="USD"))
    made = [fake.dashboard_refund(payment["id"], 100 + n)["id"] for n in range(5)]
    client, transport = client_for(fake)
    async with client:
        adapter = SquareProcessor(access_token=SecretStr(square.DEFAULT_ACCESS_TOKEN), api_base="http://square.fake", http=client)
        listed = [refund async for refund in adapter.list_refunds(datetime.now(UTC) - timedelta(hours=1))]
        later = [refund async for refund in adapter.list_refunds(datetime.now(UTC) + timedelta(hours=1))]
    assert [refund.processor_refund_id for refund in listed] == made  # oldest first
    assert later == []
    pages = [exchange for exchange in transport.to("/v2/refunds") if exchange.request.method == "GET"]
    assert len(pages) == 4
    assert pages[0].request.url.params["begin_time"].endswith("Z") and "cursor" in pages[1].request.url.params


@pytest.mark.parametrize(
    "build",
    [
        lambda: PayPalProcessor(client_id="id", client_secret=SecretStr("secret")),
        lambda: AdyenProcessor(api_key=SecretStr("key"), merchant_account="M"),
    ],
    ids=["paypal", "adyen"],
)
async def test_processors_that_cannot_list_refunds_say_so(build):
    adapter = build()
    with pytest.raises(NotSupported, match="cannot list refunds"):
        async for _refund in adapter.list_refunds(datetime.now(UTC)):
            pass
    await adapter.aclose()
