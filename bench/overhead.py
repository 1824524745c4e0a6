"""1. Per-call overhead: refund-mcp's tools against a no-op tool on a bare MCPServer, in one process.

Both go through the SDK's in-process `Client(server)`, so the MCP machinery (request validation,
argument parsing, result serialization, the client's output-schema check) is in both; the
difference is what refund-mcp adds: policy, database transactions, audit chain, processor call.
The same service calls are also timed without MCP ("service only") to split the two.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    BENCH_ACTOR,
    Config,
    Section,
    Spread,
    Target,
    fmt,
    fmt_spread,
    fresh_db,
    log,
    make_app,
    ms,
    percentile,
    pg_available,
    refund_args,
    unique_prefix,
)

CREATE_TXN = "sandbox:demo_usd_large"  # USD 900.00: room for 90000 one-cent refunds
READ_TXN = "sandbox:demo_usd_order"  # untouched by the create loop, so reads see the same small payment
# The targets: p50 ÷ the empty-tool floor, per tool and database.
TARGETS = {
    ("create_refund", "sqlite"): 4.0,
    ("create_refund", "postgresql"): 5.0,
    ("lookup_transaction", "sqlite"): 1.5,
    ("check_refund_policy", "sqlite"): 1.5,
}


def bare_server() -> Any:
    """The floor: an MCPServer with one tool that does nothing."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bare")

    @server.tool()
    def noop(transaction_id: str) -> str:
        """Does nothing."""
        return "ok"

    return server


async def _time_calls(count: int, warmup: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    for index in range(warmup):
        await call(-1 - index)
    samples = []
    for index in range(count):
        start = time.perf_counter()
        await call(index)
        samples.append(time.perf_counter() - start)
    return samples


def _checked(result: Any) -> Any:
    if getattr(result, "is_error", False):
        raise RuntimeError(f"tool call failed: {result.content[0].text if result.content else result}")
    return result


async def _time_pairs(
    count: int, warmup: int, first: Callable[[int], Awaitable[Any]], second: Callable[[int], Awaitable[Any]]
) -> tuple[list[float], list[float]]:
    """Time two ways of doing the same thing, alternating, so both see the same database growth."""
    a, b = [], []
    for index in range(-warmup, count):
        start = time.perf_counter()
        await first(index)
        middle = time.perf_counter()
        await second(index)
        end = time.perf_counter()
        if index >= 0:
            a.append(middle - start)
            b.append(end - middle)
    return a, b


async def _one_repeat(kind: str, cfg: Config) -> tuple[dict[str, list[float]], dict[str, tuple[int, int]]]:
    from mcp import Client

    from refund_mcp.service.refunds import RefundInput

    samples: dict[str, list[float]] = {}
    # The floor is measured in every repeat, next to the tools, so both see the same process state.
    async with Client(bare_server()) as client:
        samples["noop"] = await _time_calls(
            cfg.overhead_noop_calls, cfg.overhead_warmup, lambda i: client.call_tool("noop", {"transaction_id": READ_TXN})
        )
    async with fresh_db(kind, cfg) as url, make_app(url) as app:
        prefix = unique_prefix()
        service = app.service
        async with Client(app.server) as client:
            samples["create_refund"], samples["create_refund/service"] = await _time_pairs(
                cfg.overhead_calls,
                cfg.overhead_warmup,
                lambda i: _call_checked(client, "create_refund", refund_args(CREATE_TXN, f"{prefix}-mcp-{i}")),
                lambda i: service.create_refund(
                    BENCH_ACTOR,
                    RefundInput(transaction_id=CREATE_TXN, reason="service_issue", amount_minor=1, idempotency_key=f"{prefix}-svc-{i}"),
                ),
            )
            samples["lookup_transaction"], samples["lookup_transaction/service"] = await _time_pairs(
                cfg.overhead_calls,
                cfg.overhead_warmup,
                lambda i: _call_checked(client, "lookup_transaction", {"transaction_id": READ_TXN}),
                lambda i: service.lookup_transaction(BENCH_ACTOR, READ_TXN),
            )
            samples["check_refund_policy"], samples["check_refund_policy/service"] = await _time_pairs(
                cfg.overhead_calls,
                cfg.overhead_warmup,
                lambda i: _call_checked(
                    client, "check_refund_policy", {"transaction_id": READ_TXN, "reason": "service_issue", "amount_minor": 100}
                ),
                lambda i: service.check_refund_policy(BENCH_ACTOR, READ_TXN, "service_issue", 100),
            )
            counts = await _statement_counts(app, client)
    return samples, counts


async def _statement_counts(app: Any, client: Any) -> dict[str, tuple[int, int]]:
    """SQL statements and transactions one call of each tool issues (counted by SQLAlchemy events)."""
    from sqlalchemy import event

    counts = {"statements": 0, "transactions": 0}

    def on_statement(*_: Any) -> None:
        counts["statements"] += 1

    def on_begin(*_: Any) -> None:
        counts["transactions"] += 1

    engine = app.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "begin", on_begin)
    out = {}
    try:
        for tool, args in _calls("count"):
            counts.update(statements=0, transactions=0)
            await _call_checked(client, tool, args)
            # SQLite's BEGIN IMMEDIATE is itself a statement (sent by the begin hook): not counted twice.
            begins = counts["transactions"] if app.db.dialect == "sqlite" else 0
            out[tool] = (counts["statements"] - begins, counts["transactions"])
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "begin", on_begin)
    return out


def _calls(key: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("create_refund", refund_args(CREATE_TXN, f"{key}-{unique_prefix()}")),
        ("lookup_transaction", {"transaction_id": READ_TXN}),
        ("check_refund_policy", {"transaction_id": READ_TXN, "reason": "service_issue", "amount_minor": 100}),
    ]


async def _call_checked(client: Any, tool: str, args: dict[str, Any]) -> Any:
    return _checked(await client.call_tool(tool, args))


TOOLS = ("create_refund", "lookup_transaction", "check_refund_policy")


async def run(cfg: Config) -> Section:
    section = Section(
        name="overhead",
        title="1. Per-call overhead, in-process MCP client (ms)",
        columns=["tool", "db", "p50", "p99", "p50 ÷ no-op floor", "p99 ÷ floor", "service only p50", "MCP path − service p50", "SQL statements / transactions"],
    )
    kinds = ["sqlite"]
    if await pg_available(cfg.pg_url):
        kinds.append("postgresql")
    else:
        section.notes.append("PostgreSQL unreachable: in-process overhead measured on SQLite only.")

    floor_p50, floor_p99 = Spread(), Spread()
    stats: dict[tuple[str, str], dict[str, Spread]] = {}
    drift: dict[str, Spread] = {kind: Spread() for kind in kinds}
    statement_counts: dict[str, dict[str, tuple[int, int]]] = {}
    for repeat in range(cfg.repeats):
        for kind in kinds:
            log(f"overhead: repeat {repeat + 1}/{cfg.repeats} on {kind}")
            samples, statement_counts[kind] = await _one_repeat(kind, cfg)
            noop = samples.pop("noop")
            n50, n99 = percentile(noop, 50), percentile(noop, 99)
            if kind == "sqlite":
                floor_p50.add(ms(n50))
                floor_p99.add(ms(n99))
            for name, values in samples.items():
                entry = stats.setdefault((name, kind), {k: Spread() for k in ("p50", "p99", "ratio50", "ratio99")})
                p50, p99 = percentile(values, 50), percentile(values, 99)
                entry["p50"].add(ms(p50))
                entry["p99"].add(ms(p99))
                # The ratio is taken within the repeat (same process state) and then summarised.
                entry["ratio50"].add(p50 / n50)
                entry["ratio99"].add(p99 / n99)
            # How much slower the last fifth of create_refund calls is than the first fifth: the
            # per-call work grows with the refunds already recorded (balance and daily-cap sums).
            creates = samples["create_refund"]
            fifth = max(1, len(creates) // 5)
            drift[kind].add(percentile(creates[-fifth:], 50) / percentile(creates[:fifth], 50))

    section.rows.append(["no-op tool (bare MCPServer)", "—", fmt_spread(floor_p50, 3), fmt_spread(floor_p99, 3), "1.00", "1.00", "—", "—", "0 / 0"])
    for kind in kinds:
        for tool in TOOLS:
            entry = stats[(tool, kind)]
            service = stats[(f"{tool}/service", kind)]["p50"]
            layer = Spread([max(0.0, a - b) for a, b in zip(entry["p50"].values, service.values)])
            section.rows.append(
                [
                    tool,
                    kind,
                    fmt_spread(entry["p50"]),
                    fmt_spread(entry["p99"]),
                    f"{fmt(entry['ratio50'].median, 1)}×",
                    f"{fmt(entry['ratio99'].median, 1)}×",
                    fmt_spread(service),
                    fmt(layer.median),
                    "{} / {}".format(*statement_counts[kind][tool]),
                ]
            )
    for (tool, kind), goal in TARGETS.items():
        if (tool, kind) not in stats:
            continue
        ratio = stats[(tool, kind)]["ratio50"]
        section.targets.append(
            Target(
                what=f"{tool} p50 on {'SQLite' if kind == 'sqlite' else 'PostgreSQL'} vs the no-op floor",
                goal=f"≤ {goal:g}×",
                measured=f"{fmt(ratio.median, 1)}× ({fmt(stats[(tool, kind)]['p50'].median)} ms vs {fmt(floor_p50.median, 3)} ms)",
                met=ratio.median <= goal,
            )
        )
    section.notes.append(
        f"{cfg.overhead_calls} timed calls per tool per repeat ({cfg.overhead_noop_calls} for the no-op) after "
        f"{cfg.overhead_warmup} warm-up calls; fresh App and database per repeat; repeats: {cfg.repeats}, "
        "median (min–max) across repeats. Ratios are taken within each repeat, then the median is shown."
    )
    section.notes.append(
        "create_refund refunds 1 unit of sandbox:demo_usd_large per call with a fresh idempotency key; "
        "the reads use sandbox:demo_usd_order, which the loop leaves untouched. 'service only' calls "
        "RefundService directly (no MCP), alternating call by call with the MCP path so both see the same "
        "database growth; the difference is the SDK's work (argument validation, result serialization, the client's "
        "output-schema check) plus, for create_refund, the confirmation resolver. The resolver previews the decision in a "
        "transaction of its own only when the amount is omitted or above the policy's smallest confirmation threshold; "
        "these 1-unit refunds are not, so a larger refund costs one transaction more than measured here."
    )
    for kind in kinds:
        section.notes.append(
            f"create_refund drift on {kind}: the last fifth of the calls took {fmt(drift[kind].median)}× as long as the first "
            "fifth (median over repeats): a few hundred refunds are too few to show the growth that section 1b measures."
        )
    section.raw = {
        "floor_ms": {"p50": floor_p50.as_dict(), "p99": floor_p99.as_dict()},
        "tools": {f"{name}@{kind}": {k: v.as_dict() for k, v in entry.items()} for (name, kind), entry in stats.items()},
        "create_drift": {kind: spread.as_dict() for kind, spread in drift.items()},
        "statements_and_transactions_per_call": statement_counts,
    }
    return section
