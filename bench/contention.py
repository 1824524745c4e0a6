"""3. Contention: many concurrent partial refunds on ONE payment.

Every call competes for the same balance, so refund-mcp must serialize them (SQLite's write lock, or
the PostgreSQL audit-head row lock shared by all processes). Measured: the time for all calls to
drain, and the correctness that makes the serialization worth it: the refunds that succeeded never
add up to more than was captured, every refusal says why, and the audit chain still verifies.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import anyio

from bench.common import (
    Config,
    Section,
    Spread,
    error_code,
    fmt,
    fmt_spread,
    fresh_db,
    http_client_factory,
    http_servers,
    log,
    make_app,
    open_clients,
    pg_available,
    refund_args,
    unique_prefix,
)

TXN = "sandbox:demo_usd_order"  # USD 120.00 captured
AMOUNT = 100  # USD 1.00 each: 200 calls ask for USD 200.00, so 120 can succeed and the rest must be refused
EXPECTED_REFUSALS = {"amount_exceeds_refundable", "already_refunded"}


async def _fire(clients: list[Any], prefix: str) -> tuple[float, list[Any]]:
    """All calls start together; returns (seconds until the last one answered, the results)."""
    results: list[Any] = [None] * len(clients)
    go = anyio.Event()

    async def one(index: int) -> None:
        await go.wait()
        results[index] = await clients[index].call_tool("create_refund", refund_args(TXN, f"{prefix}-{index}", AMOUNT))

    async with anyio.create_task_group() as tg:
        for index in range(len(clients)):
            tg.start_soon(one, index)
        await anyio.sleep(0.05)  # let every task reach the start line
        start = time.perf_counter()
        go.set()
    return time.perf_counter() - start, results


async def _ledger(db_url: str) -> dict[str, Any]:
    """What the database says afterwards, read directly (not through the tools under test)."""
    from sqlalchemy import func, select

    from refund_mcp.audit import log as audit
    from refund_mcp.store import tables
    from refund_mcp.store.database import Database

    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            captured = (await conn.execute(select(tables.transactions.c.captured_minor).where(tables.transactions.c.id == TXN))).scalar_one()
            rows = (
                await conn.execute(
                    select(tables.refunds.c.status, func.count(), func.coalesce(func.sum(tables.refunds.c.amount_minor), 0))
                    .where(tables.refunds.c.transaction_id == TXN)
                    .group_by(tables.refunds.c.status)
                )
            ).all()
        by_status = {status: (int(count), int(total)) for status, count, total in rows}
        verified = await audit.verify(db.engine)
    finally:
        await db.dispose()
    succeeded = by_status.get("succeeded", (0, 0))[1]
    open_reserved = sum(total for status, (_, total) in by_status.items() if status not in ("succeeded", "failed", "cancelled"))
    return {
        "captured_minor": int(captured),
        "succeeded_minor": succeeded,
        "reserved_minor": open_reserved,
        "by_status": by_status,
        "audit_ok": verified.ok,
        "audit_records": verified.records,
        "audit_problem": verified.problem,
    }


def _judge(results: list[Any], ledger: dict[str, Any]) -> dict[str, Any]:
    ok = [r for r in results if not r.is_error]
    codes = Counter(error_code(r) for r in results if r.is_error)
    statuses = Counter(r.structured_content["status"] for r in ok)
    correct = (
        ledger["succeeded_minor"] + ledger["reserved_minor"] <= ledger["captured_minor"]
        and ledger["audit_ok"]
        and set(codes) <= EXPECTED_REFUSALS
        and sum(r.structured_content["amount_minor"] for r in ok) == ledger["succeeded_minor"] + ledger["reserved_minor"]
    )
    return {"accepted": len(ok), "statuses": dict(statuses), "refusals": dict(codes), "correct": correct, **ledger}


async def _in_process(kind: str, cfg: Config) -> tuple[float, dict[str, Any]]:
    async with fresh_db(kind, cfg) as url:
        async with make_app(url) as app, AsyncExitStack() as stack:
            clients = await open_clients(stack, [app.server], cfg.contention_calls)
            seconds, results = await _fire(clients, unique_prefix())
        return seconds, _judge(results, await _ledger(url))


async def _over_http(cfg: Config, processes: int) -> tuple[float, dict[str, Any]]:
    async with fresh_db("postgresql", cfg) as url:
        with http_servers(url, processes) as urls:
            http = http_client_factory()
            async with http, AsyncExitStack() as stack:
                clients = await open_clients(stack, urls, cfg.contention_calls, http)
                seconds, results = await _fire(clients, unique_prefix())
        return seconds, _judge(results, await _ledger(url))


async def run(cfg: Config) -> Section:
    section = Section(
        name="contention",
        title=f"3. Contention: {cfg.contention_calls} concurrent partial refunds on one payment",
        columns=["where", "drain time (s)", "refunds answered/s", "succeeded", "refused", "succeeded + reserved ≤ captured", "audit chain", "correct in every repeat"],
    )
    variants: list[tuple[str, Any]] = [("in-process, SQLite", lambda: _in_process("sqlite", cfg))]
    if await pg_available(cfg.pg_url):
        variants.append(("in-process, PostgreSQL", lambda: _in_process("postgresql", cfg)))
        variants.append((f"HTTP, {cfg.http_processes} serve processes, PostgreSQL", lambda: _over_http(cfg, cfg.http_processes)))
    else:
        section.notes.append("PostgreSQL unreachable: contention measured on SQLite only.")
    raw: dict[str, Any] = {}
    for label, measure in variants:
        drain, rate = Spread(), Spread()
        outcomes = []
        for repeat in range(cfg.repeats):
            log(f"contention: {label}, repeat {repeat + 1}/{cfg.repeats}")
            seconds, outcome = await measure()
            drain.add(seconds)
            rate.add(cfg.contention_calls / seconds)
            outcomes.append(outcome)
        last = outcomes[-1]
        section.rows.append(
            [
                label,
                fmt_spread(drain),
                fmt_spread(rate, 0),
                str(last["statuses"].get("succeeded", 0)) + (f" (+{last['accepted'] - last['statuses'].get('succeeded', 0)} other)" if last["accepted"] != last["statuses"].get("succeeded", 0) else ""),
                ", ".join(f"{n} {code}" for code, n in sorted(last["refusals"].items())) or "0",
                f"{last['succeeded_minor'] + last['reserved_minor']} ≤ {last['captured_minor']}",
                f"{'verifies' if last['audit_ok'] else 'BROKEN: ' + str(last['audit_problem'])} ({last['audit_records']} records)",
                "yes" if all(o["correct"] for o in outcomes) else "**NO**",
            ]
        )
        raw[label] = {"drain_seconds": drain.as_dict(), "per_second": rate.as_dict(), "outcomes": outcomes}
    section.notes.append(
        f"Each call asks for USD {AMOUNT / 100:.2f} of {TXN} (USD 120.00 captured) with its own idempotency key, so exactly "
        f"{12000 // AMOUNT} can succeed. All clients are connected first and released together; drain time is from the release "
        "to the last answer. The ledger is read straight from the database afterwards; the succeeded/refused columns show the last repeat."
    )
    section.raw = raw
    return section
