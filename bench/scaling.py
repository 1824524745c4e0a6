"""2b. Scaling on PostgreSQL behind a delay proxy: clients and processes, with 1 ms each way to the database.

`python -m bench --only scaling` starts bench/delay_proxy.py (its own process, 127.0.0.1 only) in front of
the PostgreSQL server, then `refund-mcp serve --transport http` processes whose database URL points at the
proxy. Measured: refunds/s with 1 and 32 clients on one process, and 32 clients on 3 processes. With a
network between the service and its database, a write path that holds one lock across several round trips
stops scaling at 1 / (round trips × RTT); this shows where it stands.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import (
    REPO, Config, LoadPayments, Section, Spread, Target, fmt, fmt_spread, fresh_db, http_client_factory, http_servers, log, pg_available,
)
from bench.http_throughput import WINDOW_STRETCH, _load, refund_call

DELAY_MS = 1.0
TARGET_CLIENTS = 8.0
TARGET_PROCESSES = 2.0


@contextmanager
def delay_proxy(upstream_port: int, delay_ms: float = DELAY_MS, max_seconds: float = 1800.0) -> Iterator[int]:
    """The proxy in its own process (its event loop must not share the load generator's); yields its port."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.delay_proxy", "--upstream-port", str(upstream_port), "--delay-ms", str(delay_ms), "--max-seconds", str(max_seconds)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline().decode() if proc.stdout else ""
        if not line.startswith("listening "):
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        proc.send_signal(signal.SIGTERM)  # nothing to clean up: connections just close
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _via_proxy(url: str, port: int) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


async def _round_trip_ms(dsn: str, count: int = 50) -> float:
    """p50 of `SELECT 1` on one connection: what a round trip to the database costs on this path."""
    import statistics

    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetchval("SELECT 1")
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await conn.fetchval("SELECT 1")
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1000
    finally:
        await conn.close()


async def _setup(cfg: Config, processes: int, clients: list[int]) -> dict[int, dict[str, Any]]:
    from sqlalchemy.engine import make_url

    out: dict[int, dict[str, Any]] = {}
    async with fresh_db("postgresql", cfg) as url:
        with delay_proxy(make_url(url).port or 5432) as port, http_servers(_via_proxy(url, port), processes) as urls:
            from bench.common import _asyncpg_dsn

            out[0] = {"direct_rtt_ms": await _round_trip_ms(_asyncpg_dsn(url)), "proxy_rtt_ms": await _round_trip_ms(_asyncpg_dsn(_via_proxy(url, port)))}
            call = refund_call(LoadPayments())
            async with http_client_factory() as http:
                for count in clients:
                    out[count] = await _load(urls, count, http, cfg.http_warmup_seconds, cfg.http_window_seconds, call)
    return out


async def run(cfg: Config) -> Section:
    section = Section(
        name="scaling",
        title=f"2b. PostgreSQL behind a {DELAY_MS:g} ms-each-way delay proxy: refunds/s over HTTP",
        columns=["set-up", "clients", "refunds/s", "p50 (ms)", "p99 (ms)", "errors", "factor"],
    )
    if not await pg_available(cfg.pg_url):
        section.notes.append("PostgreSQL not reachable: skipped.")
        return section
    one: dict[int, Spread] = {1: Spread(), 32: Spread()}
    three = Spread()
    clients_factor, process_factor = Spread(), Spread()
    detail: dict[str, list[dict[str, Any]]] = {"1 process": [], "3 processes": []}
    for repeat in range(cfg.process_repeats):
        log(f"scaling: 1 process, 1 and 32 clients, repeat {repeat + 1}/{cfg.process_repeats}")
        single = await _setup(cfg, 1, [1, 32])
        log(f"scaling: 3 processes, 32 clients, repeat {repeat + 1}/{cfg.process_repeats}")
        multi = await _setup(cfg, 3, [32])
        for count in (1, 32):
            one[count].add(single[count]["refunds_per_second"])
        three.add(multi[32]["refunds_per_second"])
        clients_factor.add(single[32]["refunds_per_second"] / max(single[1]["refunds_per_second"], 1e-9))
        process_factor.add(multi[32]["refunds_per_second"] / max(single[32]["refunds_per_second"], 1e-9))
        detail["1 process"].append({str(k): v for k, v in single.items()})
        detail["3 processes"].append({str(k): v for k, v in multi.items()})
    last_single, last_multi = detail["1 process"][-1], detail["3 processes"][-1]
    rtt = last_single["0"]

    def row(label: str, clients: int, spread: Spread, last: dict[str, Any], factor: str) -> list[str]:
        errors = ", ".join(f"{k}: {v}" for k, v in last["errors"].items()) or "0"
        return [label, str(clients), fmt_spread(spread, 1), fmt(last["p50_ms"], 0), fmt(last["p99_ms"], 0), errors, factor]

    section.rows.append(row("1 process", 1, one[1], last_single["1"], "1.00"))
    section.rows.append(row("1 process", 32, one[32], last_single["32"], f"{fmt(clients_factor.median)}× of 1 client"))
    section.rows.append(row("3 processes", 32, three, last_multi["32"], f"{fmt(process_factor.median)}× of 1 process"))
    section.targets.append(
        _factor_target(f"refunds/s behind {DELAY_MS:g} ms each way: 32 clients vs 1 (one process)", f"≥ {TARGET_CLIENTS:g}×", clients_factor)
    )
    section.targets.append(
        _factor_target(f"refunds/s behind {DELAY_MS:g} ms each way: 3 processes vs 1 at 32 clients", f"≥ {TARGET_PROCESSES:g}×", process_factor)
    )
    section.notes.append(
        f"Per repeat: fresh database, the proxy, fresh servers; {cfg.http_warmup_seconds} s warm-up and a "
        f"{cfg.http_window_seconds} s window per client count (stretched up to {WINDOW_STRETCH:g}× until as many calls as "
        f"clients completed in it; the rate is over its actual length); repeats: {cfg.process_repeats}; p50/p99/errors from the last "
        "repeat. Distinct payments: client i refunds the sandbox's load-test payments "
        f"demo_load_<i×{LoadPayments.PER_CLIENT:,}+k>, a new one every call, so no two clients share a payment row. "
        "Load generator, servers, proxy and PostgreSQL share the 2 cores. "
        f"Round trip (SELECT 1, p50, last repeat): {fmt(rtt['direct_rtt_ms'], 3)} ms direct, {fmt(rtt['proxy_rtt_ms'], 2)} ms "
        "through the proxy (asyncio timers and the shared CPU add to the nominal 2 ms)."
    )
    section.raw = {
        "one_process_rps": {str(k): v.as_dict() for k, v in one.items()},
        "three_processes_32_rps": three.as_dict(),
        "clients_factor": clients_factor.as_dict(),
        "process_factor": process_factor.as_dict(),
        "detail": detail,
    }
    return section


def _factor_target(what: str, goal: str, factor: Spread) -> Target:
    return Target(what=what, goal=goal, measured=f"{fmt(factor.median)}×", met=factor.median >= float(goal.strip("≥ ×")))
