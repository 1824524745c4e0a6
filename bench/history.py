"""1b. create_refund as the history grows: the same call on an empty database and after many refunds.

Two parts of every create_refund could scale with what is already recorded: the balance (the payment's
refunds) and the daily caps (every refund in the currency over the last 24 hours). They are kept as
running totals on the payment's row and hourly cap counters (revision 0011), so neither should. The
overhead benchmark starts from an empty database, so it cannot show this; here the history is
bulk-inserted (succeeded refunds spread over the last 24 hours, with the cap counters they would have
taken) and the service call timed before and after.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import BENCH_ACTOR, Config, Section, Spread, Target, fmt, fmt_spread, fresh_db, log, make_app, ms, pg_available

PAYMENT = "sandbox:demo_usd_large"
OTHER = "sandbox:demo_usd_order"
TARGET_RATIO = 1.2


async def _create_p50(service: Any, calls: int, tag: str) -> float:
    from refund_mcp.service.refunds import RefundInput

    samples = []
    for index in range(calls):
        start = time.perf_counter()
        await service.create_refund(
            BENCH_ACTOR, RefundInput(transaction_id=PAYMENT, reason="service_issue", amount_minor=1, idempotency_key=f"{tag}-{index}")
        )
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def _add_history(app: Any, txn: str, count: int, amount: int) -> None:
    """`count` succeeded refunds of `amount` spread evenly over the last 24 hours, and what their reservations
    would have added to the hourly cap counters (a bulk insert does not take them; the triggers that keep the
    payment's running totals do run)."""
    from collections import Counter
    from datetime import timedelta

    from sqlalchemy import insert

    from refund_mcp.domain.ids import new_refund_id
    from refund_mcp.store import cap_usage, tables, upsert

    now = datetime.now(UTC)
    step = timedelta(hours=24) / max(count, 1)
    rows = []
    per_hour: Counter[datetime] = Counter()
    for index in range(count):
        created = now - step * (index + 1)
        per_hour[cap_usage.hour_of(created)] += amount
        rows.append(
            {
                "id": new_refund_id(),
                "transaction_id": txn,
                "processor": "sandbox",
                "status": "succeeded",
                "amount_minor": amount,
                "currency": "USD",
                "reason": "service_issue",
                "actor": BENCH_ACTOR,
                "origin": "agent",
                "fingerprint": f"{index:064x}",
                "attempts": 1,
                "maybe_sent": False,
                "created_at": created,
                "updated_at": created,
            }
        )
    for start in range(0, len(rows), 5000):
        async with app.db.engine.begin() as conn:
            await conn.execute(insert(tables.refunds), rows[start : start + 5000])
    buckets = tables.cap_usage
    async with app.db.engine.begin() as conn:
        for scope in cap_usage.scopes(BENCH_ACTOR):
            for hour, total in per_hour.items():
                statement = upsert.insert(conn, buckets).values(scope=scope, currency="USD", hour_start=hour, amount_minor=total)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[buckets.c.scope, buckets.c.currency, buckets.c.hour_start],
                        set_={"amount_minor": buckets.c.amount_minor + total},
                    )
                )


async def _analyze(app: Any) -> None:
    """Statistics (and PostgreSQL's visibility map, which index-only scans need) as a live database has them."""
    if app.db.dialect == "postgresql":
        async with app.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE refunds")
    else:
        async with app.db.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")


async def _one(kind: str, cfg: Config) -> tuple[float, float]:
    async with fresh_db(kind, cfg) as url, make_app(url) as app:
        service = app.service
        for txn in (PAYMENT, OTHER):  # the refunds' transactions must be known (foreign key)
            await service.lookup_transaction(BENCH_ACTOR, txn)
        await _create_p50(service, 10, "warm")
        empty = await _create_p50(service, cfg.history_calls, "empty")
        # Zero-amount rows on the other payment keep its balance intact; they are still counted.
        await _add_history(app, OTHER, cfg.history_other, 0)
        await _add_history(app, PAYMENT, cfg.history_same, 1)
        await _analyze(app)
        full = await _create_p50(service, cfg.history_calls, "full")
        return empty, full


async def run(cfg: Config) -> Section:
    total = cfg.history_other + cfg.history_same
    section = Section(
        name="history",
        title="1b. create_refund as the 24-hour history grows (service only, p50 ms)",
        columns=["db", "empty database", f"after {total:,} refunds in the last 24 h", "ratio"],
    )
    kinds = ["sqlite"] + (["postgresql"] if await pg_available(cfg.pg_url) else [])
    raw: dict[str, Any] = {}
    for kind in kinds:
        empty, full, ratio = Spread(), Spread(), Spread()
        for repeat in range(cfg.process_repeats):
            log(f"history: {kind}, repeat {repeat + 1}/{cfg.process_repeats}")
            before, after = await _one(kind, cfg)
            empty.add(ms(before))
            full.add(ms(after))
            ratio.add(after / before)
        section.rows.append([kind, fmt_spread(empty), fmt_spread(full), f"{fmt(ratio.median)}×"])
        section.targets.append(
            Target(
                what=f"create_refund after {total:,} refunds in 24 h vs an empty day ({kind})",
                goal=f"≤ {TARGET_RATIO}×",
                measured=f"{fmt(ratio.median)}×",
                met=ratio.median <= TARGET_RATIO,
            )
        )
        raw[kind] = {"empty_ms": empty.as_dict(), "with_history_ms": full.as_dict(), "ratio": ratio.as_dict()}
    section.notes.append(
        f"History: {cfg.history_other:,} succeeded USD refunds on another payment and {cfg.history_same:,} on the refunded one, "
        "created evenly over the last 24 hours and bulk-inserted with the hourly cap counters their reservations would "
        f"have taken, then ANALYZE (PostgreSQL: VACUUM ANALYZE, as autovacuum would); {cfg.history_calls} create_refund "
        "calls timed on the empty database and after the history, in one database per repeat (RefundService directly, "
        f"no MCP); repeats: {cfg.process_repeats}. The balance is read from the payment's running totals and the daily "
        "caps from at most 25 hourly counters per scope, so neither grows with the day's volume."
    )
    section.raw = raw
    return section
