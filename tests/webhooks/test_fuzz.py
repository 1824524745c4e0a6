"""Fuzzing the webhook endpoints: malformed bodies and headers, signed or not, never answer 500
and never change a refund or a payment. ~100 examples per processor here; the `slow` variant
runs many more."""

from __future__ import annotations

import copy
import time
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhooks import signing
from tests.webhooks.world import ADYEN_HMAC_KEY, ALL, PAYPAL_WEBHOOK_ID, SQUARE_KEY, SQUARE_URL, STRIPE_SECRET, World

pytestmark = pytest.mark.anyio

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120)

TEMPLATES: dict[str, Any] = {
    "stripe": signing.stripe_event(
        "evt_fuzz",
        "refund.updated",
        {"id": "re_fuzz", "object": "refund", "amount": 100, "currency": "usd", "status": "succeeded",
         "charge": "ch_fuzz", "payment_intent": None, "created": 1, "metadata": {"refund_mcp_id": "rf_01J00000000000000000000000"}},
        1,
    ),
    "paypal": signing.paypal_event(
        "WH-FUZZ",
        "PAYMENT.CAPTURE.REFUNDED",
        {"id": "1JU08902781691411", "status": "COMPLETED", "amount": {"currency_code": "USD", "value": "1.00"},
         "custom_id": "rf_01J00000000000000000000000",
         "links": [{"href": "https://api.paypal.com/v2/payments/captures/7TK53561YB803214S", "rel": "up", "method": "GET"}]},
    ),
    "square": signing.square_event(
        "sq-fuzz",
        "refund.updated",
        {"id": "refund_fuzz", "status": "COMPLETED", "amount_money": {"amount": 100, "currency": "USD"}, "payment_id": "pay_fuzz"},
    ),
    "adyen": signing.adyen_notification(signing.adyen_item("REFUND", "PSPFUZZ000000001", original_reference="ORIGFUZZ00000001")),
}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def near_events(draw: st.DrawFn, name: str) -> Any:
    """A real event with a few fields replaced by arbitrary JSON, or dropped."""
    event = copy.deepcopy(TEMPLATES[name])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(event)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = event
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return event


def _dumps(value: Any) -> bytes:
    return signing.dumps(value)


@st.composite
def deliveries(draw: st.DrawFn, name: str) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["bytes", "json", "near_event"]))
    if kind == "bytes":
        payload: Any = None
        body = draw(st.binary(max_size=600))
    elif kind == "json":
        payload = draw(json_values)
        body = _dumps(payload)
    else:
        payload = draw(near_events(name))
        if name == "adyen" and draw(st.booleans()):
            items = payload.get("notificationItems") if isinstance(payload, dict) else None
            for entry in items if isinstance(items, list) else []:
                item = entry.get("NotificationRequestItem") if isinstance(entry, dict) else None
                if isinstance(item, dict):
                    try:
                        entry["NotificationRequestItem"] = signing.adyen_signed(item, ADYEN_HMAC_KEY)
                    except (AttributeError, TypeError, ValueError):
                        pass  # a field of the wrong type: leave it unsigned
        body = _dumps(payload)
    signed = draw(st.booleans())
    if name == "stripe":
        timestamp = int(time.time()) + draw(st.sampled_from([0, 0, -400, 400]))
        value = signing.stripe_signature(body, STRIPE_SECRET, timestamp) if signed else draw(header_text)
        headers = {"Stripe-Signature": value}
    elif name == "square":
        value = signing.square_signature(body, SQUARE_KEY, SQUARE_URL) if signed else draw(header_text)
        headers = {"x-square-hmacsha256-signature": value}
    elif name == "paypal":
        if signed:
            headers = signing.paypal_headers(body, PAYPAL_WEBHOOK_ID)
        else:
            headers = draw(st.dictionaries(st.sampled_from(list(signing.paypal_headers(b"", "X"))), header_text, max_size=5))
            if draw(st.booleans()):
                headers = {**signing.paypal_headers(body, PAYPAL_WEBHOOK_ID), **headers}
    else:
        headers = draw(st.dictionaries(header_text.filter(lambda k: k.strip() != "" and ":" not in k), header_text, max_size=2))
    return body, {key: value for key, value in headers.items() if key.strip()}


async def _baseline(world: World) -> dict[str, Any]:
    """A pending refund on a Stripe payment, taken once per test, and what the store holds then."""
    if not hasattr(world, "fuzz_baseline"):
        transaction_id = await world.seed("stripe", refund_outcome="pending")
        await world.refund(transaction_id, 2500)
        snapshot = await world.snapshot()
        world.fuzz_baseline = {"refunds": snapshot["refunds"], "transactions": snapshot["transactions"]}  # type: ignore[attr-defined]
    return world.fuzz_baseline  # type: ignore[attr-defined]


async def _deliver_and_check(world: World, name: str, delivery: tuple[bytes, dict[str, str]]) -> None:
    baseline = await _baseline(world)
    response = await world.post(name, *delivery)
    assert response.status_code in (200, 400, 401), (response.status_code, response.text)
    snapshot = await world.snapshot()
    assert {"refunds": snapshot["refunds"], "transactions": snapshot["transactions"]} == baseline


def _fuzz(world: World, name: str, budget: int) -> None:
    """Hypothesis drives examples from a worker thread; each delivery runs on the test's event loop
    (anyio.from_thread), so the world fixture lives in one loop for the whole search."""

    @settings(max_examples=budget, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(delivery=deliveries(name))
    def one_delivery(delivery: tuple[bytes, dict[str, str]]) -> None:
        anyio.from_thread.run(_deliver_and_check, world, name, delivery)

    one_delivery()


@pytest.mark.parametrize("name", ALL)
async def test_fuzzed_deliveries_never_answer_500_nor_change_refunds(world, name):
    await anyio.to_thread.run_sync(_fuzz, world, name, 100)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
async def test_many_fuzzed_deliveries_never_answer_500_nor_change_refunds(world, name):
    await anyio.to_thread.run_sync(_fuzz, world, name, 500)
