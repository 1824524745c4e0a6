"""kill -9 at each step of the refund flow: after a restart every refund completes exactly once.

The server runs as a real process against the Stripe fake in another real process; the fake
counts the refunds it created, which is the ground truth for "exactly once".
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import httpx2
import pytest

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from tests.conftest import TEST_POLICY
from tests.fakes.stripe import DEFAULT_API_KEY
from tests.support.fake_process import FakeProcess, fake_processor
from tests.support.servers import server_process

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def server_env(db_url: str, fake: FakeProcess, **extra: str) -> dict[str, str]:
    return {
        "REFUND_MCP_DB": db_url,
        "REFUND_MCP_POLICY": str(TEST_POLICY),
        "REFUND_MCP_SANDBOX": "0",
        "STRIPE_API_KEY": DEFAULT_API_KEY,
        "STRIPE_API_BASE": fake.base,
        # Short lease and backoff so the restarted worker takes the refund over within a second or two.
        "REFUND_MCP_CLAIM_SECONDS": "1",
        "REFUND_MCP_RETRY_BASE_SECONDS": "0.2",
        "REFUND_MCP_RETRY_MAX_SECONDS": "1",
        "REFUND_MCP_WORKER_INTERVAL_SECONDS": "0.1",
        **extra,
    }


async def call(base: str, tool: str, args: dict[str, Any]) -> Any:
    async with httpx2.AsyncClient(timeout=60) as http:
        async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
            return await client.call_tool(tool, args)


async def call_expecting_death(base: str, args: dict[str, Any]) -> None:
    """The server kills itself mid-call: the client sees the connection drop, never a result."""
    try:
        result = await call(base, "create_refund", args)
    except Exception:  # the transport error of a dying server, whatever its exact type
        return
    raise AssertionError(f"the server answered instead of dying: {result}")


def wait_for(predicate: Any, what: str, deadline_seconds: float = 60.0) -> Any:
    """Readiness polling for an outcome produced by another process (not a timing assertion)."""
    give_up = time.monotonic() + deadline_seconds
    while time.monotonic() < give_up:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def final_refund(base: str) -> dict[str, Any]:
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        listed = (await call(base, "list_refunds", {})).structured_content["refunds"]
        if listed and listed[0]["status"] in ("succeeded", "failed", "cancelled"):
            assert len(listed) == 1, listed
            return listed[0]
        await anyio.sleep(0.1)
    raise AssertionError("the refund never reached a final state after the restart")


@pytest.mark.parametrize(
    ("failpoint", "refunds_at_processor_after_crash"),
    [("after_reserve", 0), ("after_processor_answer", 1)],
)
async def test_a_crash_at_each_step_ends_in_exactly_one_refund_after_restart(tmp_path, failpoint, refunds_at_processor_after_crash):
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'crash.sqlite3'}"
    with fake_processor("stripe") as fake:
        fake.seed(id="ch_crash", amount_minor=10000, currency="USD")
        args = {"transaction_id": "stripe:ch_crash", "reason": "requested_by_customer", "amount_minor": 2500}
        with server_process(server_env(db_url, fake, REFUND_MCP_FAILPOINT=failpoint)) as (base, proc):
            await call_expecting_death(base, args)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        assert fake.state()["refund_count"] == refunds_at_processor_after_crash
        with server_process(server_env(db_url, fake)) as (base, _proc):
            refund = await final_refund(base)
            txn = (await call(base, "lookup_transaction", {"transaction_id": "stripe:ch_crash"})).structured_content
        state = fake.state()
        assert state["refund_count"] == 1
        assert refund["status"] == "succeeded"
        assert refund["processor_refund_id"] == state["refunds"][0]["id"]
        assert state["refunds"][0]["metadata"]["refund_mcp_id"] == refund["refund_id"]
        assert txn["refunded_minor"] == 2500 and txn["refundable_minor"] == 7500


async def test_a_crash_while_the_processor_holds_the_request_ends_in_exactly_one_refund(tmp_path):
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'stall.sqlite3'}"
    with fake_processor("stripe") as fake:
        fake.seed(id="ch_stall", amount_minor=10000, currency="USD")
        args = {"transaction_id": "stripe:ch_stall", "reason": "requested_by_customer", "amount_minor": 4000}
        with server_process(server_env(db_url, fake)) as (base, proc):
            fake.faults(next_timeout_after_commit=1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(call_expecting_death, base, args)
                # The fake has created the refund and is holding its answer back: now kill the server.
                await anyio.to_thread.run_sync(lambda: wait_for(lambda: fake.state()["refund_count"] == 1, "the fake to commit"))
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        fake.release()
        with server_process(server_env(db_url, fake)) as (base, _proc):
            refund = await final_refund(base)
        assert fake.state()["refund_count"] == 1
        assert refund["status"] == "succeeded" and refund["amount_minor"] == 4000
