"""PayPalProcessor against the wire-faithful PayPal fake, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
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
from refund_mcp.domain.models import RefundStatus
from refund_mcp.processors.paypal import PayPalProcessor
from tests.fakes.common import FakeTransport, PaymentSeed, client_for
from tests.fakes.paypal import PayPalFake
from tests.processors.helpers import assert_error, refund_request

pytestmark = pytest.mark.anyio


@dataclass
class Setup:
    fake: PayPalFake
    processor: PayPalProcessor
    transport: FakeTransport


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def paypal() -> AsyncIterator[Setup]:
    fake = PayPalFake()
    http, transport = client_for(fake, read_timeout=0.25)
    processor = PayPalProcessor(
        client_id=fake.client_id,
        client_secret=SecretStr(fake.client_secret),
        api_base="https://api-m.paypal.test",
        http=http,
    )
    yield Setup(fake, processor, transport)
    fake.release_stalled()
    await processor.aclose()
    await http.aclose()


def seed(setup: Setup, amount: int = 5000, currency: str = "USD", **fields: object) -> str:
    return str(setup.fake.add_payment(PaymentSeed(amount_minor=amount, currency=currency, **fields))["id"])  # type: ignore[arg-type]


async def test_looking_up_a_capture_reports_its_amount_status_and_creation_time(paypal: Setup) -> None:
    capture_id = seed(paypal, 1999, "EUR", description="INV-7")
    info = await paypal.processor.lookup_transaction(capture_id)
    assert (info.processor, info.transaction_id, info.amount_minor, info.currency) == (
        "paypal",
        capture_id,
        1999,
        "EUR",
    )
    assert (info.captured_minor, info.refunded_minor, info.status, info.refundable) == (1999, 0, "completed", True)
    assert info.description == "INV-7"
    assert info.created_at is not None and info.created_at.utcoffset() is not None


async def test_a_fully_refunded_capture_reports_everything_refunded_and_refuses_another_refund(paypal: Setup) -> None:
    capture_id = seed(paypal, 2000)
    refund = await paypal.processor.create_refund(refund_request(capture_id, 2000))
    assert refund.status is RefundStatus.SUCCEEDED
    assert (refund.amount_minor, refund.currency, refund.transaction_id) == (2000, "USD", capture_id)
    assert refund.request_id is not None  # Paypal-Debug-Id
    info = await paypal.processor.lookup_transaction(capture_id)
    assert (info.status, info.refunded_minor) == ("refunded", 2000)
    with pytest.raises(ProcessorCallError) as caught:
        await paypal.processor.create_refund(refund_request(capture_id, 1))
    assert_error(caught.value, "already_refunded", Delivery.DECLINED)


async def test_partial_refunds_are_allowed_until_the_capture_is_exhausted(paypal: Setup) -> None:
    capture_id = seed(paypal, 3000)
    await paypal.processor.create_refund(refund_request(capture_id, 1000))
    assert (await paypal.processor.lookup_transaction(capture_id)).status == "partially_refunded"
    with pytest.raises(ProcessorCallError) as caught:
        await paypal.processor.create_refund(refund_request(capture_id, 2001))
    assert_error(caught.value, "amount_exceeds_refundable", Delivery.DECLINED)
    assert caught.value.processor_code == "REFUND_AMOUNT_EXCEEDED"


@pytest.mark.parametrize(
    ("fields", "currency", "code"),
    [
        ({}, "EUR", "currency_mismatch"),
        ({"disputed": True}, "USD", "not_refundable"),
        ({"status": "DECLINED"}, "USD", "not_refundable"),
    ],
)
async def test_paypal_refusals_map_to_our_codes(
    paypal: Setup, fields: dict[str, object], currency: str, code: str
) -> None:
    capture_id = seed(paypal, 1000, "USD", **fields)
    with pytest.raises(ProcessorCallError) as caught:
        await paypal.processor.create_refund(refund_request(capture_id, 100, currency))
    assert_error(caught.value, code, Delivery.DECLINED)


async def test_an_unknown_capture_and_an_unknown_refund_are_not_found(paypal: Setup) -> None:
    with pytest.raises(TransactionNotFound):
        await paypal.processor.lookup_transaction("NOSUCHCAPTURE")
    with pytest.raises(TransactionNotFound):
        await paypal.processor.create_refund(refund_request("NOSUCHCAPTURE", 100))
    with pytest.raises(RefundNotFound):
        await paypal.processor.get_refund("NOSUCHREFUND")


async def test_a_pending_refund_is_read_again_once_paypal_completes_it(paypal: Setup) -> None:
    capture_id = seed(paypal, refund_outcome="PENDING")
    refund = await paypal.processor.create_refund(refund_request(capture_id, 500))
    assert (refund.status, refund.failure_reason) == (RefundStatus.PENDING, "ECHECK")
    paypal.fake.set_refund_status(refund.processor_refund_id, "COMPLETED")
    again = await paypal.processor.get_refund(refund.processor_refund_id)
    assert (again.status, again.processor_status) == (RefundStatus.SUCCEEDED, "COMPLETED")


async def test_paypal_refunds_cannot_be_cancelled(paypal: Setup) -> None:
    with pytest.raises(NotSupported, match="paypal"):
        await paypal.processor.cancel_refund("ANY")


@pytest.mark.parametrize(
    ("currency", "amount_minor", "value"), [("USD", 1050, "10.50"), ("JPY", 1500, "1500"), ("KWD", 1250, "1.250")]
)
async def test_amounts_travel_as_decimal_strings_and_come_back_as_minor_units(
    paypal: Setup, currency: str, amount_minor: int, value: str
) -> None:
    capture_id = seed(paypal, amount_minor * 2, currency)
    refund = await paypal.processor.create_refund(refund_request(capture_id, amount_minor, currency))
    sent = paypal.transport.to("/v2/payments/captures/")[-1]
    assert sent.request_json()["amount"] == {"currency_code": currency, "value": value}
    assert (refund.amount_minor, refund.currency) == (amount_minor, currency)
    info = await paypal.processor.lookup_transaction(capture_id)
    assert info.amount_minor == amount_minor * 2


async def test_the_refund_request_carries_the_idempotency_key_and_asks_for_the_full_representation(
    paypal: Setup,
) -> None:
    capture_id = seed(paypal)
    request = refund_request(capture_id, 100)
    await paypal.processor.create_refund(request)
    sent = paypal.transport.to("/v2/payments/captures/")[-1].request
    assert sent.headers["PayPal-Request-Id"] == request.idempotency_key
    assert sent.headers["Prefer"] == "return=representation"
    assert sent.headers["Authorization"].startswith("Bearer A21AA")
    assert sent.headers["Content-Type"] == "application/json"


async def test_the_token_is_fetched_once_and_reused(paypal: Setup) -> None:
    capture_id = seed(paypal)
    await paypal.processor.lookup_transaction(capture_id)
    await paypal.processor.create_refund(refund_request(capture_id, 100))
    await paypal.processor.lookup_transaction(capture_id)
    assert paypal.fake.token_fetches == 1
    token_request = paypal.transport.to("/v1/oauth2/token")[0].request
    assert token_request.headers["Authorization"].startswith("Basic ")
    assert token_request.content == b"grant_type=client_credentials"


async def test_concurrent_callers_share_one_token_fetch(paypal: Setup) -> None:
    capture_id = seed(paypal)
    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(paypal.processor.lookup_transaction, capture_id)
    assert paypal.fake.token_fetches == 1


async def test_a_token_is_refreshed_shortly_before_paypal_would_expire_it(paypal: Setup) -> None:
    clock = FakeClock()
    paypal.processor._clock = clock
    paypal.fake.token_ttl = 600
    capture_id = seed(paypal)
    await paypal.processor.lookup_transaction(capture_id)
    clock.now += 600 - 121  # still inside the reuse window (expires_in minus the 120 s margin)
    await paypal.processor.lookup_transaction(capture_id)
    assert paypal.fake.token_fetches == 1
    clock.now += 2
    await paypal.processor.lookup_transaction(capture_id)
    assert paypal.fake.token_fetches == 2


async def test_a_token_rejected_early_is_refreshed_once_and_the_call_retried(paypal: Setup) -> None:
    capture_id = seed(paypal)
    await paypal.processor.lookup_transaction(capture_id)
    paypal.fake.expire_tokens()
    refund = await paypal.processor.create_refund(refund_request(capture_id, 100))
    assert refund.status is RefundStatus.SUCCEEDED
    assert paypal.fake.token_fetches == 2
    statuses = [e.response.status_code for e in paypal.transport.to("/v2/payments/captures/") if e.response]
    assert statuses == [200, 401, 201]
    assert paypal.fake.state()["refund_count"] == 1


async def test_when_even_a_fresh_token_is_rejected_the_call_fails_after_one_retry(paypal: Setup) -> None:
    capture_id = seed(paypal)
    paypal.fake.reject_all_tokens = True
    with pytest.raises(ProcessorAuthFailed) as caught:
        await paypal.processor.create_refund(refund_request(capture_id, 100))
    assert_error(caught.value, "processor_auth_failed", Delivery.DECLINED)
    assert len(paypal.transport.to("/v2/payments/captures/")) == 2
    assert paypal.fake.token_fetches == 2


async def test_wrong_client_credentials_are_processor_auth_failed_without_the_secret_anywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    fake = PayPalFake()
    http, _ = client_for(fake)
    secret = "not-the-secret-8731"
    processor = PayPalProcessor(client_id=fake.client_id, client_secret=SecretStr(secret), http=http)
    with pytest.raises(ProcessorAuthFailed) as caught:
        await processor.lookup_transaction("CAP")
    for text in (str(caught.value), repr(caught.value), repr(processor), caplog.text):
        assert secret not in text
    await http.aclose()


async def test_rate_limiting_and_server_errors_are_classified_and_never_hit_the_token_endpoint(paypal: Setup) -> None:
    capture_id = seed(paypal)
    paypal.fake.faults.next_429 = 1
    paypal.fake.faults.retry_after = "2"
    with pytest.raises(RateLimited) as limited:
        await paypal.processor.create_refund(refund_request(capture_id, 100))
    assert (limited.value.retry_after, limited.value.delivery) == (2.0, Delivery.NOT_SENT)
    paypal.fake.faults.next_503 = 1
    with pytest.raises(ProcessorUnavailable) as unavailable:
        await paypal.processor.create_refund(refund_request(capture_id, 100))
    assert unavailable.value.delivery is Delivery.OUTCOME_UNKNOWN
    assert unavailable.value.request_id is not None
    assert paypal.fake.state()["refund_count"] == 0


async def test_a_failing_token_endpoint_means_the_refund_was_not_sent() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503, json={"name": "SERVICE_UNAVAILABLE"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        processor = PayPalProcessor(client_id="id", client_secret=SecretStr("secret"), http=http)
        with pytest.raises(ProcessorUnavailable) as caught:
            await processor.create_refund(refund_request("CAP", 100))
    assert caught.value.delivery is Delivery.NOT_SENT


async def test_a_timeout_after_paypal_accepted_is_outcome_unknown_and_the_retry_returns_the_one_refund(
    paypal: Setup,
) -> None:
    capture_id = seed(paypal, 4000)
    request = refund_request(capture_id, 1500)
    paypal.fake.faults.next_timeout_after_commit = 1
    with pytest.raises(ProcessorUnavailable) as caught:
        await paypal.processor.create_refund(request)
    assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN

    refund = await paypal.processor.create_refund(request)

    state = paypal.fake.state()
    assert state["refund_count"] == 1
    assert refund.processor_refund_id == state["refunds"][0]["id"]


async def test_reusing_a_paypal_request_id_for_another_amount_is_an_idempotency_conflict(paypal: Setup) -> None:
    capture_id = seed(paypal)
    first = refund_request(capture_id, 100)
    await paypal.processor.create_refund(first)
    with pytest.raises(ProcessorCallError) as caught:
        await paypal.processor.create_refund(refund_request(capture_id, 250, key=first.idempotency_key))
    assert_error(caught.value, "idempotency_conflict", Delivery.DECLINED)
    assert paypal.fake.state()["refund_count"] == 1
