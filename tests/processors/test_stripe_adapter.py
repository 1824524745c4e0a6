"""StripeProcessor against the wire-faithful Stripe fake, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import httpx2
import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorAuthFailed,
    ProcessorCallError,
    ProcessorUnavailable,
    RateLimited,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import RefundReason, RefundStatus
from refund_mcp.processors.stripe import StripeProcessor
from tests.fakes.common import FakeTransport, PaymentSeed, client_for
from tests.fakes.stripe import StripeFake
from tests.processors.helpers import assert_error, refund_request

pytestmark = pytest.mark.anyio


@dataclass
class Setup:
    fake: StripeFake
    processor: StripeProcessor
    transport: FakeTransport
    http: httpx2.AsyncClient


@pytest.fixture
async def stripe() -> AsyncIterator[Setup]:
    fake = StripeFake()
    http, transport = client_for(fake, read_timeout=0.25)
    processor = StripeProcessor(api_key=SecretStr(fake.api_key), api_base="https://api.stripe.test", http=http)
    yield Setup(fake, processor, transport, http)
    fake.release_stalled()
    await processor.aclose()
    await http.aclose()


def seed(setup: Setup, amount: int = 5000, currency: str = "USD", **fields: object) -> str:
    return str(setup.fake.add_payment(PaymentSeed(amount_minor=amount, currency=currency, **fields))["id"])  # type: ignore[arg-type]


async def test_looking_up_a_charge_reports_amounts_customer_and_a_tz_aware_creation_time(stripe: Setup) -> None:
    charge_id = seed(stripe, 12_000, customer_email="ana@example.com", description="Order #1001", refunded_minor=2000)
    info = await stripe.processor.lookup_transaction(charge_id)
    assert (info.processor, info.transaction_id, info.currency) == ("stripe", charge_id, "USD")
    assert (info.amount_minor, info.captured_minor, info.refunded_minor) == (12_000, 12_000, 2000)
    assert info.status == "succeeded"
    assert info.customer_ref == "ana@example.com"
    assert info.description == "Order #1001"
    assert info.refundable is True
    assert info.created_at is not None and info.created_at.utcoffset() is not None


async def test_looking_up_a_payment_intent_expands_its_latest_charge_for_refunded_amounts(stripe: Setup) -> None:
    intent_id = seed(stripe, 3000, kind="payment_intent", customer_id="cus_42")
    await stripe.processor.create_refund(refund_request(intent_id, 1000))
    info = await stripe.processor.lookup_transaction(intent_id)
    charge_id = stripe.fake.payments[intent_id].charge_id
    assert (info.transaction_id, info.captured_minor, info.refunded_minor) == (charge_id, 3000, 1000)
    assert info.aliases == (intent_id,)
    assert info.customer_ref == "cus_42"
    request = stripe.transport.to("/v1/payment_intents/")[-1].request
    assert request.url.params.get_list("expand[]") == ["latest_charge"]


async def test_a_payment_intent_and_its_charge_are_one_payment_whichever_name_is_asked(stripe: Setup) -> None:
    intent_id = seed(stripe, 3000, kind="payment_intent")
    charge_id = stripe.fake.payments[intent_id].charge_id
    by_intent = await stripe.processor.lookup_transaction(intent_id)
    by_charge = await stripe.processor.lookup_transaction(charge_id)
    assert (by_intent.transaction_id, by_intent.aliases) == (charge_id, (intent_id,))
    assert (by_charge.transaction_id, by_charge.aliases) == (charge_id, (intent_id,))
    assert (by_intent.amount_minor, by_intent.refunded_minor) == (by_charge.amount_minor, by_charge.refunded_minor)


async def test_a_charge_without_a_payment_intent_has_no_aliases_and_a_py_id_is_canonical(stripe: Setup) -> None:
    charge_id = seed(stripe, 1000)
    payment_id = seed(stripe, 1000, id="py_3Mx0000000000000000000")
    assert (await stripe.processor.lookup_transaction(charge_id)).aliases == ()
    info = await stripe.processor.lookup_transaction(payment_id)
    assert (info.transaction_id, info.aliases) == (payment_id, ())


async def test_a_refund_names_the_charge_even_when_it_was_made_through_the_payment_intent(stripe: Setup) -> None:
    intent_id = seed(stripe, 3000, kind="payment_intent")
    refund = await stripe.processor.create_refund(refund_request(intent_id, 500))
    assert refund.transaction_id == stripe.fake.payments[intent_id].charge_id


async def test_an_uncaptured_payment_is_reported_not_refundable(stripe: Setup) -> None:
    intent_id = seed(stripe, kind="payment_intent", status="requires_capture")
    info = await stripe.processor.lookup_transaction(intent_id)
    assert (info.refundable, info.captured_minor, info.status) == (False, 0, "requires_capture")


async def test_an_unknown_charge_is_transaction_not_found(stripe: Setup) -> None:
    with pytest.raises(TransactionNotFound, match="No such charge"):
        await stripe.processor.lookup_transaction("ch_doesnotexist")


async def test_a_full_refund_succeeds_and_a_second_one_is_already_refunded(stripe: Setup) -> None:
    charge_id = seed(stripe, 2500)
    refund = await stripe.processor.create_refund(refund_request(charge_id, 2500, reason=RefundReason.DUPLICATE))
    assert refund.status is RefundStatus.SUCCEEDED
    assert (refund.amount_minor, refund.currency, refund.transaction_id) == (2500, "USD", charge_id)
    assert refund.processor_refund_id.startswith("re_")
    assert refund.request_id is not None and refund.request_id.startswith("req_")
    assert (await stripe.processor.lookup_transaction(charge_id)).refunded_minor == 2500
    with pytest.raises(ProcessorCallError) as caught:
        await stripe.processor.create_refund(refund_request(charge_id, 100))
    assert_error(caught.value, "already_refunded", Delivery.DECLINED)
    assert caught.value.processor_code == "charge_already_refunded"


async def test_partial_refunds_add_up_and_more_than_what_is_left_is_refused(stripe: Setup) -> None:
    charge_id = seed(stripe, 5000)
    await stripe.processor.create_refund(refund_request(charge_id, 1000))
    await stripe.processor.create_refund(refund_request(charge_id, 1500))
    with pytest.raises(ProcessorCallError) as caught:
        await stripe.processor.create_refund(refund_request(charge_id, 2501))
    assert_error(caught.value, "amount_exceeds_refundable", Delivery.DECLINED)
    assert stripe.fake.state()["refund_count"] == 2


async def test_a_disputed_charge_is_not_refundable(stripe: Setup) -> None:
    charge_id = seed(stripe, disputed=True)
    with pytest.raises(ProcessorCallError) as caught:
        await stripe.processor.create_refund(refund_request(charge_id, 100))
    assert_error(caught.value, "not_refundable", Delivery.DECLINED)


async def test_a_pending_refund_is_read_again_after_stripe_settles_it(stripe: Setup) -> None:
    charge_id = seed(stripe, refund_outcome="pending")
    refund = await stripe.processor.create_refund(refund_request(charge_id, 700))
    assert refund.status is RefundStatus.PENDING
    stripe.fake.set_refund_status(refund.processor_refund_id, "succeeded")
    again = await stripe.processor.get_refund(refund.processor_refund_id)
    assert (again.status, again.processor_status) == (RefundStatus.SUCCEEDED, "succeeded")


async def test_a_failed_refund_carries_stripes_failure_reason(stripe: Setup) -> None:
    charge_id = seed(stripe, refund_outcome="pending")
    refund = await stripe.processor.create_refund(refund_request(charge_id, 700))
    stripe.fake.set_refund_status(refund.processor_refund_id, "failed", "expired_or_canceled_card")
    again = await stripe.processor.get_refund(refund.processor_refund_id)
    assert (again.status, again.failure_reason) == (RefundStatus.FAILED, "expired_or_canceled_card")


async def test_an_unknown_refund_is_refund_not_found(stripe: Setup) -> None:
    with pytest.raises(RefundNotFound):
        await stripe.processor.get_refund("re_nope")


async def test_a_refund_that_requires_action_can_be_cancelled(stripe: Setup) -> None:
    charge_id = seed(stripe, refund_outcome="requires_action")
    refund = await stripe.processor.create_refund(refund_request(charge_id, 900))
    assert refund.status is RefundStatus.REQUIRES_ACTION
    cancelled = await stripe.processor.cancel_refund(refund.processor_refund_id)
    assert (cancelled.status, cancelled.processor_status) == (RefundStatus.CANCELLED, "canceled")
    # The cancelled amount is released at Stripe.
    assert (await stripe.processor.lookup_transaction(charge_id)).refunded_minor == 0


async def test_cancelling_a_refund_that_does_not_require_action_is_not_supported(stripe: Setup) -> None:
    charge_id = seed(stripe)
    refund = await stripe.processor.create_refund(refund_request(charge_id, 900))
    with pytest.raises(NotSupported, match="requires action"):
        await stripe.processor.cancel_refund(refund.processor_refund_id)


async def test_a_wrong_api_key_is_processor_auth_failed_without_the_key_in_the_message() -> None:
    fake = StripeFake()
    http, _ = client_for(fake)
    secret = "sk_test_wrongwrongwrong9876"
    processor = StripeProcessor(api_key=SecretStr(secret), http=http)
    charge_id = str(fake.add_payment(PaymentSeed(amount_minor=100, currency="USD"))["id"])
    with pytest.raises(ProcessorAuthFailed) as caught:
        await processor.create_refund(refund_request(charge_id, 100))
    assert_error(caught.value, "processor_auth_failed", Delivery.DECLINED)
    for text in (str(caught.value), repr(caught.value), repr(processor), *map(str, caught.value.args)):
        assert secret not in text
        assert "9876" not in text
    assert fake.state()["refund_count"] == 0
    await http.aclose()


async def test_rate_limiting_is_rate_limited_with_the_retry_after_seconds(stripe: Setup) -> None:
    charge_id = seed(stripe)
    stripe.fake.faults.next_429 = 1
    stripe.fake.faults.retry_after = "3"
    with pytest.raises(RateLimited) as caught:
        await stripe.processor.create_refund(refund_request(charge_id, 100))
    assert caught.value.retry_after == 3.0
    assert caught.value.delivery is Delivery.NOT_SENT
    assert stripe.fake.state()["refund_count"] == 0


@pytest.mark.parametrize("fault", ["next_500", "next_503"])
async def test_a_server_error_is_processor_unavailable_with_an_unknown_outcome(stripe: Setup, fault: str) -> None:
    charge_id = seed(stripe)
    setattr(stripe.fake.faults, fault, 1)
    with pytest.raises(ProcessorUnavailable) as caught:
        await stripe.processor.create_refund(refund_request(charge_id, 100))
    assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN
    assert caught.value.request_id is not None  # Stripe's Request-Id travels with the error


async def test_a_timeout_after_stripe_accepted_is_outcome_unknown_and_the_retry_returns_the_one_refund(
    stripe: Setup,
) -> None:
    charge_id = seed(stripe, 4000)
    request = refund_request(charge_id, 1500)
    stripe.fake.faults.next_timeout_after_commit = 1
    with pytest.raises(ProcessorUnavailable) as caught:
        await stripe.processor.create_refund(request)
    assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN
    assert stripe.fake.state()["refund_count"] == 1  # Stripe did make it

    refund = await stripe.processor.create_refund(request)  # the service's retry: same idempotency key

    state = stripe.fake.state()
    assert state["refund_count"] == 1
    assert refund.processor_refund_id == state["refunds"][0]["id"]
    assert refund.amount_minor == 1500
    replay = stripe.transport.to("/v1/refunds")[-1].response
    assert replay is not None and replay.headers["Idempotent-Replayed"] == "true"


async def test_reusing_an_idempotency_key_for_another_amount_is_an_idempotency_conflict(stripe: Setup) -> None:
    charge_id = seed(stripe)
    first = refund_request(charge_id, 100)
    await stripe.processor.create_refund(first)
    with pytest.raises(ProcessorCallError) as caught:
        await stripe.processor.create_refund(refund_request(charge_id, 200, key=first.idempotency_key))
    assert_error(caught.value, "idempotency_conflict", Delivery.DECLINED)
    assert stripe.fake.state()["refund_count"] == 1


async def test_the_refund_is_sent_form_encoded_with_bearer_auth_and_the_idempotency_key(stripe: Setup) -> None:
    charge_id = seed(stripe)
    request = refund_request(charge_id, 1234, reason=RefundReason.FRAUDULENT, note="card reported stolen")
    await stripe.processor.create_refund(request)
    sent = stripe.transport.to("/v1/refunds")[-1].request
    assert sent.method == "POST"
    assert str(sent.url) == "https://api.stripe.test/v1/refunds"
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.headers["Authorization"] == f"Bearer {stripe.fake.api_key}"
    assert sent.headers["Idempotency-Key"] == request.idempotency_key
    form = dict(parse_qsl(sent.content.decode()))
    assert form == {
        "charge": charge_id,
        "amount": "1234",
        "reason": "fraudulent",
        "metadata[refund_mcp_id]": request.refund_id,
        "metadata[refund_mcp_reason]": "fraudulent",
        "metadata[note]": "card reported stolen",
    }


async def test_an_owned_client_is_closed_by_aclose_and_an_injected_one_is_not(stripe: Setup) -> None:
    owned = StripeProcessor(api_key=SecretStr("sk_test_x"))
    await owned.aclose()
    assert owned._http.is_closed
    await stripe.processor.aclose()
    assert not stripe.http.is_closed
