"""Which transactions the service's tools take (SQLite and PostgreSQL).

The reserve transaction takes the payment's row before it checks the idempotency key and the duplicate
window, so identical concurrent requests queue on that row and the later ones see the first's refund.
A key committed meanwhile for another payment (no shared row to queue on) still ends as the original
refund or [idempotency_conflict], never an internal error. The read-only tools write nothing inside
`db.read()`: only the payment refresh and their audit record, in one short `db.write()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from sqlalchemy import event, select

from mcp import Client
from refund_mcp.audit import log as audit
from refund_mcp.audit import sealing
from refund_mcp.domain.errors import IdempotencyConflict
from refund_mcp.service.refunds import RefundInput
from refund_mcp.store import queries, tables
from tests.conftest import make_app

pytestmark = pytest.mark.anyio

TXN = "sandbox:demo_usd_order"  # USD 120.00 captured
OTHER_TXN = "sandbox:demo_jpy_order"
CALLS = 12


async def _actions(app: Any, action: str) -> list[Any]:
    # On PostgreSQL a record committed while another write's sealer held the chain's head waits in audit_pending
    # for the next sealer (the documented window): seal what is committed before counting the chain.
    await sealing.seal_all(app.db.engine)
    async with app.db.read() as conn:
        return (await conn.execute(select(tables.audit_log).where(tables.audit_log.c.action == action))).all()


async def _refund_ids(app: Any) -> list[str]:
    async with app.db.read() as conn:
        return [row.id for row in (await conn.execute(select(tables.refunds.c.id))).all()]


async def identical_requests_make_one_refund(app: Any, key: str | None) -> None:
    results: list[Any] = [None] * CALLS
    args: dict[str, Any] = {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 700}
    if key is not None:
        args["idempotency_key"] = key

    async def one(index: int) -> None:
        async with Client(app.server) as client:
            results[index] = await client.call_tool("create_refund", args)

    async with anyio.create_task_group() as tg:
        for index in range(CALLS):
            tg.start_soon(one, index)
    assert not [r.content[0].text for r in results if r.is_error]
    assert len({r.structured_content["refund_id"] for r in results}) == 1
    assert len(await _refund_ids(app)) == 1
    repeated = await _actions(app, "refund.replay" if key is not None else "refund.duplicate")
    assert len(repeated) == CALLS - 1
    async with Client(app.server) as client:
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content
    assert txn["refunded_minor"] + txn["reserved_minor"] == 700
    assert (await audit.verify(app.db.engine)).ok


@pytest.mark.parametrize("key", ["same-key", None])
async def test_identical_concurrent_requests_make_one_refund_on_sqlite(app_factory, key):
    async with app_factory() as app:
        await identical_requests_make_one_refund(app, key)


@pytest.mark.postgres
@pytest.mark.parametrize("key", ["same-key", None])
async def test_identical_concurrent_requests_make_one_refund_on_postgresql(pg_database, key):
    async with make_app(pg_database) as app:
        await identical_requests_make_one_refund(app, key)


def _first_key_lookup_misses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """As if the key's first owner committed just after this reservation looked for the key."""
    real = queries.get_idempotency
    calls: list[int] = []

    async def late(conn: Any, actor: str, key: str) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else await real(conn, actor, key)

    monkeypatch.setattr(queries, "get_idempotency", late)
    return calls


async def test_a_key_committed_meanwhile_for_another_payment_is_a_conflict_not_an_internal_error(app_factory, monkeypatch):
    async with app_factory() as app:
        first = await app.service.create_refund("agent-1", RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=500, idempotency_key="k-1"))
        calls = _first_key_lookup_misses(monkeypatch)
        with pytest.raises(IdempotencyConflict, match=first.refund_id):
            await app.service.create_refund(
                "agent-1", RefundInput(transaction_id=OTHER_TXN, reason="service_issue", amount_minor=500, idempotency_key="k-1")
            )
        assert len(calls) == 2  # the reservation was taken once more, and then saw the key
        assert await _refund_ids(app) == [first.refund_id]
        assert [row.error_code for row in await _actions(app, "refund.create")] == ["idempotency_conflict"]


async def test_a_key_committed_meanwhile_for_the_same_request_replays_the_original(app_factory, monkeypatch):
    async with app_factory() as app:
        req = RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=500, idempotency_key="k-2")
        first = await app.service.create_refund("agent-1", req)
        _first_key_lookup_misses(monkeypatch)
        again = await app.service.create_refund("agent-1", req)
        assert again.refund_id == first.refund_id
        assert await _refund_ids(app) == [first.refund_id]
        assert len(await _actions(app, "refund.replay")) == 1


class TransactionLog:
    """Counts the service's write transactions (not one a read may be built on), and any statement
    that writes inside a read."""

    def __init__(self, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes = 0
        self.opening_read = False
        self.written_in_read: list[str] = []
        real_read, real_write = app.db.read, app.db.write

        @asynccontextmanager
        async def read() -> AsyncIterator[Any]:
            self.opening_read = True
            async with real_read() as conn:
                self.opening_read = False  # a write() opened by read() itself (if it is built on one) is not counted
                conn.sync_connection.info["in_read"] = True
                try:
                    yield conn
                finally:
                    conn.sync_connection.info.pop("in_read", None)

        @asynccontextmanager
        async def write() -> AsyncIterator[Any]:
            self.writes += 0 if self.opening_read else 1
            self.opening_read = False
            async with real_write() as conn:
                yield conn

        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if conn.info.get("in_read") and statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
                self.written_in_read.append(statement)

        monkeypatch.setattr(app.db, "read", read)
        monkeypatch.setattr(app.db, "write", write)
        event.listen(app.db.engine.sync_engine, "before_cursor_execute", before)
        self.reset()

    def reset(self) -> None:
        self.writes = 0

    def counts(self) -> int:
        counted = self.writes
        self.reset()
        return counted


async def read_only_tools_write_only_in_short_writes(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    refund = await app.service.create_refund("agent-1", RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=300))
    log = TransactionLog(app, monkeypatch)
    service = app.service

    view = await service.lookup_transaction("agent-1", TXN)
    assert view.reserved_minor + view.refunded_minor == 300
    assert log.counts() == 1  # upsert + audit; the view is read

    check = await service.check_refund_policy("agent-1", TXN, "service_issue", 500)
    assert check.decision == "allow"
    assert log.counts() == 2  # the payment refresh; the evaluation is read; the audit record
    assert [row.outcome for row in await _actions(app, "policy.check")] == ["allow"]
    log.reset()

    status = await service.get_refund_status("agent-1", refund.refund_id, refresh=False)
    assert status.status == "succeeded"
    assert log.counts() == 1

    page = await service.list_refunds("agent-1", transaction_id=TXN)
    assert [r.refund_id for r in page.refunds] == [refund.refund_id]
    assert log.counts() == 1

    shown = await service.refund_for_agent("agent-1", refund.refund_id)
    assert shown["refund"]["refund_id"] == refund.refund_id
    assert log.counts() == 1
    assert len(await _actions(app, "refund.read")) == 1
    assert log.written_in_read == []


async def test_read_only_tools_write_only_in_short_writes_on_sqlite(app_factory, monkeypatch):
    async with app_factory() as app:
        await read_only_tools_write_only_in_short_writes(app, monkeypatch)


@pytest.mark.postgres
async def test_read_only_tools_write_only_in_short_writes_on_postgresql(pg_database, monkeypatch):
    async with make_app(pg_database) as app:
        await read_only_tools_write_only_in_short_writes(app, monkeypatch)
