"""The payment's running totals and the daily caps' hourly buckets, kept by triggers (revision 0011), on
SQLite and PostgreSQL: every status change moves them right, random histories leave them equal to a
fresh sum of the refunds, and the balance and the window totals read them."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, inspect, text

from refund_mcp.domain.models import TransactionInfo
from refund_mcp.store import cap_usage, migrations, queries, tables
from refund_mcp.store.database import Database
from tests.store.refund_rows import (
    BASE,
    STATUSES,
    Refund,
    add_payment,
    change_refund,
    delete_refund,
    expected_buckets,
    expected_totals,
    hours,
    insert_refund,
    stored_buckets,
    stored_totals,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(db_url: str) -> Any:
    database = Database(db_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.dispose()


async def assert_books_match(conn: Any, refunds: list[Refund], payments: list[str]) -> None:
    assert await stored_totals(conn) == expected_totals(refunds, payments)
    assert await stored_buckets(conn) == expected_buckets(refunds)
    assert await queries.running_total_mismatches(conn) == []


async def test_every_status_transition_moves_the_totals_and_the_buckets(db: Database) -> None:
    refunds: list[Refund] = []
    payments: list[str] = []
    async with db.write() as conn:
        for index, (before, after, maybe_sent) in enumerate(itertools.product(STATUSES, STATUSES, (False, True))):
            payment = f"sandbox:p{index}"
            payments.append(payment)
            await add_payment(conn, payment)
            refund = Refund(f"re_{index}", payment, before, 100 + index, maybe_sent=maybe_sent, actor=f"agent-{index % 3}",
                            created_at=BASE + hours(index % 4))
            await insert_refund(conn, refund)
            refunds.append(await change_refund(conn, refund, status=after))
        await assert_books_match(conn, refunds, payments)


async def test_a_failure_superseded_by_a_success_counts_again(db: Database) -> None:
    async with db.write() as conn:
        await add_payment(conn, "sandbox:p")
        refund = Refund("re_1", "sandbox:p", "queued", 700, created_at=BASE - hours(2))
        await insert_refund(conn, refund)
        history = [refund]
        for status in ("succeeded", "failed", "succeeded"):
            history.append(await change_refund(conn, history[-1], status=status))
            await assert_books_match(conn, [history[-1]], ["sandbox:p"])
        assert await queries.daily_totals(conn, currency="USD", since=BASE - hours(24), actor="agent-1") == (700, 700)


async def test_moving_a_refund_to_another_payment_and_deleting_it(db: Database) -> None:
    async with db.write() as conn:
        for payment in ("sandbox:a", "sandbox:b"):
            await add_payment(conn, payment)
        refund = Refund("re_1", "sandbox:a", "pending", 300)
        await insert_refund(conn, refund)
        moved = await change_refund(conn, refund, transaction_id="sandbox:b", maybe_sent=True, amount_minor=250)
        await assert_books_match(conn, [moved], ["sandbox:a", "sandbox:b"])
        await delete_refund(conn, moved)
        await assert_books_match(conn, [], ["sandbox:a", "sandbox:b"])


async def test_the_balance_reads_the_totals_with_the_same_meaning_as_the_old_sums(db: Database) -> None:
    async with db.write() as conn:
        await add_payment(conn, "sandbox:p", captured_minor=2000, processor_refunded_minor=900)
        for refund in (
            Refund("re_s", "sandbox:p", "succeeded", 200),
            Refund("re_p", "sandbox:p", "pending", 100),
            Refund("re_q", "sandbox:p", "queued", 50, maybe_sent=True),
            Refund("re_n", "sandbox:p", "queued", 40),
            Refund("re_a", "sandbox:p", "pending_approval", 30),
            Refund("re_f", "sandbox:p", "failed", 1000),
            Refund("re_x", "sandbox:p", "succeeded", 25, origin="external", actor="external"),
        ):
            await insert_refund(conn, refund)
        balance = await queries.balance(conn, await queries.get_transaction(conn, "sandbox:p", lock=True))
    # reserved: pending + both queued + pending_approval; at the processor: pending + the queued one maybe sent;
    # external: what the processor reports beyond what we know of (900 - 225 succeeded - 150 at the processor).
    assert balance == queries.Balance(captured_minor=2000, succeeded_minor=225, reserved_minor=220, external_unrecorded_minor=525, active_refunds=6)
    assert balance.refundable_minor == 2000 - 225 - 525 - 220


async def test_recording_the_payment_again_keeps_its_running_totals(db: Database) -> None:
    info = TransactionInfo(processor="sandbox", transaction_id="p", amount_minor=5000, currency="USD", captured_minor=5000,
                           refunded_minor=0, status="succeeded", created_at=BASE, customer_ref=None, description=None, refundable=True)
    async with db.write() as conn:
        await queries.upsert_transaction(conn, "sandbox:p", info, BASE)
        await insert_refund(conn, Refund("re_1", "sandbox:p", "queued", 400))
        await queries.upsert_transaction(conn, "sandbox:p", info, BASE + hours(1))
        assert (await stored_totals(conn))["sandbox:p"] == (400, 0, 0, 1)


async def test_the_window_starts_at_the_hour_so_it_never_counts_less_than_24_hours(db: Database) -> None:
    now = BASE + timedelta(hours=25, minutes=10)
    async with db.write() as conn:
        await add_payment(conn, "sandbox:p")
        await insert_refund(conn, Refund("re_old", "sandbox:p", "succeeded", 1, created_at=BASE + timedelta(minutes=59)))  # 24 h 11 min ago
        await insert_refund(conn, Refund("re_edge", "sandbox:p", "succeeded", 10, created_at=BASE + hours(1)))  # 24 h 10 min ago: counted
        await insert_refund(conn, Refund("re_new", "sandbox:p", "queued", 100, created_at=now, actor="agent-2"))
        assert await queries.daily_totals(conn, currency="USD", since=now - hours(24), actor="agent-1") == (10, 110)
        assert await queries.daily_totals(conn, currency="EUR", since=now - hours(24), actor="agent-1") == (0, 0)


async def test_old_counters_are_pruned_once_an_hour_and_the_window_is_unchanged(db: Database) -> None:
    from refund_mcp.service.daily_caps import CounterPruner

    now = BASE + timedelta(hours=60, minutes=30)
    async with db.write() as conn:
        await add_payment(conn, "sandbox:p")
        for index, age in enumerate((59, 50, 48, 20, 0)):  # hours before `now`
            created = now - hours(age)
            await insert_refund(conn, Refund(f"re_{index}", "sandbox:p", "succeeded", 10**index, created_at=created))
        stored = await stored_buckets(conn)
        window = await queries.daily_totals(conn, currency="USD", since=now - hours(24), actor="agent-1")
    clock = [now]
    pruner = CounterPruner(db, lambda: clock[0])
    assert await pruner.prune_if_due() == 4  # the 59 h and 50 h old hours, both scopes; 48 h is kept (49 h kept)
    async with db.read() as conn:
        left = await stored_buckets(conn)
        assert await queries.daily_totals(conn, currency="USD", since=now - hours(24), actor="agent-1") == window
    assert left == {key: value for key, value in stored.items() if key[2] >= cap_usage.hour_of(now - cap_usage.KEEP)}
    assert len(left) == len(stored) - 4
    # Within the same hour nothing more is done; an hour later the next hour is pruned.
    async with db.write() as conn:
        await insert_refund(conn, Refund("re_late", "sandbox:p", "succeeded", 7, created_at=now - hours(55)))
    assert await pruner.prune_if_due() == 0
    clock[0] = now + hours(1)
    assert await pruner.prune_if_due() == 2


class Refused(Exception):
    pass


async def test_taking_cap_usage_fills_a_cap_exactly_and_refuses_beyond(db: Database) -> None:
    now = BASE + timedelta(minutes=30)
    everyone, mine = cap_usage.scopes("agent-1")

    async def attempt(amount: int, caps: dict[str, int | None]) -> str | None:
        """One reservation's take; a refusal rolls its transaction back, as the reservation's does."""
        try:
            async with db.write() as conn:
                refused = await cap_usage.take(conn, actor="agent-1", currency="USD", created_at=now, amount_minor=amount, caps=caps)
                if refused is not None:
                    raise Refused(refused)
        except Refused as exc:
            return str(exc)
        return None

    async with db.write() as conn:
        await add_payment(conn, "sandbox:p")
        await insert_refund(conn, Refund("re_past", "sandbox:p", "succeeded", 600, created_at=now - hours(3)))
    assert await attempt(300, {everyone: 1000, mine: 900}) is None  # the actor's 900 of 900
    assert await attempt(1, {everyone: 1000, mine: 900}) == mine  # "*" passed first: rolled back with the refusal
    assert await attempt(100, {everyone: 1000, mine: None}) is None  # everyone's 1000 of 1000
    assert await attempt(1, {everyone: 1000}) == everyone
    assert await attempt(50, {}) is None  # no cap: always counted
    async with db.read() as conn:
        assert await queries.daily_totals(conn, currency="USD", since=now - hours(24), actor="agent-1") == (1050, 1050)


async def test_the_cap_take_reuses_an_earlier_read_only_where_nothing_can_have_changed_it(db: Database) -> None:
    """The reservation passes the policy's window read to the take. Only SQLite reuses it (the transaction has
    held the write lock since), and only for the same hour; otherwise the buckets are read again."""
    now = BASE + timedelta(minutes=30)
    everyone, mine = cap_usage.scopes("agent-1")
    caps = {everyone: None, mine: 900}
    async with db.write() as conn:
        await add_payment(conn, "sandbox:p")
        await insert_refund(conn, Refund("re_past", "sandbox:p", "succeeded", 600, created_at=now - hours(3)))
    # As if read before re_past was counted.
    blind = cap_usage.WindowRead(
        scopes=(everyone, mine), currency="USD", start=cap_usage.hour_of(now - hours(24)), current=cap_usage.hour_of(now),
        totals={}, this_hour={},
    )

    async def refused_with(seen: cap_usage.WindowRead) -> str | None:
        """The take's answer; its transaction rolled back, as a refused reservation's is."""
        with pytest.raises(Refused) as refusal:
            async with db.write() as conn:
                raise Refused(await cap_usage.take(conn, actor="agent-1", currency="USD", created_at=now, amount_minor=400, caps=caps, seen=seen))
        return refusal.value.args[0]

    assert await refused_with(replace(blind, start=blind.start - hours(1), current=blind.current - hours(1))) == mine
    if db.dialect == "postgresql":  # read again under the scopes' locks, whatever was seen before
        assert await refused_with(blind) == mine
    async with db.write() as conn:
        seen = await queries.daily_window(conn, currency="USD", at=now, actor="agent-1")
        assert (seen.total(mine), seen.before_this_hour(mine)) == (600, 600)
        assert await cap_usage.take(conn, actor="agent-1", currency="USD", created_at=now, amount_minor=300, caps=caps, seen=seen) is None
    async with db.read() as conn:
        assert await queries.daily_totals(conn, currency="USD", since=now - hours(24), actor="agent-1") == (900, 900)


async def test_a_corrupted_total_is_found(db: Database) -> None:
    async with db.write() as conn:
        await add_payment(conn, "sandbox:p")
        await insert_refund(conn, Refund("re_1", "sandbox:p", "queued", 400))
        await conn.execute(text("UPDATE transactions SET reserved_minor = 1 WHERE id = 'sandbox:p'"))
        [row] = await queries.running_total_mismatches(conn)
    assert (row.id, row.reserved_minor, row.summed_reserved_minor) == ("sandbox:p", 1, 400)


async def test_upgrading_a_0010_database_backfills_the_totals_and_the_buckets(db_url: str) -> None:
    database = Database(db_url)
    try:
        await migrations.upgrade(database.engine, "0010")
        refunds = [
            Refund(f"re_{index}", f"sandbox:p{index % 3}", status, 100 * (index + 1), maybe_sent=index % 2 == 1,
                   origin="external" if index == 5 else "agent", actor=f"agent-{index % 2}", created_at=BASE + hours(index % 3))
            for index, status in enumerate(STATUSES * 2)
        ]
        payments = sorted({refund.transaction_id for refund in refunds})
        async with database.write() as conn:
            for payment in payments:
                await add_payment(conn, payment)
            for refund in refunds:
                await insert_refund(conn, refund, take_cap_usage=False)
        assert "0011" in [step.revision for step in await database.migrate()]
        async with database.read() as conn:
            await assert_books_match(conn, refunds, payments)
        await migrations.downgrade(database.engine, "0010")
        async with database.engine.connect() as conn:
            columns = await conn.run_sync(lambda sync: {column["name"] for column in inspect(sync).get_columns("transactions")})
            assert "reserved_minor" not in columns and not await conn.run_sync(lambda sync: inspect(sync).has_table("cap_usage"))
        async with database.write() as conn:  # the triggers went with them: refunds can change again at 0010
            await change_refund(conn, refunds[0], status="cancelled")
        await database.migrate()
        async with database.read() as conn:
            await assert_books_match(conn, [replace(refunds[0], status="cancelled"), *refunds[1:]], payments)
    finally:
        await database.dispose()


# --- random histories ---------------------------------------------------------------------------------

PAYMENTS = ["sandbox:a", "sandbox:b", "sandbox:c"]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(PAYMENTS), st.sampled_from(STATUSES), st.integers(0, 5000),
                  st.booleans(), st.sampled_from(["agent", "agent", "external"]), st.sampled_from(["agent-1", "agent-2"]),
                  st.sampled_from(["USD", "EUR"]), st.integers(0, 26 * 60)),
        st.tuples(st.just("status"), st.integers(0, 30), st.sampled_from(STATUSES)),
        st.tuples(st.just("maybe_sent"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("amount"), st.integers(0, 30), st.integers(0, 5000)),
        st.tuples(st.just("move"), st.integers(0, 30), st.sampled_from(PAYMENTS)),
        st.tuples(st.just("delete"), st.integers(0, 30)),
    ),
    max_size=25,
)


async def _replay(db: Database, ops: list[tuple[Any, ...]]) -> None:
    async with db.write() as conn:
        for table in (tables.refunds, tables.cap_usage, tables.transactions):
            await conn.execute(delete(table))
        for payment in PAYMENTS:
            await add_payment(conn, payment)
        live: list[Refund] = []
        for serial, (kind, *args) in enumerate(ops):
            if kind == "insert":
                payment, status, amount, maybe_sent, origin, actor, currency, minutes = args
                refund = Refund(f"re_{serial}", payment, status, amount, maybe_sent, origin, actor, currency, BASE + timedelta(minutes=minutes))
                await insert_refund(conn, refund)
                live.append(refund)
                continue
            if not live:
                continue
            index = args[0] % len(live)
            if kind == "delete":
                await delete_refund(conn, live.pop(index))
                continue
            column = {"status": "status", "maybe_sent": "maybe_sent", "amount": "amount_minor", "move": "transaction_id"}[kind]
            live[index] = await change_refund(conn, live[index], **{column: args[1]})
        await assert_books_match(conn, live, PAYMENTS)
        now = BASE + timedelta(hours=26)
        for actor, currency in itertools.product(("agent-1", "agent-2"), ("USD", "EUR")):
            since = now - hours(24)
            window = [r for r in live if r.counted and r.currency == currency and r.created_at >= cap_usage.hour_of(since)]
            expected = (sum(r.amount_minor for r in window if r.actor == actor), sum(r.amount_minor for r in window))
            assert await queries.daily_totals(conn, currency=currency, since=since, actor=actor) == expected


async def test_random_histories_keep_the_totals_equal_to_the_sums(db: Database) -> None:
    def search() -> None:
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(ops=operations)
        def replay(ops: list[tuple[Any, ...]]) -> None:
            anyio.from_thread.run(_replay, db, ops)

        replay()

    await anyio.to_thread.run_sync(search)


def test_hours_are_floored_in_utc() -> None:
    assert cap_usage.hour_of(datetime.fromisoformat("2026-12-05T06:59:59.999999+00:00")) == BASE
