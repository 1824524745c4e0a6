"""1b. create_refund as the history grows: the same call on an empty database and after many refunds.

Two parts of every create_refund scale with what is already recorded: the balance sums the payment's
refunds, and the daily caps sum every refund in the currency over the last 24 hours. The overhead
benchmark starts from an empty database, so it cannot show this; here the history is bulk-inserted
(succeeded refunds, created now) and the service call timed before and after.
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
    from sqlalchemy import insert

    from refund_mcp.domain.ids import new_refund_id
    from refund_mcp.store import tables

    now = datetime.now(UTC)
    rows = [
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
            "created_at": now,
            "updated_at": now,
        }
        for index in range(count)
    ]
    for start in range(0, len(rows), 5000):
        async with app.db.engine.begin() as conn:
            await conn.execute(insert(tables.refunds), rows[start : start + 5000])


async def _analyze(app: Any) -> None:
    """Statistics (and PostgreSQL's visibility map, which index-only scans need) as a live database has them."""
    if app.db.dialect == "postgresql":
        async with app.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE refunds")
    else:
        async with app.db.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")


async def _drop_sum_indexes(app: Any) -> None:
    """The schema before step 9: what the balance and the daily totals cost without their covering indexes."""
    async with app.db.engine.begin() as conn:
        for name in ("ix_refunds_balance", "ix_refunds_daily_totals"):
            await conn.exec_driver_sql(f"DROP INDEX {name}")
    await _analyze(app)


async def _one(kind: str, cfg: Config) -> tuple[float, float, float]:
    async with fresh_db(kind, cfg) as url, make_app(url) as app:
        service = app.service
        for txn in (PAYMENT, OTHER):  # the refunds' transactions must be known (foreign key)
            await service.lookup_transaction(BENCH_ACTOR, txn)
        await _create_p50(service, 10, "warm")
        empty = await _create_p50(service, cfg.history_calls, "empty")
        # Zero-amount rows on the other payment keep its balance intact; they still have to be summed.
        await _add_history(app, OTHER, cfg.history_other, 0)
        await _add_history(app, PAYMENT, cfg.history_same, 1)
        await _analyze(app)
        full = await _create_p50(service, cfg.history_calls, "full")
        await _drop_sum_indexes(app)
        without = await _create_p50(service, cfg.history_calls, "noindex")
        return empty, full, without


async def run(cfg: Config) -> Section:
    total = cfg.history_other + cfg.history_same
    section = Section(
        name="history",
        title="1b. create_refund as the 24-hour history grows (service only, p50 ms)",
        columns=[
            "db",
            "empty database",
            f"after {total:,} refunds in the last 24 h",
            "ratio",
            "the same without the step-9 covering indexes",
            "ratio without",
        ],
    )
    kinds = ["sqlite"] + (["postgresql"] if await pg_available(cfg.pg_url) else [])
    raw: dict[str, Any] = {}
    for kind in kinds:
        empty, full, without, ratio, ratio_without = Spread(), Spread(), Spread(), Spread(), Spread()
        for repeat in range(cfg.process_repeats):
            log(f"history: {kind}, repeat {repeat + 1}/{cfg.process_repeats}")
            before, after, after_without = await _one(kind, cfg)
            empty.add(ms(before))
            full.add(ms(after))
            without.add(ms(after_without))
            ratio.add(after / before)
            ratio_without.add(after_without / before)
        section.rows.append(
            [kind, fmt_spread(empty), fmt_spread(full), f"{fmt(ratio.median)}×", fmt_spread(without), f"{fmt(ratio_without.median)}×"]
        )
        section.targets.append(
            Target(
                what=f"create_refund after {total:,} refunds in 24 h vs an empty day ({kind})",
                goal=f"≤ {TARGET_RATIO}×",
                measured=f"{fmt(ratio.median)}× (without the step-9 indexes {fmt(ratio_without.median)}×)",
                met=ratio.median <= TARGET_RATIO,
            )
        )
        raw[kind] = {
            "empty_ms": empty.as_dict(),
            "with_history_ms": full.as_dict(),
            "ratio": ratio.as_dict(),
            "with_history_no_sum_indexes_ms": without.as_dict(),
            "ratio_no_sum_indexes": ratio_without.as_dict(),
        }
    section.notes.append(
        f"History: {cfg.history_other:,} succeeded USD refunds on another payment and {cfg.history_same:,} on the refunded one, "
        f"all created in the last 24 hours and bulk-inserted, then ANALYZE (PostgreSQL: VACUUM ANALYZE, as autovacuum "
        f"would); {cfg.history_calls} create_refund calls timed on the empty database, after the history, and again after "
        f"dropping the two covering indexes of schema step 9 (the schema before it), all in one database per repeat "
        f"(RefundService directly, no MCP); repeats: {cfg.process_repeats}. Every refund re-sums the day (daily caps) and "
        "the payment's own refunds (balance)."
    )
    section.raw = raw
    return section
