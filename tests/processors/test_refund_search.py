"""Finding a refund again by our refund id (`find_refund`) and each processor's key retention.

A create request must never be re-sent under a key the processor may have forgotten; the service
then searches first. These tests pin what each adapter declares and that a search is either
complete and authoritative (the refund, or None) or raises ProcessorCallError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import NotSupported, ProcessorCallError, ProcessorUnavailable
from refund_mcp.domain.models import RefundStatus
from refund_mcp.processors.adyen import AdyenProcessor
from refund_mcp.processors.paypal import PayPalProcessor
from refund_mcp.processors.sandbox import SandboxProcessor
from refund_mcp.processors.square import REASON_MAX, SquareProcessor
from refund_mcp.processors.stripe import StripeProcessor
from tests.fakes.common import FakeTransport, PaymentSeed, client_for
from tests.fakes.square import SquareFake
from tests.fakes.stripe import StripeFake
from tests.processors.helpers import refund_request

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------------- declarations


@pytest.mark.parametrize(
    ("processor", "retention", "searchable"),
    [
        (StripeProcessor(api_key=SecretStr("sk_test_x")), timedelta(hours=24), True),
        (PayPalProcessor(client_id="c", client_secret=SecretStr("s")), timedelta(days=45), False),
        (AdyenProcessor(api_key=SecretStr("k"), merchant_account="M"), timedelta(days=31), False),
        (SquareProcessor(access_token=SecretStr("t")), None, True),
        (SandboxProcessor(), None, True),
    ],
    ids=["stripe", "paypal", "adyen", "square", "sandbox"],
)
def test_each_processor_declares_its_documented_key_retention_and_whether_it_can_be_searched(
    processor: object, retention: timedelta | None, searchable: bool
) -> None:
    capabilities = processor.capabilities  # type: ignore[attr-defined]
    assert capabilities.idempotency_key_retention == retention
    assert capabilities.refund_search is searchable


@pytest.mark.parametrize(
    "processor",
    [
        PayPalProcessor(client_id="c", client_secret=SecretStr("s"), http=httpx2.AsyncClient()),
        AdyenProcessor(api_key=SecretStr("k"), merchant_account="M", http=httpx2.AsyncClient()),
    ],
    ids=["paypal", "adyen"],
)
async def test_processors_that_cannot_be_searched_say_so_without_calling_anything(processor: object) -> None:
    with pytest.raises(NotSupported):
        await processor.find_refund(refund_request("PAY1", 100))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- Stripe


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class StripeSetup:
    fake: StripeFake
    processor: StripeProcessor
    transport: FakeTransport
    clock: FakeClock


@pytest.fixture
async def stripe() -> AsyncIterator[StripeSetup]:
    clock = FakeClock()
    fake = StripeFake(clock=clock)
    http, transport = client_for(fake, read_timeout=0.25)
    processor = StripeProcessor(api_key=SecretStr(fake.api_key), api_base="https://api.stripe.test", http=http)
    yield StripeSetup(fake, processor, transport, clock)
    fake.release_stalled()
    await http.aclose()


def stripe_payment(setup: StripeSetup, amount: int = 50_000, **fields: object) -> str:
    return str(setup.fake.add_payment(PaymentSeed(amount_minor=amount, currency="USD", **fields))["id"])  # type: ignore[arg-type]


async def test_stripe_finds_our_refund_among_the_charges_refunds_by_its_metadata(stripe: StripeSetup) -> None:
    charge = stripe_payment(stripe)
    ours = refund_request(charge, 1000)
    made = await stripe.processor.create_refund(ours)
    stripe.fake.dashboard_refund(charge, 1000)  # same amount, not ours: never matched by amount
    other = await stripe.processor.create_refund(refund_request(charge, 700))

    found = await stripe.processor.find_refund(ours)

    assert found is not None
    assert (found.processor_refund_id, found.amount_minor, found.status) == (
        made.processor_refund_id,
        1000,
        RefundStatus.SUCCEEDED,
    )
    assert found.processor_refund_id != other.processor_refund_id
    listed = stripe.transport.to("/v1/refunds")[-1].request
    assert (listed.method, listed.url.params["charge"], listed.url.params["limit"]) == ("GET", charge, "100")


async def test_stripe_says_none_only_after_reading_every_page(stripe: StripeSetup) -> None:
    charge = stripe_payment(stripe, amount=1_000_000)
    ours = refund_request(charge, 500)
    made = await stripe.processor.create_refund(ours)  # the oldest: on the last page (newest first)
    for _ in range(150):
        stripe.fake.dashboard_refund(charge, 1)

    found = await stripe.processor.find_refund(ours)
    absent = await stripe.processor.find_refund(refund_request(charge, 500))

    assert found is not None and found.processor_refund_id == made.processor_refund_id
    assert absent is None
    pages = [e.request for e in stripe.transport.to("/v1/refunds") if e.request.method == "GET"]
    assert len(pages) == 4  # two pages per search
    assert "starting_after" not in pages[0].url.params
    assert pages[1].url.params["starting_after"].startswith("re_")


async def test_stripe_searches_a_payment_intents_refunds_by_payment_intent(stripe: StripeSetup) -> None:
    intent = stripe_payment(stripe, kind="payment_intent")
    ours = refund_request(intent, 1200)
    made = await stripe.processor.create_refund(ours)

    found = await stripe.processor.find_refund(ours)

    assert found is not None and found.processor_refund_id == made.processor_refund_id
    listed = stripe.transport.to("/v1/refunds")[-1].request
    assert listed.url.params["payment_intent"] == intent
    assert "charge" not in listed.url.params


async def test_stripe_two_refunds_for_one_refund_id_are_an_error_not_a_pick(stripe: StripeSetup) -> None:
    charge = stripe_payment(stripe)
    ours = refund_request(charge, 100)
    await stripe.processor.create_refund(ours)
    # The same refund id sent again under another key: a double refund that the search must expose.
    await stripe.processor.create_refund(replace(ours, idempotency_key=ours.refund_id + "-2"))
    with pytest.raises(ProcessorCallError, match="2 refunds"):
        await stripe.processor.find_refund(ours)


async def test_a_stripe_search_that_fails_raises_and_never_answers_none(stripe: StripeSetup) -> None:
    charge = stripe_payment(stripe)
    stripe.fake.faults.next_503 = 1
    with pytest.raises(ProcessorUnavailable):
        await stripe.processor.find_refund(refund_request(charge, 100))
    with pytest.raises(ProcessorCallError) as caught:
        await stripe.processor.find_refund(refund_request("ch_unknown", 100))
    assert "could not be searched" in str(caught.value)


async def test_a_truncated_stripe_page_is_an_incomplete_search() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"object": "list", "data": [], "has_more": True, "url": "/v1/refunds"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        processor = StripeProcessor(api_key=SecretStr("sk_test_x"), http=http)
        with pytest.raises(ProcessorCallError, match="incomplete"):
            await processor.find_refund(refund_request("ch_1", 100))


async def test_the_stripe_fake_forgets_a_key_24_hours_after_it_was_stored(stripe: StripeSetup) -> None:
    charge = stripe_payment(stripe)
    request = refund_request(charge, 300)
    first = await stripe.processor.create_refund(request)
    stripe.clock.now += timedelta(hours=23, minutes=59)
    assert (await stripe.processor.create_refund(request)).processor_refund_id == first.processor_refund_id
    stripe.clock.now += timedelta(minutes=1)

    resent = await stripe.processor.create_refund(request)  # the key is gone: a second refund

    assert resent.processor_refund_id != first.processor_refund_id
    assert stripe.fake.state()["refund_count"] == 2
    # Which is why a resend past the retention must be preceded by a search (that finds both here).
    with pytest.raises(ProcessorCallError, match="2 refunds"):
        await stripe.processor.find_refund(request)


async def test_a_complete_stripe_500_is_answered_stored_and_replayed_and_the_search_decides(
    stripe: StripeSetup,
) -> None:
    charge = stripe_payment(stripe)
    made = refund_request(charge, 400)
    stripe.fake.faults.next_500_after_commit = 1
    with pytest.raises(ProcessorUnavailable) as caught:
        await stripe.processor.create_refund(made)
    assert caught.value.answered is True
    with pytest.raises(ProcessorUnavailable):  # the stored 500 is replayed to the same key
        await stripe.processor.create_refund(made)
    replay = stripe.transport.to("/v1/refunds")[-1].response
    assert replay is not None and replay.headers["Idempotent-Replayed"] == "true"
    assert (await stripe.processor.find_refund(made)) is not None

    not_made = refund_request(charge, 500)
    stripe.fake.faults.next_500_stored = 1
    with pytest.raises(ProcessorUnavailable):
        await stripe.processor.create_refund(not_made)
    with pytest.raises(ProcessorUnavailable):
        await stripe.processor.create_refund(not_made)
    assert await stripe.processor.find_refund(not_made) is None
    assert stripe.fake.state()["refund_count"] == 1


async def test_a_timeout_is_not_an_answer(stripe: StripeSetup) -> None:
    charge = stripe_payment(stripe)
    stripe.fake.faults.next_timeout_after_commit = 1
    with pytest.raises(ProcessorUnavailable) as caught:
        await stripe.processor.create_refund(refund_request(charge, 100))
    assert caught.value.answered is False


# ---------------------------------------------------------------------------- Square


@dataclass
class SquareSetup:
    fake: SquareFake
    processor: SquareProcessor
    transport: FakeTransport


@pytest.fixture
async def square() -> AsyncIterator[SquareSetup]:
    fake = SquareFake()
    http, transport = client_for(fake)
    processor = SquareProcessor(access_token=SecretStr(fake.access_token), api_base="https://sq.test", http=http)
    yield SquareSetup(fake, processor, transport)
    await http.aclose()


async def test_square_finds_our_refund_by_the_id_in_its_reason_after_the_keys_are_forgotten(
    square: SquareSetup,
) -> None:
    payment = str(square.fake.add_payment(PaymentSeed(amount_minor=10_000, currency="USD"))["id"])
    ours = refund_request(payment, 1000, note="n" * 400)
    made = await square.processor.create_refund(ours)
    square.fake.dashboard_refund(payment, 1000)
    await square.processor.create_refund(refund_request(payment, 1000))
    square.fake.forget_idempotency_keys()

    found = await square.processor.find_refund(ours)
    absent = await square.processor.find_refund(refund_request(payment, 1000))

    assert found is not None and found.processor_refund_id == made.processor_refund_id
    assert absent is None
    reason = square.fake.refunds[made.processor_refund_id].reason
    assert reason is not None and len(reason) == REASON_MAX and reason.endswith(f"({ours.refund_id})")


async def test_a_square_search_that_fails_raises_and_never_answers_none(square: SquareSetup) -> None:
    payment = str(square.fake.add_payment(PaymentSeed(amount_minor=10_000, currency="USD"))["id"])
    await square.processor.create_refund(refund_request(payment, 100))
    square.fake.faults.next_500 = 1
    with pytest.raises(ProcessorUnavailable):
        await square.processor.find_refund(refund_request(payment, 100))
    with pytest.raises(ProcessorCallError, match="could not be searched"):
        await square.processor.find_refund(refund_request("NOSUCHPAYMENT", 100))


# ---------------------------------------------------------------------------- sandbox


async def test_the_sandbox_finds_what_it_holds_and_nothing_else() -> None:
    sandbox = SandboxProcessor()
    ours = refund_request("demo_usd_order", 1000)
    made = await sandbox.create_refund(ours)
    found = await sandbox.find_refund(ours)
    assert found is not None and found.processor_refund_id == made.processor_refund_id
    assert await sandbox.find_refund(refund_request("demo_usd_order", 1000)) is None
