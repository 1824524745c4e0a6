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

from bench.common import BENCH_ACTOR, Config, Section, Spread, fmt, fmt_spread, fresh_db, log, make_app, ms, pg_available

PAYMENT = "sandbox:demo_usd_large"
OTHER = "sandbox:demo_usd_order"


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


async def _one(kind: str, cfg: Config) -> tuple[float, float]:
    async with fresh_db(kind, cfg) as url, make_app(url) as app:
        service = app.service
        for txn in (PAYMENT, OTHER):  # the refunds' transactions must be known (foreign key)
            await service.lookup_transaction(BENCH_ACTOR, txn)
        await _create_p50(service, 10, "warm")
        empty = await _create_p50(service, cfg.history_calls, "empty")
        # Zero-amount rows on the other payment keep its balance intact; they still have to be summed.
        await _add_history(app, OTHER, cfg.history_other, 0)
        await _add_history(app, PAYMENT, cfg.history_same, 1)
        full = await _create_p50(service, cfg.history_calls, "full")
        return empty, full


async def run(cfg: Config) -> Section:
    section = Section(
        name="history",
        title="1b. create_refund as the 24-hour history grows (service only, p50 ms)",
        columns=["db", "empty database", f"after {cfg.history_other + cfg.history_same:,} refunds in the last 24 h", "ratio"],
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
        raw[kind] = {"empty_ms": empty.as_dict(), "with_history_ms": full.as_dict(), "ratio": ratio.as_dict()}
    section.notes.append(
        f"History: {cfg.history_other:,} succeeded USD refunds on another payment and {cfg.history_same:,} on the refunded one, "
        f"all created in the last 24 hours and bulk-inserted; {cfg.history_calls} create_refund calls timed before and after "
        f"(RefundService directly, no MCP); repeats: {cfg.process_repeats}. A busy shop's day looks like this: every refund "
        "re-sums the day (daily caps) and the payment's own refunds (balance)."
    )
    section.raw = raw
    return section
