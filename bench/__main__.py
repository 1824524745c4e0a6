"""`python -m bench`: run every benchmark (or --only some), print the table, write the results.

Not part of the test suite: nothing is asserted, numbers are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time

from bench.common import DEFAULT_PG_URL, Config, Section, log

# Name on the command line -> module. Run in this order: the cheap, noise-sensitive in-process
# measurements first, the multi-process ones after.
# Report order (the numbering).
REPORT_ORDER = ("floor", "overhead", "history", "http", "scaling", "contention", "cold_start", "memory", "policy", "audit", "durability")
BENCHMARKS = {
    "floor": "bench.raw_floor",
    "overhead": "bench.overhead",
    "history": "bench.history",
    "policy": "bench.policy_engine",
    "cold_start": "bench.cold_start",
    "memory": "bench.memory",
    "contention": "bench.contention",
    "http": "bench.http_throughput",
    "scaling": "bench.scaling",
    "audit": "bench.audit_verify",
    "durability": "bench.durability",
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, 1 repeat, no profiles: a smoke run in about a minute")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats per measurement (default 5, and 3 for the HTTP set-ups that restart servers; 1 with --quick)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("REFUND_MCP_BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL server for the PostgreSQL runs (a fresh database is created per run and dropped); "
        "'' to skip PostgreSQL",
    )
    parser.add_argument("--no-profile", action="store_true", help="do not profile missed targets")
    parser.add_argument(
        "--write-results-md",
        action="store_true",
        help="also rewrite bench/RESULTS.md after a --quick or --only run (a full run always does)",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.names = names or list(BENCHMARKS)
    return args


def _quiet_logs() -> None:
    """Keep stderr to the benchmark's progress lines.

    The SDK configures root logging at INFO when an MCPServer is created in-process; then every HTTP
    request (httpx2), every expected refusal in the contention runs (the SDK client logs failed tool calls)
    and every schema migration of a fresh database would be printed.
    """
    for name, level in (("httpx2", logging.WARNING), ("mcp", logging.ERROR), ("refund_mcp", logging.WARNING)):
        logging.getLogger(name).setLevel(level)


async def _main(args: argparse.Namespace, command: str) -> int:
    from bench import machine, profiling, report

    _quiet_logs()
    began = time.perf_counter()

    cfg = Config.make(quick=args.quick, repeats=args.repeats, pg_url=args.pg_url or None, profile=not args.no_profile)
    info = await machine.describe(cfg)
    log(f"machine: {info['cpu']} x{info['nproc']}, Python {info['python']}, SQLite {info['sqlite']}, PostgreSQL {info['postgresql']}")
    sections: list[Section] = []
    for name in args.names:
        module = importlib.import_module(BENCHMARKS[name])
        started = time.perf_counter()
        section = await module.run(cfg)
        section.seconds = time.perf_counter() - started
        log(f"{name}: done in {section.seconds:.1f} s")
        sections.append(section)
    info["load_at_end"] = machine.load_average()
    sections.sort(key=lambda section: REPORT_ORDER.index(section.name))
    profiles: list[str] = []
    if cfg.profile:
        profiles = await profiling.profile_missed(cfg, sections)
    update_committed = (not args.quick and args.names == list(BENCHMARKS)) or args.write_results_md
    written = report.write(info, cfg, sections, profiles, command, time.perf_counter() - began, update_committed=update_committed)
    print(report.render_tables(sections))
    for path in written:
        log(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    command = " ".join(["python -m bench", *argv])
    return asyncio.run(_main(args, command))


if __name__ == "__main__":
    sys.exit(main())
