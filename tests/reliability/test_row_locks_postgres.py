"""Two writers of one refund or payment on PostgreSQL take turns, with no lock every writer shares.

Each race is lined up, not hoped for: a third connection holds the contested row's lock while both
sides start (each on its own engine, as in two replicas), and lets go only once PostgreSQL shows
both waiting. A side that read the row without locking it would then act on what it read before
the other committed; with row locks the second reads the first's result.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from refund_mcp.app import App
from refund_mcp.audit import log as audit
from refund_mcp.domain.errors import NotSupported
from refund_mcp.domain.models import ProcessorRefund, RefundStatus
from refund_mcp.service import attempts
from refund_mcp.service.refunds import RefundInput
from refund_mcp.store import cap_usage, queries, tables
from refund_mcp.webhooks.events import PaymentEvent, RefundEvent
from tests.conftest import make_app

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

TXN = "sandbox:demo_usd_order"  # USD 120.00
POLICY = """\
version: 1
reasons: [duplicate, fraudulent, requested_by_customer, product_not_received, product_defective, service_issue]
limits:
  per_refund: {USD: 100000}
approval: {above: {USD: 2000}, expires_after_hours: 1}
duplicate_window_seconds: 900
rules:
  - when: {amount: {above: {USD: 5000}}}
    approval: {above: {USD: 5000}, approvers: 2}
"""
ONE_APPROVER = 3000
TWO_APPROVERS = 6000
UNREACHABLE_ONCE = 1099  # the sandbox fails the first attempt of amounts ending in 99 (not sent)


CAPPED_POLICY = """\
version: 1
reasons: [duplicate, fraudulent, requested_by_customer, product_not_received, product_defective, service_issue]
limits:
  per_refund: {USD: 100000}
  global_daily: {USD: 5000}
duplicate_window_seconds: 0
"""


@asynccontextmanager
async def two_replicas(db_url: str, tmp_path: Path, policy_text: str = POLICY) -> AsyncIterator[tuple[App, App]]:
    """Two apps on one database, each with its own engine and pool (as two server processes)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(make_app(db_url, policy=policy))
        second = await stack.enter_async_context(make_app(db_url, policy=policy))
        yield first, second


async def race(
    db_url: str, lock_sql: str, params: dict[str, Any], sides: Sequence[Awaitable[Any]], *, undo: bool = False
) -> list[Any]:
    """Run `sides` while another connection holds `lock_sql`'s row lock, releasing it once all of them wait
    (committing, or with `undo` rolling back: a row it inserted to hold a key then never existed).

    Each side is started only once the one before it waits, so they queue for the row in the order given."""
    holder = create_async_engine(db_url)
    watcher = create_async_engine(db_url)
    tasks: list[asyncio.Future[Any]] = []
    try:
        async with holder.connect() as conn:
            await conn.execute(text(lock_sql), params)  # autobegun: held until the commit below
            with anyio.fail_after(60):
                for side in sides:
                    tasks.append(asyncio.ensure_future(side))
                    while await waiting_on_locks(watcher) < len(tasks) and not tasks[-1].done():
                        pass  # each check is a round trip to the server, during which the side runs on
            await (conn.rollback() if undo else conn.commit())
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        await holder.dispose()
        await watcher.dispose()


async def waiting_on_locks(watcher: Any) -> int:
    async with watcher.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return int((await conn.execute(text(query))).scalar_one())


LOCK_REFUND = "SELECT id FROM refunds WHERE id = :id FOR UPDATE"
LOCK_PAYMENT = "SELECT id FROM transactions WHERE id = :id FOR UPDATE"


async def refund_row(app: App, refund_id: str) -> Any:
    async with app.db.read() as conn:
        return await queries.get_refund(conn, refund_id)


async def actions(app: App, refund_id: str) -> list[str]:
    return [record["action"] for record in await trail(app, refund_id)]


async def trail(app: App, refund_id: str) -> list[dict[str, Any]]:
    async with app.db.read() as conn:
        return await audit.trail(conn, refund_id)


async def parked(app: App, amount_minor: int) -> str:
    view = await app.service.create_refund("agent-1", RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=amount_minor))
    assert view.status == RefundStatus.PENDING_APPROVAL.value
    return view.refund_id


async def test_two_approvers_at_the_same_moment_make_one_final_approval_and_one_submission(pg_database, tmp_path):
    async with two_replicas(pg_database, tmp_path) as (first, second):
        refund_id = await parked(first, TWO_APPROVERS)
        results = await race(
            pg_database, LOCK_REFUND, {"id": refund_id},
            [first.service.approve(refund_id, approver="ops-a"), second.service.approve(refund_id, approver="ops-b")],
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert sorted(r.status for r in results) == ["pending_approval", "succeeded"]
        done = await actions(first, refund_id)
        assert done.count("approval.recorded") == 1
        assert done.count("approval.approved") == 1
        assert done.count("refund.submitted") == 1
        row = await refund_row(first, refund_id)
        assert row.status == RefundStatus.SUCCEEDED.value
        assert {row.approval_first_by, row.approval_decided_by} == {"ops-a", "ops-b"}
        assert (await audit.verify(first.db.engine)).ok


@pytest.mark.parametrize("first_in", ["approve", "cancel"])
async def test_approve_and_cancel_at_the_same_moment_one_wins(pg_database, tmp_path, first_in):
    async with two_replicas(pg_database, tmp_path) as (first, second):
        refund_id = await parked(first, ONE_APPROVER)
        sides = {"approve": first.service.approve(refund_id, approver="ops-a"), "cancel": second.service.cancel_refund("agent-1", refund_id)}
        order = [first_in, *(name for name in sides if name != first_in)]
        results = dict(zip(order, await race(pg_database, LOCK_REFUND, {"id": refund_id}, [sides[name] for name in order])))
        row = await refund_row(first, refund_id)
        done = await actions(first, refund_id)
        outcomes = [record["outcome"] for record in await trail(first, refund_id)]
        if first_in == "approve":  # sent; the cancel then finds it at the processor's side and is refused
            assert isinstance(results["cancel"], NotSupported), results["cancel"]
            assert results["approve"].status == row.status == RefundStatus.SUCCEEDED.value
            assert done.count("refund.submitted") == 1
            assert "cancelled" not in outcomes
        else:  # cancelled before anything was sent; the approval then finds nothing waiting
            assert isinstance(results["approve"], NotSupported), results["approve"]
            assert results["cancel"].status == row.status == RefundStatus.CANCELLED.value
            assert "approval.approved" not in done and "refund.submitted" not in done
        assert (await audit.verify(first.db.engine)).ok


@pytest.mark.parametrize("first_in", ["sweep", "approve"])
async def test_expiry_sweep_and_approval_at_the_same_moment_one_wins(pg_database, tmp_path, first_in):
    async with two_replicas(pg_database, tmp_path) as (first, second):
        refund_id = await parked(first, ONE_APPROVER)
        # The sweeping replica's clock is past the deadline; the approver's is a moment before it.
        deadline = (await refund_row(first, refund_id)).approval_expires_at
        first.service.clock = lambda: deadline + timedelta(seconds=1)
        second.service.clock = lambda: deadline - timedelta(seconds=1)
        sides = {"sweep": first.service.expire_approvals(), "approve": second.service.approve(refund_id, approver="ops-a")}
        order = [first_in, *(name for name in sides if name != first_in)]
        results = dict(zip(order, await race(pg_database, LOCK_REFUND, {"id": refund_id}, [sides[name] for name in order])))
        row = await refund_row(first, refund_id)
        done = await actions(first, refund_id)
        if first_in == "sweep":  # expired; the approval then finds nothing waiting, and nothing is sent
            assert isinstance(results["approve"], NotSupported), results["approve"]
            assert results["sweep"] == 1
            assert (row.status, row.approval_state) == (RefundStatus.CANCELLED.value, "expired")
            assert "refund.submitted" not in done
        else:  # approved; the sweep then finds nothing left to expire
            assert results["sweep"] == 0
            assert results["approve"].status == row.status == RefundStatus.SUCCEEDED.value
            assert "approval.expired" not in done and done.count("refund.submitted") == 1
        assert (await audit.verify(first.db.engine)).ok


@pytest.mark.parametrize("first_in", ["webhook", "attempt"])
async def test_a_webhook_success_and_an_attempt_answer_at_the_same_moment(pg_database, tmp_path, first_in):
    async with two_replicas(pg_database, tmp_path) as (first, second):
        view = await first.service.create_refund(
            "agent-1", RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=UNREACHABLE_ONCE)
        )
        assert view.status == RefundStatus.QUEUED.value  # first attempt not sent; waiting for its retry
        now = first.service.clock()
        async with first.db.write() as conn:  # an attempt takes its claim (a new fencing token) and calls out
            claim = attempts.Claim(await queries.claim(conn, view.refund_id, now, claimed_until=now + timedelta(minutes=1)))
        answer = ProcessorRefund(
            processor_refund_id="re_race", status=RefundStatus.PENDING, amount_minor=UNREACHABLE_ONCE, currency="USD", processor_status="pending"
        )
        event = RefundEvent(
            processor="sandbox", event_id="evt_race", processor_refund_id="re_race", status=RefundStatus.SUCCEEDED,
            processor_status="succeeded", amount_minor=UNREACHABLE_ONCE, currency="USD", our_refund_id=view.refund_id,
        )
        # Webhook first is the telling order: a writer that did not lock would have the attempt's older
        # "pending", read before the success committed, land on top of it.
        sides = {
            "webhook": second.service.apply_event(event),
            "attempt": attempts.record_answer(first.service.submitter.attempt, claim, answer, actor="refund-mcp", action="refund.submitted"),
        }
        order = [first_in, *(name for name in sides if name != first_in)]
        results = dict(zip(order, await race(pg_database, LOCK_REFUND, {"id": view.refund_id}, [sides[name] for name in order])))
        applied, recorded = results["webhook"], results["attempt"]
        assert applied == "applied", applied
        assert not isinstance(recorded, BaseException), recorded
        row = await refund_row(first, view.refund_id)
        assert row.status == RefundStatus.SUCCEEDED.value  # a final state never regresses
        assert row.processor_refund_id == "re_race"
        assert int(row.claim_token) == claim.token  # the webhook took no claim; the attempt's was current
        assert row.claimed_until is None  # and the attempt ended it
        assert (await audit.verify(first.db.engine)).ok


async def test_one_webhook_event_delivered_twice_at_the_same_moment_is_applied_once(pg_database, tmp_path):
    async with two_replicas(pg_database, tmp_path) as (first, second):
        view = await first.service.create_refund("agent-1", RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=1042))
        assert view.status == RefundStatus.PENDING.value  # the sandbox leaves amounts ending in 42 pending
        event = RefundEvent(
            processor="sandbox", event_id="evt_twice", processor_refund_id=view.processor_refund_id, status=RefundStatus.SUCCEEDED,
            processor_status="succeeded", amount_minor=1042, currency="USD", our_refund_id=view.refund_id,
        )
        holds_the_key = "INSERT INTO webhook_events (processor, event_id, received_at) VALUES ('sandbox', 'evt_twice', now())"
        results = await race(pg_database, holds_the_key, {}, [first.service.apply_event(event), second.service.apply_event(event)], undo=True)
        assert sorted(results) == ["applied", "replay"]  # waiters on a released key are woken in no set order
        assert (await refund_row(first, view.refund_id)).status == RefundStatus.SUCCEEDED.value
        assert (await actions(first, view.refund_id)).count("refund.webhook") == 1
        assert (await audit.verify(first.db.engine)).ok


async def test_two_events_of_a_new_payment_at_the_same_moment_build_on_each_other(pg_database, tmp_path):
    async with two_replicas(pg_database, tmp_path) as (first, second):
        def payment(event_id: str, captured: int, status: str) -> PaymentEvent:
            return PaymentEvent(processor="adyen", event_id=event_id, transaction_id="PSP_NEW", amount_minor=5000, currency="EUR",
                                captured_minor=captured, status=status)

        holds_the_key = (
            "INSERT INTO transactions (id, processor, processor_transaction_id, amount_minor, currency, captured_minor, "
            "processor_refunded_minor, status, refundable, first_seen_at, updated_at) "
            "VALUES ('adyen:PSP_NEW', 'adyen', 'PSP_NEW', 0, 'EUR', 0, 0, 'held', true, now(), now())"
        )
        # Whichever is recorded first, the other builds on it: an authorisation applied after the capture without
        # reading it would record the payment as uncaptured.
        results = await race(
            pg_database, holds_the_key, {},
            [first.service.apply_event(payment("evt_capture", 5000, "captured")), second.service.apply_event(payment("evt_auth", 0, "authorised"))],
            undo=True,
        )
        assert results == ["applied", "applied"]
        async with first.db.read() as conn:
            txn = await queries.get_transaction(conn, "adyen:PSP_NEW")
        assert (txn.captured_minor, txn.amount_minor) == (5000, 5000)
        assert (await audit.verify(first.db.engine)).ok


async def same_request_twice(pg_database: str, tmp_path: Path, *, key: str | None, on_record: bool) -> tuple[list[Any], list[Any], bool]:
    """Two replicas ask for the same refund at the same moment, with the payment's row held meanwhile (or, for a
    payment not on record yet, its key: both then record it first)."""
    async with two_replicas(pg_database, tmp_path) as (first, second):
        if on_record:
            await first.service.lookup_transaction("agent-1", TXN)
            holder, undo = LOCK_PAYMENT, False
        else:
            holder, undo = HOLD_NEW_PAYMENT, True
        req = RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=1000, idempotency_key=key)
        results = await race(
            pg_database, holder, {"id": TXN}, [first.service.create_refund("agent-1", req), second.service.create_refund("agent-1", req)],
            undo=undo,
        )
        async with first.db.read() as conn:
            rows = (await conn.execute(select(tables.refunds).where(tables.refunds.c.transaction_id == TXN))).all()
        return results, rows, (await audit.verify(first.db.engine)).ok


HOLD_NEW_PAYMENT = (
    "INSERT INTO transactions (id, processor, processor_transaction_id, amount_minor, currency, captured_minor, "
    "processor_refunded_minor, status, refundable, first_seen_at, updated_at) "
    "VALUES (:id, 'sandbox', 'held', 0, 'USD', 0, 0, 'held', true, now(), now())"
)


@pytest.mark.parametrize("on_record", [True, False], ids=["payment-on-record", "payment-new"])
@pytest.mark.parametrize("key", ["same-key", None], ids=["idempotency-key", "duplicate-window"])
async def test_the_same_request_from_two_replicas_returns_the_first_refund(pg_database, tmp_path, key, on_record):
    results, rows, chain_ok = await same_request_twice(pg_database, tmp_path, key=key, on_record=on_record)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(rows) == 1 and rows[0].status == RefundStatus.SUCCEEDED.value
    assert [r.refund_id for r in results] == [rows[0].id, rows[0].id]
    assert chain_ok


async def test_two_reservations_on_different_payments_never_exceed_a_daily_cap_together(pg_database, tmp_path):
    async with two_replicas(pg_database, tmp_path, CAPPED_POLICY) as (first, second):
        def three_thousand(txn: str) -> RefundInput:
            return RefundInput(transaction_id=txn, reason="service_issue", amount_minor=3000)

        # Every taker of the global cap takes this lock for the rest of its reservation (store/cap_usage.py).
        hold_the_global_cap = "SELECT pg_advisory_xact_lock(:space, :key)"
        held = {"space": cap_usage._ADVISORY_NAMESPACE, "key": cap_usage._lock_key(cap_usage.EVERYONE, "USD")}
        results = await race(
            pg_database, hold_the_global_cap, held,
            [first.service.create_refund("agent-1", three_thousand(TXN)), second.service.create_refund("agent-2", three_thousand("sandbox:demo_usd_large"))],
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(accepted) == 1 and accepted[0].status == RefundStatus.SUCCEEDED.value
        assert len(refused) == 1 and refused[0].code == "policy_denied", refused
        assert (await audit.verify(first.db.engine)).ok


async def test_a_read_waits_for_no_writer_and_refuses_to_write(pg_database):
    from refund_mcp.store.database import Database
    from sqlalchemy.exc import DBAPIError

    db = Database(pg_database)
    await db.migrate()
    holder = create_async_engine(pg_database)
    try:
        async with holder.connect() as conn:
            await conn.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
            with anyio.fail_after(30):
                async with db.read() as read:
                    assert (await read.execute(select(tables.audit_head.c.seq))).scalar_one() == 0
                # No write waits on the audit head either: only an append takes it.
                async with db.write() as write:
                    await write.execute(text("UPDATE transactions SET status = status"))
            await conn.rollback()
        with pytest.raises(DBAPIError, match="read-only transaction"):
            async with db.read() as read:
                await read.execute(text("UPDATE audit_head SET seq = seq"))
    finally:
        await holder.dispose()
        await db.dispose()
