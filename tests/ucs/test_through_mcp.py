"""A UCS connector through the MCP tools against the fake connector-service: the same guarantees as native processors."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select
from starlette.applications import Starlette

from mcp import Client
from refund_mcp.app import App
from refund_mcp.processors.ucs.generated import payment_pb2 as pb
from refund_mcp.store import tables
from refund_mcp.webhooks.routes import webhook_routes
from tests.conftest import make_app, sqlite_url
from tests.fakes.ucs import CONNECTOR_CONFIG, WEBHOOK_SECRET, RunningUcs, UcsFake

pytestmark = pytest.mark.anyio

TXN = "checkout:pay_ucs_1"
POLICY = Path(__file__).with_name("policy.yaml")
SECRETS = ("sk_sbox_fake_ucs_checkout_0123456789", CONNECTOR_CONFIG, WEBHOOK_SECRET)


def processors_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "processors.yaml"
    path.write_text(
        "accounts:\n"
        f"  checkout: {{processor: ucs, url: '{url}', connector: checkout, connector_config_env: UCS_CHECKOUT_CONFIG,"
        " webhook_secret_env: UCS_CHECKOUT_WHSEC, deadline_seconds: 0.5, connect_seconds: 2}\n"
    )
    return path


@dataclass
class World:
    app: App
    client: Client
    fake: UcsFake
    hooks: httpx2.AsyncClient


@pytest.fixture
async def world(tmp_path) -> AsyncIterator[World]:
    running = RunningUcs(UcsFake())
    env = {
        "REFUND_MCP_SANDBOX": "0",
        "REFUND_MCP_PROCESSORS": str(processors_file(tmp_path, running.url)),
        "UCS_CHECKOUT_CONFIG": CONNECTOR_CONFIG,
        "UCS_CHECKOUT_WHSEC": WEBHOOK_SECRET,
    }
    running.fake.add_payment("pay_ucs_1", 10000, email="ana@example.com")
    try:
        async with make_app(sqlite_url(tmp_path), env=env, policy=POLICY) as app, Client(app.server) as client:
            hooks_app = Starlette(routes=webhook_routes(app))
            async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=hooks_app), base_url="http://refund-mcp") as hooks:
                yield World(app, client, running.fake, hooks)
    finally:
        running.stop()
    assert running.fake.violations == [], running.fake.violations


async def call(world: World, tool: str, **args):
    return await world.client.call_tool(tool, args)


async def test_lookup_partial_and_full_refund_with_metadata(world):
    txn = (await call(world, "lookup_transaction", transaction_id=TXN)).structured_content
    assert (txn["processor"], txn["refundable_minor"], txn["currency"]) == ("checkout", 10000, "USD")
    part_result = await call(world, "create_refund", transaction_id=TXN, reason="product_defective", amount_minor=2550, metadata={"ticket": "T-9"})
    part = part_result.structured_content
    assert part is not None, part_result.content
    assert part["status"] == "succeeded" and part["processor"] == "checkout" and part["metadata"] == {"ticket": "T-9"}
    rest = (await call(world, "create_refund", transaction_id=TXN, reason="requested_by_customer")).structured_content
    assert rest["amount_minor"] == 7450 and rest["status"] == "succeeded"
    assert len(world.fake.refunds) == 2
    sent = json.loads(world.fake.refunds[0].metadata)
    assert sent == {"ticket": "T-9", "refund_mcp_id": part["refund_id"]}
    async with world.app.db.read() as conn:
        reserved = (await conn.execute(select(tables.audit_log.c.body).where(tables.audit_log.c.action == "refund.reserved"))).scalars().first()
    assert "T-9" in str(reserved)


async def test_an_over_refund_is_refused_before_the_connector_is_called(world):
    await call(world, "lookup_transaction", transaction_id=TXN)
    result = await call(world, "create_refund", transaction_id=TXN, reason="service_issue", amount_minor=10001)
    assert result.is_error and "[amount_exceeds_refundable]" in result.content[0].text
    assert world.fake.refund_calls() == []


async def test_deadline_after_the_connector_accepted_then_no_resend_and_an_operator_decides(world):
    """UCS publishes no idempotency-key retention and cannot be searched by our id: a refund whose outcome is
    unknown is never sent again (its key may be forgotten); it stays reserved until an operator decides."""
    await call(world, "lookup_transaction", transaction_id=TXN)
    world.fake.faults.deadline_after_commit = 1
    queued = (await call(world, "create_refund", transaction_id=TXN, reason="service_issue", amount_minor=1234)).structured_content
    assert queued["status"] == "queued", queued
    assert len(world.fake.refunds) == 1
    world.fake.release()
    real_clock = world.app.service.clock
    world.app.service.clock = lambda: real_clock() + timedelta(hours=1)
    assert await world.app.service.process_due() == 1
    world.app.service.clock = real_clock
    stuck = await world.app.service.stuck_refunds()
    assert [view.refund_id for view in stuck] == [queued["refund_id"]]
    assert "cannot be searched" in stuck[0].retry.last_error
    assert len(world.fake.refunds) == 1
    attempts = [c.request.merchant_refund_id for c in world.fake.refund_calls()]
    assert attempts == [queued["refund_id"]]


async def test_a_decline_fails_the_refund_and_releases_the_amount(world):
    world.fake.faults.decline = 1
    result = await call(world, "create_refund", transaction_id=TXN, reason="service_issue", amount_minor=1000)
    assert result.is_error and "[processor_error]" in result.content[0].text and "declined" in result.content[0].text
    txn = (await call(world, "lookup_transaction", transaction_id=TXN)).structured_content
    assert txn["reserved_minor"] == 0 and txn["refundable_minor"] == 10000


async def test_manual_review_stays_pending_until_the_connector_decides(world):
    world.fake.payments["pay_ucs_1"].refund_outcome = pb.REFUND_MANUAL_REVIEW
    refund = (await call(world, "create_refund", transaction_id=TXN, reason="service_issue", amount_minor=1000)).structured_content
    assert refund["status"] == "pending"
    still = (await call(world, "get_refund_status", refund_id=refund["refund_id"])).structured_content
    assert still["status"] == "pending"
    world.fake.set_refund_status(world.fake.refunds[0].connector_refund_id, pb.REFUND_SUCCESS)
    done = (await call(world, "get_refund_status", refund_id=refund["refund_id"])).structured_content
    assert done["status"] == "succeeded" and done["status_source"] == "processor"


async def test_a_webhook_verified_by_ucs_is_applied_and_a_forged_one_is_refused(world):
    world.fake.payments["pay_ucs_1"].refund_outcome = pb.REFUND_PENDING
    refund = (await call(world, "create_refund", transaction_id=TXN, reason="service_issue", amount_minor=1000)).structured_content
    assert refund["status"] == "pending"
    body, headers = world.fake.signed_webhook(world.fake.refunds[0], pb.REFUND_SUCCESS, secret="whsec_forged_0000000000")
    forged = await world.hooks.post("/webhooks/ucs/checkout", content=body, headers=headers)
    assert forged.status_code == 401
    assert (await call(world, "get_refund_status", refund_id=refund["refund_id"], refresh=False)).structured_content["status"] == "pending"
    body, headers = world.fake.signed_webhook(world.fake.refunds[0], pb.REFUND_SUCCESS)
    signed = await world.hooks.post("/webhooks/ucs/checkout", content=body, headers=headers)
    assert signed.status_code == 200 and signed.content == b"[accepted]"  # UCS's acknowledgement for the connector
    assert (await call(world, "get_refund_status", refund_id=refund["refund_id"], refresh=False)).structured_content["status"] == "succeeded"
    handled = [c for c in world.fake.calls if c.method == "EventService/HandleEvent"][-1].request
    assert handled.request_details.body == body and handled.webhook_secrets.secret == WEBHOOK_SECRET
    unknown = await world.hooks.post("/webhooks/ucs/braintree", content=body, headers=headers)
    assert unknown.status_code == 404


async def test_secrets_never_reach_logs_results_or_the_audit_log(world, caplog):
    caplog.set_level(logging.DEBUG)
    world.fake.faults.connector_5xx = 1
    queued = await call(world, "create_refund", transaction_id=TXN, reason="service_issue", amount_minor=1000)
    world.fake.faults.decline = 1
    declined = await call(world, "create_refund", transaction_id=TXN, reason="duplicate", amount_minor=500)
    body, headers = world.fake.signed_webhook(world.fake.refunds[0] if world.fake.refunds else _no_refund(), pb.REFUND_SUCCESS, secret="whsec_forged_0000000000")
    await world.hooks.post("/webhooks/ucs/checkout", content=body, headers=headers)
    async with world.app.db.read() as conn:
        audit = [tuple(row) for row in (await conn.execute(select(tables.audit_log))).all()]
    seen = caplog.text + str(queued) + str(declined) + str(audit) + repr(world.app.processors.get("checkout"))
    for secret in SECRETS:
        assert secret not in seen


def _no_refund():
    from tests.fakes.ucs import FakeRefund

    return FakeRefund("rfd_x", "rf_x", "pay_ucs_1", 1, pb.USD, pb.REFUND_PENDING, "{}", "")
