"""8. Durable commits: create_refund on SQLite with `synchronous=FULL` (what refund-mcp runs) vs `NORMAL`.

FULL makes every commit reach the disk before it returns, so a reservation is never lost to a power
failure after the processor received the refund. The cost is one more fsync of the WAL per write
transaction; this measures it through the service (no MCP), sandbox processor, fresh database per
repeat. Reported as a ratio; nothing is asserted.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BENCH_ACTOR, Config, Section, Spread, fmt_spread, fresh_db, log, make_app, ms, percentile

TXN = "sandbox:demo_usd_large"


async def _create_p50(db_url: str, calls: int, warmup: int) -> float:
    from refund_mcp.service.refunds import RefundInput

    async with make_app(db_url) as app:
        samples = []
        for index in range(-warmup, calls):
            request = RefundInput(transaction_id=TXN, reason="service_issue", amount_minor=1, idempotency_key=f"dur-{index}")
            start = time.perf_counter()
            await app.service.create_refund(BENCH_ACTOR, request)
            if index >= 0:
                samples.append(time.perf_counter() - start)
    return ms(percentile(samples, 50))


async def run(cfg: Config) -> Section:
    from refund_mcp.store import database

    section = Section(
        name="durability",
        title="8. Durable commits: create_refund p50 on SQLite, synchronous=FULL vs NORMAL (service only, ms)",
        columns=["synchronous", "create_refund p50", "÷ NORMAL"],
    )
    calls, warmup = (30, 5) if cfg.quick else (cfg.overhead_calls, cfg.overhead_warmup)
    spreads: dict[str, Spread] = {"NORMAL": Spread(), "FULL": Spread()}
    configured = database.SQLITE_SYNCHRONOUS
    try:
        for repeat in range(cfg.repeats):
            for mode in ("NORMAL", "FULL"):  # interleaved so drift in machine load hits both alike
                log(f"durability: {mode} repeat {repeat + 1}/{cfg.repeats}")
                database.SQLITE_SYNCHRONOUS = mode
                async with fresh_db("sqlite", cfg) as url:
                    spreads[mode].add(await _create_p50(url, calls, warmup))
    finally:
        database.SQLITE_SYNCHRONOUS = configured
    ratio = Spread([full / normal for full, normal in zip(spreads["FULL"].values, spreads["NORMAL"].values)])
    section.rows.append(["NORMAL (before)", fmt_spread(spreads["NORMAL"]), "1.00"])
    section.rows.append(["FULL (now)", fmt_spread(spreads["FULL"]), fmt_spread(ratio)])
    section.notes.append(
        f"{calls} refunds per repeat after {warmup} warm-up calls; each create_refund makes 2 write transactions "
        "(reserve, record the answer), each one fsync more under FULL. The ratio is per repeat, FULL over NORMAL."
    )
    raw: dict[str, Any] = {mode: spread.as_dict() for mode, spread in spreads.items()}
    raw["ratio"] = ratio.as_dict()
    section.raw = raw
    return section


if __name__ == "__main__":
    import asyncio

    from bench.common import Config as _Config

    result = asyncio.run(run(_Config(quick=True, repeats=3)))
    for row in result.rows:
        print(" | ".join(row))
