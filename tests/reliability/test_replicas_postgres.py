"""Several `refund-mcp serve` processes on one PostgreSQL: no over-refund, one refund per key.

Real processes, a real database and the Stripe fake in its own process (it counts what it created).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import anyio
import httpx2
import pytest

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from refund_mcp.audit import log as audit
from refund_mcp.store.database import Database
from tests.conftest import TEST_POLICY
from tests.fakes.stripe import DEFAULT_API_KEY
from tests.support.fake_process import fake_processor
from tests.support.servers import http_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres]

CAPTURED = 10000
AMOUNT = 70  # 200 x USD 0.70 = USD 140.00 asked for, USD 100.00 captured: at most 142 can succeed
CALLS = 200
# A fresh connection per request: reusing one the server is closing for idleness (uvicorn's keep-alive
# timeout) fails on the client side with ReadError under this much load on two cores, which is a
# property of the load generator, not of the servers under test.
NO_KEEPALIVE = httpx2.Limits(max_connections=60, max_keepalive_connections=0)


def replica_env(db_url: str, fake_base: str) -> dict[str, str]:
    return {
        "REFUND_MCP_DB": db_url,
        "REFUND_MCP_POLICY": str(TEST_POLICY),
        "REFUND_MCP_SANDBOX": "0",
        "STRIPE_API_KEY": DEFAULT_API_KEY,
        "STRIPE_API_BASE": fake_base,
    }


async def call(http: httpx2.AsyncClient, base: str, tool: str, args: dict[str, Any]) -> Any:
    async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
        return await client.call_tool(tool, args)


async def test_three_replicas_and_200_concurrent_partial_refunds_never_over_refund(pg_database):
    with fake_processor("stripe") as fake, ExitStack() as stack:
        fake.seed(id="ch_replicas", amount_minor=CAPTURED, currency="USD")
        bases = [stack.enter_context(http_server(replica_env(pg_database, fake.base))) for _ in range(3)]
        results: list[Any] = [None] * CALLS
        limit = anyio.Semaphore(40)

        async def one(index: int, http: httpx2.AsyncClient) -> None:
            async with limit:
                results[index] = await call(
                    http, bases[index % 3], "create_refund",
                    {"transaction_id": "stripe:ch_replicas", "reason": "service_issue", "amount_minor": AMOUNT, "idempotency_key": f"r-{index}"},
                )

        async with httpx2.AsyncClient(timeout=120, limits=NO_KEEPALIVE) as http:
            async with anyio.create_task_group() as tg:
                for index in range(CALLS):
                    tg.start_soon(one, index, http)
            txn = (await call(http, bases[0], "lookup_transaction", {"transaction_id": "stripe:ch_replicas"})).structured_content

        accepted = [r.structured_content for r in results if not r.is_error]
        refused = [r.content[0].text for r in results if r.is_error]
        assert all("[amount_exceeds_refundable]" in text or "[already_refunded]" in text for text in refused), refused[:3]
        assert sum(r["amount_minor"] for r in accepted) <= CAPTURED
        assert len(accepted) == CAPTURED // AMOUNT
        assert txn["refunded_minor"] + txn["reserved_minor"] <= txn["captured_minor"]
        state = fake.state()
        assert state["refund_count"] == len(accepted)
        assert sum(r["amount"] for r in state["refunds"]) == len(accepted) * AMOUNT
    db = Database(pg_database)
    try:
        assert (await audit.verify(db.engine)).ok
    finally:
        await db.dispose()


async def test_the_same_idempotency_key_sent_to_two_replicas_at_once_makes_one_refund(pg_database):
    with fake_processor("stripe") as fake, ExitStack() as stack:
        fake.seed(id="ch_samekey", amount_minor=CAPTURED, currency="USD")
        bases = [stack.enter_context(http_server(replica_env(pg_database, fake.base))) for _ in range(2)]
        args = {"transaction_id": "stripe:ch_samekey", "reason": "service_issue", "amount_minor": 2500, "idempotency_key": "ticket-9"}
        results: list[Any] = [None] * 6
        async with httpx2.AsyncClient(timeout=120, limits=NO_KEEPALIVE) as http:

            async def one(index: int) -> None:
                results[index] = await call(http, bases[index % 2], "create_refund", args)

            async with anyio.create_task_group() as tg:
                for index in range(6):
                    tg.start_soon(one, index)
        ids = {r.structured_content["refund_id"] for r in results if not r.is_error}
        assert len(ids) == 1, [r.content for r in results]
        assert fake.state()["refund_count"] == 1
