"""Profiles of missed targets (pyinstrument), summarised so the report says what dominates the cost.

Full pyinstrument trees go to bench/results/profile-*.txt; the report gets two small tables per
profile: where the time goes by layer (self time, with time spent awaiting - the SQLite thread,
locks, I/O - as its own line), and the cumulative time of the refund-mcp steps worth knowing about.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, Config, Section, fmt, log, make_app, refund_args, server_env, sqlite_url, unique_prefix
from bench.report import write_profile

PROFILE_INTERVAL = 0.001


def _layer(frame: Any) -> str:
    """Which layer a frame's self time belongs to, from its file path."""
    path = (frame.file_path or "").replace("\\", "/")
    if "/refund_mcp/" in path:
        return "refund-mcp code"
    if "/sqlalchemy/" in path:
        return "SQLAlchemy (statement building, compilation, result rows)"
    if "/aiosqlite/" in path or "/asyncpg/" in path:
        return "database driver (main-thread side)"
    if "/jsonschema/" in path or "/referencing/" in path or "/rpds" in path:
        return "jsonschema (the SDK client checking structured output)"
    if "/mcp/client/" in path:
        return "MCP SDK client"
    if "/mcp/" in path or "/mcp_types/" in path:
        return "MCP SDK server and shared"
    if "/pydantic" in path:
        return "pydantic"
    if "/anyio/" in path or "/asyncio/" in path:
        return "asyncio / anyio scheduling"
    if "/yaml/" in path:
        return "PyYAML"
    return "other (stdlib, greenlet, ...)"


def _by_layer(root: Any) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)

    def walk(frame: Any, parent: Any) -> None:
        if frame.identifier == "[await]":
            totals["awaiting (SQLite thread / DB round trips / locks)"] += frame.time
            return
        owner = parent if frame.identifier == "[self]" and parent is not None else frame
        own = frame.time - sum(child.time for child in frame.children)
        if own > 0:
            totals[_layer(owner)] += own
        for child in frame.children:
            walk(child, frame)

    walk(root, None)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _cumulative(root: Any, wanted: dict[str, str]) -> dict[str, float]:
    """Total time under frames whose `Class.function` (or function) is in `wanted`, outermost occurrence only."""
    totals: dict[str, float] = defaultdict(float)

    def name_of(frame: Any) -> str:
        return f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function

    def walk(frame: Any, inside: frozenset[str]) -> None:
        label = wanted.get(name_of(frame)) or wanted.get(frame.function or "")
        if label and label not in inside:
            totals[label] += frame.time
            inside = inside | {label}
        for child in frame.children:
            walk(child, inside)

    walk(root, frozenset())
    return dict(totals)


def _table(title: str, rows: list[tuple[str, float]], total: float, calls: int | None = None) -> str:
    unit = "ms per call" if calls else "s"
    lines = [f"| {title} | {unit} | share |", "|---|---|---|"]
    for name, seconds in rows:
        value = seconds * 1000 / calls if calls else seconds
        lines.append(f"| {name} | {fmt(value)} | {seconds / total * 100:.0f}% |")
    return "\n".join(lines)


# ------------------------------------------------------------------ create_refund, in-process, SQLite

CREATE_STEPS = {
    "ClientSession.validate_tool_result": "SDK client: output-schema validation of the result",
    "FuncMetadata.validate_arguments": "SDK server: argument validation",
    "confirm_if_needed": "confirmation resolver (a preview transaction only above the smallest confirmation threshold)",
    "Gate.guard_tool": "tool permission check",
    "Reserver.reserve": "reserve transaction (idempotency, balance, policy, insert, audit)",
    "Reserver.evaluate": "  of which: evaluate (transaction upsert, balance, 24-hour sums, policy)",
    "daily_total": "  of which: the 24-hour sums (per actor + global)",
    "daily_totals": "  of which: the 24-hour sums (per actor + global)",
    "daily_window": "  of which: the 24-hour sums (per actor + global)",
    "PolicyEngine.evaluate": "  of which: PolicyEngine.evaluate",
    "Submitter.submit": "submit (sandbox call, record-answer transaction)",
    "append": "audit.append (all calls: head move + insert; the head is read when another writer moved it)",
    "Database.write": "Database.write enter/exit (BEGIN IMMEDIATE, COMMIT, asyncio lock)",
}


async def profile_create_refund(cfg: Config, calls: int = 200) -> str:
    from mcp import Client
    from pyinstrument import Profiler

    log(f"profiling: create_refund x{calls}, in-process, SQLite")
    with tempfile.TemporaryDirectory(prefix="refund-mcp-bench-prof-") as tmp:
        async with make_app(sqlite_url(tmp)) as app, Client(app.server) as client:
            prefix = unique_prefix()
            for i in range(20):
                await client.call_tool("create_refund", refund_args("sandbox:demo_usd_large", f"{prefix}-w{i}"))

            async def profiled_loop() -> None:
                for i in range(calls):
                    await client.call_tool("create_refund", refund_args("sandbox:demo_usd_large", f"{prefix}-{i}"))

            profiler = Profiler(interval=PROFILE_INTERVAL, async_mode="enabled")
            profiler.start()
            await profiled_loop()
            profiler.stop()
    path = write_profile("create_refund", profiler.output_text(unicode=True, show_all=False))
    # The whole session is the loop (the profiler ran only around it). Not just the loop's own frame:
    # SQLAlchemy's synchronous core runs in greenlets, which pyinstrument records as separate stacks.
    root = profiler.last_session.root_frame()
    total = root.time
    layers = list(_by_layer(root).items())
    steps = _cumulative(root, CREATE_STEPS)
    step_rows = [(label, steps[label]) for label in dict.fromkeys(CREATE_STEPS.values()) if label in steps]
    return "\n".join(
        [
            f"### create_refund (in-process, SQLite): {fmt(total * 1000 / calls)} ms per call under the profiler "
            "(sampling inflates it; the shares are what matters)\n",
            f"Full tree: `{path.relative_to(BENCH_DIR.parent)}`. Self time by layer:\n",
            _table("layer", layers, total, calls),
            "\nCumulative time of the steps (a step's time includes the awaiting inside it, but not SQLAlchemy's "
            "synchronous core, which runs in greenlets that pyinstrument records as separate stacks):\n",
            _table("step", step_rows, total, calls),
            "",
        ]
    )


# ------------------------------------------------------------------ cold start of `refund-mcp serve`

START_DRIVER = """
import sys
from pyinstrument import Profiler
profiler = Profiler(interval={interval}, async_mode="disabled")
profiler.start()
try:
{body}
finally:
    profiler.stop()
    profiler.last_session.save(sys.argv[1])
"""
REFUND_START = "    from refund_mcp.cli import main\n    main(['serve', '--no-worker'])"
BARE_START = "    import runpy\n    runpy.run_path({script!r}, run_name='__main__')"

START_STEPS = {
    "_find_and_load": "importing modules",
    "App.create": "App.create",
    "Database.migrate": "  of which: schema migrations",
    "PolicyHolder.__init__": "  of which: loading the policy",
    "build_server": "  of which: building the MCP server (tool schemas)",
    "ProcessorRegistry.from_settings": "  of which: processors",
    "_startup_summary": "startup summary on stderr",
}


def _profiled_start(body: str, env: dict[str, str], tmp: str, name: str) -> Any:
    """Run a server start (stdin at EOF, so it exits once serving) under pyinstrument; returns the session."""
    from pyinstrument.session import Session

    session_path = Path(tmp) / f"{name}.pyisession"
    subprocess.run(
        [sys.executable, "-c", START_DRIVER.format(interval=PROFILE_INTERVAL, body=body), str(session_path)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    return Session.load(str(session_path))


def profile_cold_start() -> str:
    from pyinstrument.renderers import ConsoleRenderer

    from bench.cold_start import BARE_SCRIPT
    from refund_mcp.policy import default_policy_path

    log("profiling: refund-mcp serve start and the bare MCPServer start (stdio, stdin at EOF)")
    with tempfile.TemporaryDirectory(prefix="refund-mcp-bench-prof-") as tmp:
        env = server_env(sqlite_url(tmp), policy=Path(default_policy_path()))
        session = _profiled_start(REFUND_START, env, tmp, "refund")
        bare_session = _profiled_start(BARE_START.format(script=str(BARE_SCRIPT)), env, tmp, "bare")
    root, bare_root = session.root_frame(), bare_session.root_frame()
    path = write_profile("cold_start", ConsoleRenderer(unicode=True, show_all=False).render(session))
    total = root.time
    steps = _cumulative(root, START_STEPS)
    rows = [(label, steps[label]) for label in START_STEPS.values() if label in steps]
    imports = _imports_by_package(root)
    bare_imports = dict(_imports_by_package(bare_root))
    lines = ["| package | refund-mcp start (s) | bare MCPServer start (s) | difference |", "|---|---|---|---|"]
    for package, seconds in imports[:12]:
        other = bare_imports.get(package, 0.0)
        lines.append(f"| {package} | {fmt(seconds)} | {fmt(other)} | {'+' if seconds >= other else ''}{fmt(seconds - other)} |")
    return "\n".join(
        [
            f"### refund-mcp serve start (stdio, fresh SQLite): {fmt(total, 3)} s of Python under the profiler, "
            f"the bare MCPServer's {fmt(bare_root.time, 3)} s\n",
            f"Full tree: `{path.relative_to(BENCH_DIR.parent)}` (interpreter start-up before the profiler is not included).\n",
            _table("phase", rows, total),
            "\nImport-time work by package (stdlib modules counted for the package that imported them; which package "
            "first pulls in a shared dependency differs between the two starts, so compare totals, not single rows):\n",
            "\n".join(lines),
            "",
        ]
    )


def _imports_by_package(root: Any) -> list[tuple[str, float]]:
    """Import-time work by package: time inside a module body goes to the innermost non-stdlib package
    being imported (stdlib modules count for the package that pulled them in). Work a module body does,
    such as building pydantic models, counts for that module's package."""
    totals: dict[str, float] = defaultdict(float)

    def package(path: str) -> str | None:
        path = path.replace("\\", "/")
        if "site-packages/" in path:
            return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        if "/src/" in path:
            return path.split("/src/", 1)[1].split("/", 1)[0]
        return None

    def walk(frame: Any, context: str | None) -> None:
        if frame.function == "<module>":
            context = package(frame.file_path or "") or context
        own = frame.time - sum(child.time for child in frame.children)
        if context is not None and own > 0:
            totals[context] += own
        for child in frame.children:
            walk(child, context)

    walk(root, None)
    return sorted(totals.items(), key=lambda kv: -kv[1])


# ------------------------------------------------------------------ entry point


async def profile_missed(cfg: Config, sections: list[Section]) -> list[str]:
    missed = {section.name for section in sections for target in section.targets if not target.met}
    out = []
    if "overhead" in missed:
        out.append(await profile_create_refund(cfg))
    if "cold_start" in missed:
        out.append(profile_cold_start())
    return out


if __name__ == "__main__":  # python -m bench.profiling: both profiles, printed
    import asyncio

    print(asyncio.run(profile_create_refund(Config())))
    print(profile_cold_start())
