"""The worker: queued refunds are retried with the same key; pending ones are synced to a final state."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from mcp import Client
from refund_mcp.worker import run_once

pytestmark = pytest.mark.anyio

TXN = "sandbox:demo_usd_order"


async def test_a_refund_queued_by_an_unreachable_processor_is_retried_and_succeeds(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        queued = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 199})).structured_content
        assert queued["status"] == "queued"
        assert queued["retry"]["next_attempt_at"] is not None
        # Nothing is due until the backoff passes: the worker leaves it alone.
        assert await app.service.process_due() == 0
        real_clock = app.service.clock
        app.service.clock = lambda: real_clock() + timedelta(minutes=10)
        assert await app.service.process_due() == 1
        app.service.clock = real_clock
        status = (await client.call_tool("get_refund_status", {"refund_id": queued["refund_id"]})).structured_content
        assert status["status"] == "succeeded"
        assert status["retry"]["attempts"] == 2
        trail = [r["action"] for r in (await app.service.refund_with_trail(queued["refund_id"]))["audit_trail"]]
        assert trail == ["refund.reserved", "refund.retry_scheduled", "refund.submitted", "refund.status"]


async def test_a_pending_refund_is_synced_to_its_final_state_and_then_left_alone(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        pending = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 142})).structured_content
        assert pending["status"] == "pending"
        real_clock = app.service.clock
        app.service.clock = lambda: real_clock() + timedelta(minutes=1)
        assert await app.service.sync_statuses() == 1
        assert await app.service.sync_statuses() == 0  # final: no more polling
        app.service.clock = real_clock
        status = (await client.call_tool("get_refund_status", {"refund_id": pending["refund_id"], "refresh": False})).structured_content
        assert status["status"] == "succeeded"


async def test_get_refund_status_with_refresh_asks_the_processor(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        pending = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 242})).structured_content
        stale = (await client.call_tool("get_refund_status", {"refund_id": pending["refund_id"], "refresh": False})).structured_content
        assert stale["status"] == "pending" and stale["status_source"] == "records"
        fresh = (await client.call_tool("get_refund_status", {"refund_id": pending["refund_id"]})).structured_content
        assert fresh["status"] == "succeeded" and fresh["status_source"] == "processor"


async def test_a_requires_action_refund_is_cancelled_at_the_processor(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        stuck = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 177})).structured_content
        assert stuck["status"] == "requires_action"
        cancelled = (await client.call_tool("cancel_refund", {"refund_id": stuck["refund_id"]})).structured_content
        assert cancelled["status"] == "cancelled"
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content
        assert txn["refundable_minor"] == 12000


async def test_a_refund_whose_submitter_died_is_taken_over_after_its_lease_lapses(app_factory):
    async with app_factory() as app:
        from refund_mcp.service.refunds import Confirmation, RefundInput

        # Reserve as create_refund does, but never submit: as if the process died right after the commit.
        ref = await app.service.resolve_transaction_id(TXN)
        info, _ = await app.service.resolver.fetch_transaction(ref)
        reservation = await app.service.reserver.reserve(
            "agent-1", RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=300), ref, info, None,
            Confirmation.NOT_ASKED, {},
        )
        view, submit = reservation.view, reservation.submit
        assert submit and view.status == "queued"
        assert await run_once(app.service) == 0  # its lease is still held
        real_clock = app.service.clock
        app.service.clock = lambda: real_clock() + timedelta(seconds=app.settings.claim_seconds + 1)
        assert await app.service.process_due() == 1
        app.service.clock = real_clock
        async with Client(app.server) as client:
            status = (await client.call_tool("get_refund_status", {"refund_id": view.refund_id})).structured_content
        assert status["status"] == "succeeded"


async def test_a_refund_whose_submitter_died_cannot_be_cancelled_locally(app_factory):
    """The dead submitter may have reached the processor: only a resubmission with the same key can tell."""
    async with app_factory() as app:
        from refund_mcp.service.refunds import Confirmation, RefundInput

        ref = await app.service.resolve_transaction_id(TXN)
        info, _ = await app.service.resolver.fetch_transaction(ref)
        view = (await app.service.reserver.reserve(
            "agent-1", RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=300), ref, info, None,
            Confirmation.NOT_ASKED, {},
        )).view
        real_clock = app.service.clock
        app.service.clock = lambda: real_clock() + timedelta(seconds=app.settings.claim_seconds + 1)
        async with Client(app.server) as client:
            refused = await client.call_tool("cancel_refund", {"refund_id": view.refund_id})
            assert refused.is_error and "[not_supported]" in refused.content[0].text
            app.service.clock = real_clock
            txn = (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content
        assert txn["reserved_minor"] == 300


async def test_after_the_retry_deadline_the_worker_stops_and_an_operator_decides(app_factory):
    import subprocess

    from tests.support.servers import refund_mcp_command

    async with app_factory(retry_deadline_seconds=0) as app, Client(app.server) as client:
        queued = (await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 399})).structured_content
        assert queued["status"] == "queued"
        assert queued["retry"]["next_attempt_at"] is None
        assert "a human must decide" in queued["retry"]["last_error"]
        env = {"REFUND_MCP_DB": app.settings.db_url, "REFUND_MCP_SANDBOX": "1", "PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
        stuck = subprocess.run([*refund_mcp_command(), "refunds", "stuck"], env=env, capture_output=True, text=True)
        assert queued["refund_id"] in stuck.stdout, stuck.stderr
        resolved = subprocess.run(
            [*refund_mcp_command(), "refunds", "resolve", queued["refund_id"], "--failed", "--by", "ops", "--note", "not in dashboard"],
            env=env, capture_output=True, text=True,
        )
        assert resolved.returncode == 0, resolved.stderr
        status = (await client.call_tool("get_refund_status", {"refund_id": queued["refund_id"]})).structured_content
        assert status["status"] == "failed" and "ops" in status["failure_reason"]
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content
        assert txn["reserved_minor"] == 0
