"""3. Contention: many concurrent partial refunds on ONE payment.

Every call competes for the same balance, so refund-mcp must serialize them (SQLite's write lock, or
the payment's row lock on PostgreSQL, which all processes take). Measured: the time for all calls to
drain, and the correctness that makes the serialization worth it: the refunds that succeeded never
add up to more than was captured, every refusal says why, and the audit chain still verifies.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.common import (
    Config,
    Section,
    Spread,
    describe_error,
    error_code,
    fmt_spread,
    fresh_db,
    http_client_factory,
    http_servers,
    log,
    make_app,
    pg_available,
    refund_args,
    run_clients,
    unique_prefix,
)

TXN = "sandbox:demo_usd_order"  # USD 120.00 captured
CAPTURED = 12000
SCRIPTED = {13, 42, 77, 99}  # sandbox amounts ending in these fail or stall on purpose; avoid them


def amount_for(calls: int) -> int:
    """Each call's amount, so that all calls together ask for 5/3 of the payment: 200 calls x USD 1.00
    = USD 200.00 against USD 120.00 captured. About 60% can succeed; the rest must be refused."""
    amount = max(1, round(CAPTURED * 5 / 3 / calls))
    while amount % 100 in SCRIPTED:
        amount += 1
    return amount
EXPECTED_REFUSALS = {"amount_exceeds_refundable", "already_refunded"}


async def _fire(targets: list[Any], calls: int, amount: int, http: Any = None) -> tuple[float, list[Any], list[str]]:
    """All clients connect, then are released together; returns (seconds until the last answer, results, client failures)."""
    prefix = unique_prefix()
    results: list[Any] = [None] * calls
    answered: list[float] = []

    async def call(client: Any, index: int) -> None:
        results[index] = await client.call_tool("create_refund", refund_args(TXN, f"{prefix}-{index}", amount))
        answered.append(time.perf_counter())

    released, errors = await run_clients(targets, calls, call, http=http)
    failures = [describe_error(e) for e in errors if e is not None]
    return (max(answered) - released if answered else float("nan")), [r for r in results if r is not None], failures


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


def _judge(results: list[Any], failures: list[str], ledger: dict[str, Any], amount: int, calls: int) -> dict[str, Any]:
    ok = [r for r in results if not r.is_error]
    codes = Counter(error_code(r) for r in results if r.is_error)
    statuses = Counter(r.structured_content["status"] for r in ok)
    # The money check holds whatever the transport did: the ledger never exceeds the payment.
    money_ok = ledger["succeeded_minor"] + ledger["reserved_minor"] <= ledger["captured_minor"] and ledger["audit_ok"]
    correct = (
        money_ok
        and set(codes) <= EXPECTED_REFUSALS
        and sum(r.structured_content["amount_minor"] for r in ok) == ledger["succeeded_minor"] + ledger["reserved_minor"]
        # Serialization must not refuse too much either: every unit that could be refunded was
        # (only checkable when every call got an answer).
        and (bool(failures) or len(ok) == min(calls, CAPTURED // amount))
    )
    return {
        "accepted": len(ok),
        "statuses": dict(statuses),
        "refusals": dict(codes),
        "client_failures": dict(Counter(failures)),
        "money_ok": money_ok,
        "correct": correct,
        **ledger,
    }


async def _in_process(kind: str, cfg: Config) -> tuple[float, dict[str, Any]]:
    amount = amount_for(cfg.contention_calls)
    async with fresh_db(kind, cfg) as url:
        async with make_app(url) as app:
            seconds, results, failures = await _fire([app.server], cfg.contention_calls, amount)
        return seconds, _judge(results, failures, await _ledger(url), amount, cfg.contention_calls)


async def _over_http(cfg: Config, processes: int) -> tuple[float, dict[str, Any]]:
    amount = amount_for(cfg.contention_calls)
    async with fresh_db("postgresql", cfg) as url:
        with http_servers(url, processes) as urls:
            async with http_client_factory() as http:
                seconds, results, failures = await _fire(urls, cfg.contention_calls, amount, http)
        return seconds, _judge(results, failures, await _ledger(url), amount, cfg.contention_calls)


async def run(cfg: Config) -> Section:
    section = Section(
        name="contention",
        title=f"3. Contention: {cfg.contention_calls} concurrent partial refunds on one payment",
        columns=["where", "drain time (s)", "refunds answered/s", "succeeded", "refused", "transport failures (all repeats)", "succeeded + reserved ≤ captured", "audit chain", "correct in every repeat"],
    )
    # In-process on SQLite (one process, one lock) and over HTTP with several processes on PostgreSQL
    # (the cross-process case the payment's row lock exists for). In-process PostgreSQL adds little
    # over both and would cost a minute of the ten the whole run may take.
    variants: list[tuple[str, Any, int]] = [("in-process, SQLite", lambda: _in_process("sqlite", cfg), cfg.repeats)]
    if await pg_available(cfg.pg_url):
        label = f"HTTP, {cfg.http_processes} serve processes, PostgreSQL"
        variants.append((label, lambda: _over_http(cfg, cfg.http_processes), cfg.process_repeats))
    else:
        section.notes.append("PostgreSQL unreachable: contention measured on SQLite only.")
    raw: dict[str, Any] = {}
    for label, measure, repeats in variants:
        drain, rate = Spread(), Spread()
        outcomes = []
        for repeat in range(repeats):
            log(f"contention: {label}, repeat {repeat + 1}/{repeats}")
            seconds, outcome = await measure()
            drain.add(seconds)
            rate.add(cfg.contention_calls / seconds)
            outcomes.append(outcome)
        last = outcomes[-1]
        failures: Counter[str] = Counter()
        for outcome in outcomes:
            failures.update(outcome["client_failures"])
        section.rows.append(
            [
                label,
                fmt_spread(drain),
                fmt_spread(rate, 0),
                str(last["statuses"].get("succeeded", 0)) + (f" (+{last['accepted'] - last['statuses'].get('succeeded', 0)} other)" if last["accepted"] != last["statuses"].get("succeeded", 0) else ""),
                ", ".join(f"{n} {code}" for code, n in sorted(last["refusals"].items())) or "0",
                ", ".join(f"{n} {kind}" for kind, n in sorted(failures.items())) or "0",
                f"{last['succeeded_minor'] + last['reserved_minor']} ≤ {last['captured_minor']}",
                f"{'verifies' if last['audit_ok'] else 'BROKEN: ' + str(last['audit_problem'])} ({last['audit_records']} records)",
                "yes" if all(o["correct"] for o in outcomes) else "**NO**",
            ]
        )
        raw[label] = {"drain_seconds": drain.as_dict(), "per_second": rate.as_dict(), "outcomes": outcomes}
    amount = amount_for(cfg.contention_calls)
    section.notes.append(
        f"Each call asks for USD {amount / 100:.2f} of {TXN} (USD 120.00 captured) with its own idempotency key, so at most "
        f"{CAPTURED // amount} can succeed. All clients are connected first and released together; drain time is from the release "
        "to the last answer. The ledger is read straight from the database afterwards; the succeeded/refused columns show the last repeat. "
        f"Repeats: {cfg.repeats} in-process, {cfg.process_repeats} over HTTP (each restarts the servers on a fresh database)."
    )
    section.raw = raw
    return section
