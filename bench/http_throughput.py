"""2. Throughput over HTTP: N concurrent MCP clients doing refunds against `refund-mcp serve --transport http`.

Set-ups: one process on SQLite, one on PostgreSQL, then several processes on one PostgreSQL database
(clients spread round-robin over them) for the scaling factor. Every repeat starts from a fresh
database and fresh server processes. Each client loops over create_refund for a fixed window after a
warm-up; refunds/s counts the calls that started inside the window.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from bench.common import (
    BENCH_DIR,
    Config,
    LoadPayments,
    Section,
    Spread,
    Target,
    _stop,
    _wait_healthy,
    describe_error,
    error_code,
    fmt,
    fmt_spread,
    free_port,
    fresh_db,
    http_client_factory,
    http_servers,
    log,
    ms,
    percentile,
    pg_available,
    refund_args,
    run_clients,
    unique_prefix,
)


Call = Callable[[Any, str, int], Awaitable[Any]]  # (MCP client, idempotency key, client index) -> tool result


def refund_call(payments: LoadPayments) -> Call:
    """create_refund of 1 unit on a payment of the client's own, a new one every call (distinct payments)."""

    async def call(client: Any, key: str, index: int) -> Any:
        return await client.call_tool("create_refund", refund_args(payments.next(index), key))

    return call


async def _noop_call(client: Any, key: str, index: int) -> Any:
    return await client.call_tool("noop", {"transaction_id": key})


# A window is stretched (up to this many times its length) until it holds at least one completed call per
# client: when one call takes longer than the window, a fixed window counts nothing, and 0 refunds/s
# (with a factor of billions beside it) says less than the few calls that did complete.
WINDOW_STRETCH = 10.0


async def _load(urls: list[str], count: int, http: Any, warmup: float, window: float, call: Call) -> dict[str, Any]:
    """`count` clients call `call` (create_refund) back to back (closed loop); calls that finish inside the window count.

    Counting completions (not calls started in the window) keeps slow calls from being under-counted when
    the latency is a sizeable part of the window. Calls still in flight at the end are let finish. The
    window closes `window` seconds after it opens once `count` calls have completed in it, or at the
    latest `WINDOW_STRETCH` times later; the rate is over the window's actual length.
    """
    prefix = unique_prefix()
    counter = itertools.count()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    window = max(window, 0.1)
    bounds = [0.0, 0.0]  # window start and end: the start is set at the release, the end when the window closes

    def close_if_due(now: float) -> bool:
        """Close the window at `now` if it has lasted long enough; True once it is closed."""
        if bounds[1] == 0.0 and now >= bounds[0] + window:
            completed = len(latencies) + sum(errors.values())
            if completed >= count or now >= bounds[0] + window * WINDOW_STRETCH:
                bounds[1] = now
        return bounds[1] != 0.0

    async def first_call(client: Any, index: int) -> None:
        # One untimed call per client before the release: the SDK client compiles (and checks against the
        # JSON Schema metaschema) a tool's output schema on its first call in each session, about 80 ms
        # of CPU for create_refund's, which would otherwise land in the window of the 32-client runs.
        await call(client, f"{prefix}-first-{index}", index)

    async def client_loop(client: Any, index: int) -> None:
        if bounds[0] == 0.0:
            bounds[0] = time.perf_counter() + warmup
        start = bounds[0]
        while not close_if_due(time.perf_counter()):
            n = next(counter)
            begin = time.perf_counter()
            result = await call(client, f"{prefix}-{n}", index)
            end = time.perf_counter()
            if bounds[1] != 0.0 and end > bounds[1]:
                break  # finished after the window closed: not counted
            if end >= start:
                if result.is_error:
                    code = error_code(result)
                    errors[code] = errors.get(code, 0) + 1
                else:
                    latencies.append(end - begin)

    cpu: list[float] = []

    async def cpu_meter() -> None:
        # The load generator shares the 2 cores with the servers: record how much of one core it used.
        while bounds[0] == 0.0:
            await anyio.sleep(0.01)
        await anyio.sleep(max(0.0, bounds[0] - time.perf_counter()))
        before = time.process_time()
        await anyio.sleep(window)
        cpu.append((time.process_time() - before) / window)

    async with anyio.create_task_group() as tg:
        tg.start_soon(cpu_meter)
        _, failures = await run_clients(urls, count, client_loop, prepare=first_call, http=http)
    for failure in failures:
        if failure is not None:
            kind = f"client failed: {describe_error(failure)}"
            errors[kind] = errors.get(kind, 0) + 1
    measured = bounds[1] - bounds[0] if bounds[1] > bounds[0] else window
    return {
        "refunds_per_second": len(latencies) / measured,
        "window_seconds": measured,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "refunds": len(latencies),
        "errors": errors,
        "load_generator_cpu": cpu[0] if cpu else float("nan"),
    }


async def _one_setup(cfg: Config, kind: str, processes: int) -> list[dict[str, Any]]:
    """One repeat of one set-up: fresh database, fresh servers, each concurrency level in turn."""
    out = []
    async with fresh_db(kind, cfg) as url:
        with http_servers(url, processes) as urls:
            call = refund_call(LoadPayments())
            async with http_client_factory() as http:
                for count in cfg.http_clients:
                    result = await _load(urls, count, http, cfg.http_warmup_seconds, cfg.http_window_seconds, call)
                    out.append({"clients": count, **result})
    return out


EMPTY_TOOL_CLIENTS = 8
TARGET_VS_EMPTY = 0.5


@contextmanager
def bare_http_server() -> Iterator[str]:
    """bench/bare_http_server.py in its own process; yields its /mcp URL."""
    port = free_port()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "bare_http_server.py"), str(port)], stdout=devnull, stderr=devnull)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", [(proc, BENCH_DIR / "results" / "none.log")])
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        _stop(proc)


async def _empty_tool_rate(cfg: Config) -> float:
    with bare_http_server() as url:
        async with http_client_factory() as http:
            result = await _load([url], EMPTY_TOOL_CLIENTS, http, cfg.http_warmup_seconds, cfg.http_window_seconds, call=_noop_call)
    return float(result["refunds_per_second"])


async def run(cfg: Config) -> Section:
    section = Section(
        name="http",
        title="2. Throughput over HTTP (streamable HTTP, create_refund, 1-unit refunds)",
        columns=["set-up", "clients", "refunds/s", "p50 (ms)", "p99 (ms)", "errors", "× 1 process", "load generator CPU"],
    )
    setups = [("SQLite, 1 process", "sqlite", 1)]
    if await pg_available(cfg.pg_url):
        setups += [("PostgreSQL, 1 process", "postgresql", 1), (f"PostgreSQL, {cfg.http_processes} processes", "postgresql", cfg.http_processes)]
    else:
        section.notes.append("PostgreSQL unreachable: HTTP throughput measured on SQLite only.")
    results: dict[tuple[str, int], dict[str, Spread]] = {}
    error_totals: dict[tuple[str, int], dict[str, int]] = {}
    for repeat in range(cfg.process_repeats):
        for label, kind, processes in setups:
            log(f"http: {label}, repeat {repeat + 1}/{cfg.process_repeats}")
            for row in await _one_setup(cfg, kind, processes):
                key = (label, row["clients"])
                entry = results.setdefault(key, {"rate": Spread(), "p50": Spread(), "p99": Spread(), "cpu": Spread()})
                entry["rate"].add(row["refunds_per_second"])
                entry["cpu"].add(row["load_generator_cpu"])
                entry["p50"].add(row["p50_ms"])
                entry["p99"].add(row["p99_ms"])
                totals = error_totals.setdefault(key, {})
                for code, n in row["errors"].items():
                    totals[code] = totals.get(code, 0) + n
    empty = Spread()
    for repeat in range(cfg.process_repeats):
        log(f"http: empty tool on a bare MCPServer, {EMPTY_TOOL_CLIENTS} clients, repeat {repeat + 1}/{cfg.process_repeats}")
        empty.add(await _empty_tool_rate(cfg))
    one_pg = "PostgreSQL, 1 process"
    scaling: dict[int, float] = {}
    for (label, clients), entry in results.items():
        factor = ""
        if label.startswith("PostgreSQL") and label != one_pg and (one_pg, clients) in results:
            scaling[clients] = entry["rate"].median / results[(one_pg, clients)]["rate"].median
            factor = f"{fmt(scaling[clients])}×"
        errors = error_totals[(label, clients)]
        section.rows.append(
            [
                label,
                str(clients),
                fmt_spread(entry["rate"], 1),
                fmt_spread(entry["p50"], 1),
                fmt_spread(entry["p99"], 1),
                ", ".join(f"{n} {code}" for code, n in errors.items()) or "0",
                factor,
                f"{entry['cpu'].median * 100:.0f}% of a core",
            ]
        )
    section.rows.append(
        ["empty tool, bare MCPServer (calls/s)", str(EMPTY_TOOL_CLIENTS), fmt_spread(empty, 1), "", "", "", "", ""]
    )
    sqlite_8 = results.get(("SQLite, 1 process", EMPTY_TOOL_CLIENTS))
    if sqlite_8 is not None:
        ratio = sqlite_8["rate"].median / empty.median
        section.targets.append(
            Target(
                what=f"HTTP, one process, {EMPTY_TOOL_CLIENTS} clients: refunds/s (SQLite) vs the empty tool's calls/s",
                goal=f"≥ {TARGET_VS_EMPTY}×",
                measured=f"{fmt(ratio)}× ({fmt(sqlite_8['rate'].median, 1)} vs {fmt(empty.median, 1)})",
                met=ratio >= TARGET_VS_EMPTY,
            )
        )
    section.notes.append(
        f"Per repeat: fresh database, fresh server process(es), then for each client count {cfg.http_warmup_seconds:g} s of "
        f"warm-up and a {cfg.http_window_seconds:g} s window ({WINDOW_STRETCH:g}× longer at most, until as many calls "
        f"as clients have completed in it; the rate is over its actual length); repeats: {cfg.process_repeats} (each restarts the servers on a fresh database), median (min–max). Clients are the SDK's "
        "Client over streamable_http_client (protocol 2026-07-28, stateless), all in the benchmark's own process."
    )
    section.notes.append(
        "Distinct payments: every call refunds 1 minor unit of a payment no other client touches (client i uses the "
        f"sandbox's load-test payments demo_load_<i×{LoadPayments.PER_CLIENT:,}+k>, a new one every call; fresh idempotency "
        "keys), so the clients never wait for one another's payment row; each refund is also its payment's first."
    )
    section.notes.append(
        "The machine has 2 cores shared by the server process(es), PostgreSQL and the load generator, so the "
        "multi-process factor mostly shows how much parallel work there is to gain on 2 cores (writes of different "
        "payments share no lock on PostgreSQL; SQLite has one writer at a time)."
    )
    section.raw = {
        "results": {f"{label}@{clients}": {k: v.as_dict() for k, v in entry.items()} for (label, clients), entry in results.items()},
        "errors": {f"{label}@{clients}": e for (label, clients), e in error_totals.items()},
        "scaling_vs_1_process": scaling,
        "empty_tool_calls_per_second": empty.as_dict(),
    }
    return section
