"""Each processor's webhook, end to end: a refund made through the MCP tools against the fake, then
signed deliveries (tests/webhooks/signing.py) to POST /webhooks/{processor}."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from refund_mcp.store import tables
from refund_mcp.webhooks.routes import MAX_BODY_BYTES
from tests.webhooks import signing
from tests.webhooks.world import (
    ADYEN_HMAC_KEY,
    ALL,
    PAYMENT_IDS,
    PAYPAL_WEBHOOK_ID,
    SQUARE_KEY,
    SQUARE_URL,
    STRIPE_SECRET,
    Delivery,
    World,
    open_world,
)

pytestmark = pytest.mark.anyio

# The refund every test makes: 25.00 of a 100.00 payment.
AMOUNT = 2500


@dataclass(frozen=True)
class Driver:
    """How one processor's refunds are made pending and how it reports on them."""

    name: str
    pending_word: str | None  # the fake's refund outcome that keeps a new refund pending
    words: dict[str, str]  # our status -> the processor's word in its refund object
    tamper: tuple[bytes, bytes]  # a change to the signed body (the amount) that must break the signature
    drop_signature: Callable[[Delivery], Delivery]

    async def pending_refund(self, world: World) -> dict[str, Any]:
        extra = {"refund_outcome": self.pending_word} if self.pending_word else {}
        transaction_id = await world.seed(self.name, **extra)
        refund = await world.refund(transaction_id, AMOUNT)
        assert refund["status"] == "pending"
        return refund

    def delivery(self, world: World, refund: dict[str, Any], status: str, *, event_id: str | None = None) -> Delivery:
        """A signed event saying `refund` is now `status`."""
        if self.name == "adyen":
            item = signing.adyen_item(
                "REFUND", refund["processor_refund_id"], success=status == "succeeded", value=AMOUNT,
                original_reference=PAYMENT_IDS["adyen"], merchant_reference=refund["refund_id"],
            )
            return world.adyen_delivery(item)
        # The processor's state moves first, as it does before it sends the event.
        world.fakes[self.name].set_refund_status(refund["processor_refund_id"], self.words[status])
        obj = world.fake_refund(self.name, refund["processor_refund_id"])
        if self.name == "stripe":
            return world.stripe_delivery("refund.failed" if status == "failed" else "refund.updated", obj, event_id=event_id)
        if self.name == "paypal":
            return world.paypal_delivery("PAYMENT.CAPTURE.REFUNDED", obj, event_id=event_id)
        return world.square_delivery("refund.updated", obj, event_id=event_id)

    def external_delivery(self, world: World, amount: int) -> Delivery:
        """A refund made in the processor's dashboard, and the signed event announcing it."""
        fake: Any = world.fakes[self.name]
        payment_id = PAYMENT_IDS[self.name]
        if self.name == "stripe":
            return world.stripe_delivery("refund.created", fake.dashboard_refund(payment_id, amount, status="succeeded"))
        if self.name == "paypal":
            return world.paypal_delivery("PAYMENT.CAPTURE.REFUNDED", fake.dashboard_refund(payment_id, amount))
        if self.name == "square":
            return world.square_delivery("refund.created", fake.dashboard_refund(payment_id, amount))
        psp = "DASH" + secrets.token_hex(6).upper()
        return world.adyen_delivery(signing.adyen_item("REFUND", psp, value=amount, original_reference=payment_id))


def _without_header(name: str) -> Callable[[Delivery], Delivery]:
    def drop(delivery: Delivery) -> Delivery:
        body, headers = delivery
        return body, {key: value for key, value in headers.items() if key.lower() != name.lower()}

    return drop


def _without_adyen_hmac(delivery: Delivery) -> Delivery:
    body = json.loads(delivery[0])
    for entry in body["notificationItems"]:
        del entry["NotificationRequestItem"]["additionalData"]["hmacSignature"]
    return signing.dumps(body), delivery[1]


DRIVERS = {
    "stripe": Driver("stripe", "pending", {"succeeded": "succeeded", "pending": "pending", "failed": "failed"},
                     (b'"amount":2500', b'"amount":2499'), _without_header("Stripe-Signature")),
    "paypal": Driver("paypal", "PENDING", {"succeeded": "COMPLETED", "pending": "PENDING", "failed": "FAILED"},
                     (b'"value":"25.00"', b'"value":"24.99"'), _without_header("PAYPAL-TRANSMISSION-SIG")),
    "adyen": Driver("adyen", None, {}, (b'"value":2500', b'"value":2499'), _without_adyen_hmac),
    "square": Driver("square", None, {"succeeded": "COMPLETED", "pending": "PENDING", "failed": "FAILED"},
                     (b'"amount":2500', b'"amount":2499'), _without_header("x-square-hmacsha256-signature")),
}


def _wrongly_signed(world: World, driver: Driver, refund: dict[str, Any]) -> Delivery:
    """The same event signed with a key that is not the configured one."""
    if driver.name == "stripe":
        obj = world.fake_refund("stripe", refund["processor_refund_id"])
        return world.stripe_delivery("refund.updated", {**obj, "status": "succeeded"}, secret="whsec_someone_else")
    if driver.name == "square":
        obj = world.fake_refund("square", refund["processor_refund_id"])
        return world.square_delivery("refund.updated", {**obj, "status": "COMPLETED"}, key="not-the-key")
    if driver.name == "adyen":
        item = signing.adyen_item("REFUND", refund["processor_refund_id"], value=AMOUNT, merchant_reference=refund["refund_id"])
        return world.adyen_delivery(item, key="00" * 32)
    body, _ = driver.delivery(world, refund, "succeeded")
    return body, signing.paypal_headers(body, "ANOTHERWEBHOOK0001")  # signed for another webhook


def _tampered(driver: Driver, delivery: Delivery) -> Delivery:
    body, headers = delivery
    before, after = driver.tamper
    assert before in body
    return body.replace(before, after), headers


def _reply_ok(name: str, response: Any) -> None:
    assert response.status_code == 200, response.text
    if name == "adyen":
        assert response.text == "[accepted]"


@pytest.mark.parametrize("name", ALL)
async def test_a_signed_event_moves_the_refund_to_its_final_status(world, name):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    response = await world.send(name, driver.delivery(world, refund, "succeeded"))
    _reply_ok(name, response)
    assert await world.status(refund["refund_id"]) == "succeeded"
    assert ("refund.webhook", "succeeded", None) in await world.audit_actions(refund["refund_id"])


@pytest.mark.parametrize("name", ALL)
async def test_a_refusal_by_the_processor_reported_by_webhook_releases_the_amount(world, name):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    assert await world.refundable(refund["transaction_id"]) == 10000 - AMOUNT
    _reply_ok(name, await world.send(name, driver.delivery(world, refund, "failed")))
    assert await world.status(refund["refund_id"]) == "failed"
    assert await world.refundable(refund["transaction_id"]) == 10000


@pytest.mark.parametrize("variant", ["wrong_key", "body_altered_after_signing", "signature_missing"])
@pytest.mark.parametrize("name", ALL)
async def test_a_delivery_with_a_bad_signature_is_refused_and_changes_nothing(world, name, variant):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    good = driver.delivery(world, refund, "succeeded")
    delivery = {
        "wrong_key": lambda: _wrongly_signed(world, driver, refund),
        "body_altered_after_signing": lambda: _tampered(driver, good),
        "signature_missing": lambda: driver.drop_signature(good),
    }[variant]()
    before = await world.snapshot()
    response = await world.send(name, delivery)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "bad_signature"
    assert await world.snapshot() == before
    assert "webhook.rejected" not in [action for action, _, _ in await world.audit_actions()], "unverified: nothing durable"
    assert await world.status(refund["refund_id"]) == "pending"


@pytest.mark.parametrize("name", ALL)
async def test_a_refused_delivery_writes_nothing_and_its_log_line_holds_no_body_or_signature(world, name, caplog):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    body, headers = _tampered(driver, driver.delivery(world, refund, "succeeded"))
    async with world.app.db.read() as conn:
        before = (await conn.execute(select(tables.audit_log.c.seq).order_by(tables.audit_log.c.seq.desc()).limit(1))).scalar_one()
    with caplog.at_level("WARNING", logger="refund_mcp.webhooks"):
        assert (await world.send(name, (body, headers))).status_code == 401
    async with world.app.db.read() as conn:
        after = (await conn.execute(select(tables.audit_log.c.seq).order_by(tables.audit_log.c.seq.desc()).limit(1))).scalar_one()
    assert after == before
    logged = caplog.text
    assert f"refused a {name} webhook delivery (bad_signature, 401)" in logged
    assert refund["processor_refund_id"] not in logged
    for value in headers.values():
        if len(value) > 20:
            assert value not in logged


@pytest.mark.parametrize("name", ALL)
async def test_a_replayed_event_is_acknowledged_and_changes_nothing(world, name):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    delivery = driver.delivery(world, refund, "succeeded")
    _reply_ok(name, await world.send(name, delivery))
    before = await world.snapshot()
    replay = await world.send(name, delivery)
    _reply_ok(name, replay)
    if name != "adyen":
        assert replay.json()["outcomes"] == ["replay"]
    assert await world.snapshot() == before


@pytest.mark.parametrize("name", ["stripe", "paypal", "square"])
async def test_an_older_pending_event_arriving_after_success_leaves_the_refund_succeeded(world, name):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    late_pending = driver.delivery(world, refund, "pending")
    _reply_ok(name, await world.send(name, driver.delivery(world, refund, "succeeded")))
    _reply_ok(name, await world.send(name, late_pending))
    assert await world.status(refund["refund_id"]) == "succeeded"


@pytest.mark.parametrize("name", ALL)
async def test_a_failure_reported_after_success_is_applied_as_failed_and_audited(world, name):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    _reply_ok(name, await world.send(name, driver.delivery(world, refund, "succeeded")))
    if name == "adyen":
        late = world.adyen_delivery(
            signing.adyen_item("REFUND_FAILED", refund["processor_refund_id"], value=AMOUNT,
                               original_reference=PAYMENT_IDS["adyen"], merchant_reference=refund["refund_id"], reason="Refund Failed")
        )
    else:
        late = driver.delivery(world, refund, "failed")
    _reply_ok(name, await world.send(name, late))
    assert await world.status(refund["refund_id"]) == "failed"
    webhook_trail = [entry[:2] for entry in await world.audit_actions(refund["refund_id"]) if entry[0] == "refund.webhook"]
    assert webhook_trail == [("refund.webhook", "succeeded"), ("refund.webhook", "failed")]


@pytest.mark.parametrize("name", ALL)
async def test_a_refund_made_in_the_dashboard_is_recorded_as_external_and_counts_against_the_balance(world, name):
    driver = DRIVERS[name]
    transaction_id = await world.seed(name, **({"refund_outcome": driver.pending_word} if driver.pending_word else {}))
    assert await world.refundable(transaction_id) == 10000
    response = await world.send(name, driver.external_delivery(world, 3000))
    _reply_ok(name, response)
    if name != "adyen":
        assert response.json()["outcomes"] == ["external"]
    listed = (await world.tool("list_refunds", {"processor": name}))["refunds"]
    assert [(r["origin"], r["amount_minor"], r["status"]) for r in listed] == [("external", 3000, "succeeded")]
    # Counted once, whether or not the processor's own "refunded so far" already includes it.
    assert await world.refundable(transaction_id) == 7000


@pytest.mark.parametrize("name", ALL)
async def test_a_signed_body_that_is_not_an_event_is_refused_as_malformed(world, name):
    body = b'{"this is": ["not", "an", "event"]}'
    if name == "stripe":
        headers = {"Stripe-Signature": signing.stripe_signature(body, STRIPE_SECRET, int(time.time()))}
    elif name == "square":
        headers = {"x-square-hmacsha256-signature": signing.square_signature(body, SQUARE_KEY, SQUARE_URL)}
    elif name == "paypal":
        headers = signing.paypal_headers(body, PAYPAL_WEBHOOK_ID)
    else:
        body = signing.dumps(signing.adyen_notification(signing.adyen_signed({"eventCode": "REFUND", "success": "maybe"}, ADYEN_HMAC_KEY)))
        headers = {}
    before = await world.snapshot()
    response = await world.post(name, body, headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed"
    assert await world.snapshot() == before


@pytest.mark.parametrize("name", ALL)
async def test_a_body_over_the_size_cap_is_refused_before_it_is_read_whole(world, name):
    before = await world.audit_actions()
    response = await world.post(name, b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}", {"Stripe-Signature": "t=1,v1=00"})
    assert response.status_code == 413
    assert await world.audit_actions() == before


SECRETS = {
    "stripe": "STRIPE_WEBHOOK_SECRET",
    "paypal": "PAYPAL_WEBHOOK_ID",
    "adyen": "ADYEN_HMAC_KEY",
    "square": "SQUARE_WEBHOOK_SIGNATURE_KEY",
}


@pytest.mark.parametrize("name", ALL)
async def test_a_processor_without_its_webhook_secret_answers_503_naming_the_setting(tmp_path, name):
    async with open_world(tmp_path, extra_env={SECRETS[name]: ""}) as world:
        response = await world.post(name, b"{}", {})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert SECRETS[name] in response.json()["message"]


async def test_a_processor_that_is_not_configured_answers_404(tmp_path):
    async with open_world(tmp_path, extra_env={"SQUARE_ACCESS_TOKEN": ""}) as world:
        response = await world.post("square", b"{}", {})
    assert response.status_code == 404
    assert "square is not configured" in response.json()["message"]


async def test_an_adyen_key_that_is_not_hex_is_a_configuration_error_not_a_bad_signature(tmp_path):
    async with open_world(tmp_path, extra_env={"ADYEN_HMAC_KEY": "not-hex"}) as world:
        response = await world.post("adyen", b"{}", {})
    assert response.status_code == 503
    assert "ADYEN_HMAC_KEY" in response.json()["message"]


@pytest.mark.parametrize("name", ALL)
async def test_a_database_failure_answers_500_so_the_processor_delivers_again(world, name, monkeypatch):
    driver = DRIVERS[name]
    refund = await driver.pending_refund(world)
    delivery = driver.delivery(world, refund, "succeeded")
    real_apply: Callable[..., Awaitable[str]] = world.app.service.apply_event

    async def database_down(event: Any) -> str:
        raise OperationalError("INSERT INTO webhook_events", {}, Exception("disk I/O error"))

    monkeypatch.setattr(world.app.service, "apply_event", database_down)
    response = await world.send(name, delivery)
    assert response.status_code == 500
    assert await world.status(refund["refund_id"]) == "pending"
    monkeypatch.setattr(world.app.service, "apply_event", real_apply)
    _reply_ok(name, await world.send(name, delivery))
    assert await world.status(refund["refund_id"]) == "succeeded"
