"""Confirmation through MCP elicitation, and the approval queue decided through the CLI."""

from __future__ import annotations

import os
import subprocess

import pytest

import mcp.types as mt
from mcp import Client
from tests.support.servers import refund_mcp_command

pytestmark = pytest.mark.anyio

HITL_POLICY = os.path.join(os.path.dirname(__file__), "support", "hitl_policy.yaml")
MODES = [pytest.param({}, id="2026-07-28"), pytest.param({"mode": "legacy"}, id="legacy")]
TXN = "sandbox:demo_usd_order"  # USD 120.00
CONFIRMED_SIZE = {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 2000}  # above USD 10.00


def answering(action: str, confirm: bool = True):
    asked: list[str] = []

    async def on_elicit(ctx, params):
        asked.append(params.message)
        if action == "accept":
            return mt.ElicitResult(action="accept", content={"confirm": confirm})
        return mt.ElicitResult(action=action)

    return on_elicit, asked


async def refundable(client) -> int:
    return (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content["refundable_minor"]


@pytest.mark.parametrize("mode", MODES)
async def test_an_accepted_confirmation_refunds(app_factory, mode):
    callback, asked = answering("accept")
    async with app_factory(policy=HITL_POLICY) as app, Client(app.server, elicitation_callback=callback, **mode) as client:
        result = await client.call_tool("create_refund", {**CONFIRMED_SIZE, "customer_ref": "ana@example.com"})
        assert not result.is_error, result.content
        assert result.structured_content["status"] == "succeeded"
    assert len(asked) == 1
    assert "USD 20.00" in asked[0] and TXN in asked[0] and "service_issue" in asked[0] and "ana@example.com" in asked[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("action", "confirm"), [("decline", True), ("cancel", True), ("accept", False)])
async def test_a_declined_or_cancelled_confirmation_moves_nothing(app_factory, mode, action, confirm):
    callback, asked = answering(action, confirm)
    async with app_factory(policy=HITL_POLICY) as app, Client(app.server, elicitation_callback=callback, **mode) as client:
        result = await client.call_tool("create_refund", CONFIRMED_SIZE)
        assert result.is_error
        assert "[confirmation_declined]" in result.content[0].text
        assert await refundable(client) == 12000
        listed = (await client.call_tool("list_refunds", {})).structured_content
        assert listed["refunds"] == []
    assert len(asked) == 1


async def test_small_refunds_are_not_confirmed(app_factory):
    callback, asked = answering("decline")
    async with app_factory(policy=HITL_POLICY) as app, Client(app.server, elicitation_callback=callback) as client:
        result = await client.call_tool("create_refund", {**CONFIRMED_SIZE, "amount_minor": 500})
        assert result.structured_content["status"] == "succeeded"
    assert asked == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_elicitation_gets_pending_approval_not_a_protocol_error(app_factory, mode):
    async with app_factory(policy=HITL_POLICY) as app, Client(app.server, **mode) as client:
        result = await client.call_tool("create_refund", CONFIRMED_SIZE)
        assert not result.is_error, result.content
        refund = result.structured_content
        assert refund["status"] == "pending_approval"
        assert "cannot ask" in refund["approval"]["reason"]
        assert "approver" in refund["message"]
        assert await refundable(client) == 10000  # reserved while it waits


async def test_fraudulent_refunds_always_wait_for_approval_and_are_approved_through_the_cli(app_factory, tmp_path):
    async with app_factory(policy=HITL_POLICY, actor="bot-7") as app:
        async with Client(app.server) as client:
            parked = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "fraudulent", "amount_minor": 300})).structured_content
        assert parked["status"] == "pending_approval"
        env = {
            **os.environ,
            "REFUND_MCP_DB": app.settings.db_url,
            "REFUND_MCP_POLICY": HITL_POLICY,
            "REFUND_MCP_SANDBOX": "1",
        }
        listed = subprocess.run([*refund_mcp_command(), "approvals", "list"], env=env, capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        assert parked["refund_id"] in listed.stdout and "USD 3.00" in listed.stdout
        own = subprocess.run([*refund_mcp_command(), "approvals", "approve", parked["refund_id"], "--by", "bot-7"], env=env, capture_output=True, text=True)
        assert own.returncode == 1
        assert "[forbidden]" in own.stderr
        approved = subprocess.run(
            [*refund_mcp_command(), "approvals", "approve", parked["refund_id"], "--by", "risk-lead", "--note", "checked"],
            env=env, capture_output=True, text=True,
        )
        assert approved.returncode == 0, approved.stderr
        assert "succeeded" in approved.stdout
        async with Client(app.server) as client:
            status = (await client.call_tool("get_refund_status", {"refund_id": parked["refund_id"]})).structured_content
        assert status["approval"]["state"] == "approved"
        assert status["approval"]["decided_by"] == "risk-lead"
        # The sandbox process that approved it is not this one: the record is the truth here.
        assert status["status"] in ("succeeded",)


async def test_a_denied_approval_releases_the_reservation(app_factory):
    async with app_factory(policy=HITL_POLICY, actor="bot-7") as app, Client(app.server) as client:
        parked = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "fraudulent", "amount_minor": 300})).structured_content
        assert await refundable(client) == 11700
        view = await app.service.deny(parked["refund_id"], approver="risk-lead", note="not fraud")
        assert view.status == "cancelled"
        assert await refundable(client) == 12000
        status = (await client.call_tool("get_refund_status", {"refund_id": parked["refund_id"]})).structured_content
        assert status["approval"]["state"] == "denied"


async def test_an_expired_approval_is_cancelled_and_audited(app_factory):
    from datetime import timedelta

    async with app_factory(policy=HITL_POLICY, actor="bot-7") as app, Client(app.server) as client:
        parked = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "fraudulent", "amount_minor": 300})).structured_content
        real_clock = app.service.clock
        app.service.clock = lambda: real_clock() + timedelta(hours=2)
        assert await app.service.expire_approvals() == 1
        app.service.clock = real_clock
        status = (await client.call_tool("get_refund_status", {"refund_id": parked["refund_id"]})).structured_content
        assert status["status"] == "cancelled" and status["approval"]["state"] == "expired"
        assert await refundable(client) == 12000
        trail = await app.service.refund_with_trail(parked["refund_id"])
        assert "approval.expired" in [record["action"] for record in trail["audit_trail"]]


async def park_expired(app, client) -> dict:
    """A fraudulent refund parked two hours ago under a one-hour approval lifetime (the clock is injected)."""
    from datetime import timedelta

    real_clock = app.service.clock
    app.service.clock = lambda: real_clock() - timedelta(hours=2)
    try:
        return (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "fraudulent", "amount_minor": 300})).structured_content
    finally:
        app.service.clock = real_clock


async def test_an_expired_approval_cannot_be_approved_and_the_cli_marks_it_expired(app_factory):
    import json

    async with app_factory(policy=HITL_POLICY, actor="bot-7") as app:
        async with Client(app.server) as client:
            parked = await park_expired(app, client)
        assert parked["status"] == "pending_approval"
        env = {**os.environ, "REFUND_MCP_DB": app.settings.db_url, "REFUND_MCP_POLICY": HITL_POLICY, "REFUND_MCP_SANDBOX": "1"}
        cli = [*refund_mcp_command(), "approvals"]
        listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        assert parked["refund_id"] in listed.stdout and "EXPIRED=" in listed.stdout
        shown = subprocess.run([*cli, "show", parked["refund_id"]], env=env, capture_output=True, text=True)
        assert json.loads(shown.stdout)["refund"]["approval"]["expired"] is True
        approved = subprocess.run([*cli, "approve", parked["refund_id"], "--by", "risk-lead"], env=env, capture_output=True, text=True)
        assert approved.returncode == 1
        assert "[not_supported]" in approved.stderr and "expired" in approved.stderr and "nothing was refunded" in approved.stderr
        async with Client(app.server) as client:
            status = (await client.call_tool("get_refund_status", {"refund_id": parked["refund_id"]})).structured_content
            assert (status["status"], status["approval"]["state"]) == ("cancelled", "expired")
            assert await refundable(client) == 12000
        trail = await app.service.refund_with_trail(parked["refund_id"])
        expired = [record for record in trail["audit_trail"] if record["action"] == "approval.expired"]
        assert len(expired) == 1 and expired[0]["detail"] == {"on_decision": "approve", "by": "risk-lead"}
        assert "approval.approved" not in [record["action"] for record in trail["audit_trail"]]


async def test_an_expired_approval_cannot_be_denied_either_it_is_recorded_as_expired(app_factory):
    from refund_mcp.domain.errors import NotSupported

    async with app_factory(policy=HITL_POLICY, actor="bot-7") as app, Client(app.server) as client:
        parked = await park_expired(app, client)
        with pytest.raises(NotSupported, match="expired"):
            await app.service.deny(parked["refund_id"], approver="risk-lead")
        status = (await client.call_tool("get_refund_status", {"refund_id": parked["refund_id"]})).structured_content
        assert status["approval"]["state"] == "expired" and status["approval"]["decided_by"] is None
        assert await refundable(client) == 12000


async def test_a_confirmation_holds_only_for_the_amount_the_human_was_shown(app_factory):
    # The amount is omitted (the whole balance). While the human looks at "USD 20.00", a parked USD 100.00
    # refund is cancelled and the balance grows to USD 120.00: their yes is not a yes to USD 120.00.
    async with app_factory(policy=HITL_POLICY, actor="bot-7") as app:
        async with Client(app.server) as setup:
            parked = (await setup.call_tool("create_refund", {"transaction_id": TXN, "reason": "fraudulent", "amount_minor": 10000})).structured_content
            assert parked["status"] == "pending_approval" and await refundable(setup) == 2000
        asked: list[str] = []

        async def cancel_then_accept(ctx, params):
            asked.append(params.message)
            async with Client(app.server) as other:
                cancelled = await other.call_tool("cancel_refund", {"refund_id": parked["refund_id"]})
                assert cancelled.structured_content["status"] == "cancelled"
            return mt.ElicitResult(action="accept", content={"confirm": True})

        async with Client(app.server, elicitation_callback=cancel_then_accept, mode="legacy") as client:
            result = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue"})
            assert result.is_error
            text = result.content[0].text
            assert "[confirmation_declined]" in text and "USD 20.00" in text and "USD 120.00" in text
            assert "nothing was refunded" in text and "asked about the new amount" in text
            assert await refundable(client) == 12000
            listed = (await client.call_tool("list_refunds", {"status": "succeeded"})).structured_content
            assert listed["refunds"] == []
            # Calling again asks about the amount as it is now, and that yes is honoured.
            again = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue"})
        assert len(asked) == 2 and "USD 20.00" in asked[0] and "USD 120.00" in asked[1]
        assert again.structured_content["status"] == "succeeded" and again.structured_content["amount_minor"] == 12000


async def test_on_the_stateless_protocol_a_changed_balance_asks_again_before_anything_moves(app_factory):
    # 2026-07-28: the answer comes back on a second round, where the preview runs again; a question whose
    # amount changed is asked anew, and the refund is held to the amount of the question answered.
    async with app_factory(policy=HITL_POLICY, actor="bot-7") as app:
        async with Client(app.server) as setup:
            parked = (await setup.call_tool("create_refund", {"transaction_id": TXN, "reason": "fraudulent", "amount_minor": 10000})).structured_content
        asked: list[str] = []

        async def cancel_then_accept(ctx, params):
            asked.append(params.message)
            await app.service.cancel_refund("bot-7", parked["refund_id"])
            return mt.ElicitResult(action="accept", content={"confirm": True})

        async with Client(app.server, elicitation_callback=cancel_then_accept) as client:
            result = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue"})
        assert [("USD 20.00" in text, "USD 120.00" in text) for text in asked] == [(True, False), (False, True)]
        assert not result.is_error, result.content
        assert (result.structured_content["status"], result.structured_content["amount_minor"]) == ("succeeded", 12000)
