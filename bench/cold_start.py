"""4. Cold start: process launch to the first `tools/list` answer over stdio.

`refund-mcp serve` (fresh SQLite file each launch, so the schema migrations run, as on a first start)
against bench/bare_stdio_server.py, a bare MCPServer: the SDK's own import and set-up is the floor.
Launches alternate between the two so that both see the same machine load and file cache.
`python -X importtime` of both starts then names what refund-mcp imports on top of the SDK.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, Config, Section, Spread, Target, fmt, fmt_spread, log, refund_mcp_command, server_env, sqlite_url

TARGET_RATIO = 1.2
BARE_SCRIPT = BENCH_DIR / "bare_stdio_server.py"


async def _launch(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds from launch to the first answer (server/discover) and to the tools/list answer."""
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    with open(os.devnull, "w") as devnull:  # the servers' stderr (startup banner) is not wanted here
        start = time.perf_counter()
        async with Client(stdio_client(params, errlog=devnull), cache=None) as client:
            connected = time.perf_counter()
            tools = await client.list_tools()
            listed = time.perf_counter()
    return connected - start, listed - start, len(tools.tools)


def _importtime(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a start under `-X importtime` with stdin at EOF (the server starts, then exits); self time per module (ms)."""
    proc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    modules: dict[str, float] = {}
    for line in proc.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        modules[parts[2].strip()] = int(parts[0]) / 1000
    return modules


def _extra_imports(refund: dict[str, float], bare: dict[str, float]) -> dict[str, float]:
    """Self time of the modules refund-mcp's start imports and the bare server's does not, per top-level package.

    Comparing module sets rather than per-package totals keeps the SDK's own modules (imported by both,
    timed with noise) out of the answer.
    """
    by_root: dict[str, float] = defaultdict(float)
    for module, self_ms in refund.items():
        if module not in bare:
            by_root[module.split(".")[0]] += self_ms
    return dict(sorted(by_root.items(), key=lambda kv: -kv[1]))


async def run(cfg: Config) -> Section:
    section = Section(
        name="cold_start",
        title="4. Cold start over stdio: launch → first tools/list answer (s)",
        columns=["server", "launch → first answer", "launch → tools/list", "÷ floor", "tools"],
    )
    bare_cmd = [sys.executable, str(BARE_SCRIPT)]
    refund_cmd = [*refund_mcp_command(), "serve"]
    bare = {"first": Spread(), "listed": Spread()}
    refund = {"first": Spread(), "listed": Spread()}
    ratios = Spread()
    counts = {"bare": 0, "refund": 0}
    with tempfile.TemporaryDirectory(prefix="refund-mcp-bench-cold-") as tmp:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_MCP_")}
        # One unmeasured launch of each first: the OS file cache should be warm for both, not for one.
        if not cfg.quick:
            await _launch(bare_cmd, base_env)
            await _launch(refund_cmd, server_env(sqlite_url(Path(tmp) / "warm"), policy=_default_policy()))
        for repeat in range(cfg.repeats):
            log(f"cold start: launch {repeat + 1}/{cfg.repeats}")
            first, listed, counts["bare"] = await _launch(bare_cmd, base_env)
            bare["first"].add(first)
            bare["listed"].add(listed)
            # A fresh database file per launch: the migrations run, as on a first start.
            env = server_env(sqlite_url(Path(tmp) / f"launch{repeat}"), policy=_default_policy())
            first, listed_refund, counts["refund"] = await _launch(refund_cmd, env)
            refund["first"].add(first)
            refund["listed"].add(listed_refund)
            ratios.add(listed_refund / listed)
        log("cold start: -X importtime of both starts")
        # --no-worker only so that the process exits at stdin EOF (with the worker it hangs on shutdown,
        # see the notes); the worker module is imported either way, so the imports are the same.
        imports_refund = _importtime(
            [sys.executable, "-X", "importtime", "-m", "refund_mcp", "serve", "--no-worker"],
            server_env(sqlite_url(Path(tmp) / "imports"), policy=_default_policy()),
        )
        imports_bare = _importtime([sys.executable, "-X", "importtime", str(BARE_SCRIPT)], base_env)

    section.rows.append(["bare MCPServer (floor)", fmt_spread(bare["first"], 3), fmt_spread(bare["listed"], 3), "1.00", str(counts["bare"])])
    section.rows.append(
        ["refund-mcp serve (SQLite, fresh DB)", fmt_spread(refund["first"], 3), fmt_spread(refund["listed"], 3), f"{fmt(ratios.median)}×", str(counts["refund"])]
    )
    section.targets.append(
        Target(
            what="cold start over stdio vs a bare MCPServer",
            goal=f"≤ {TARGET_RATIO}×",
            measured=f"{fmt(ratios.median)}× ({fmt(refund['listed'].median, 3)} s vs {fmt(bare['listed'].median, 3)} s)",
            met=ratios.median <= TARGET_RATIO,
        )
    )
    extra = _extra_imports(imports_refund, imports_bare)
    offenders = [(root, delta) for root, delta in extra.items() if delta >= 1.0][:12]
    section.notes.append(
        f"Launches of each: {cfg.repeats}, alternating"
        + ("" if cfg.quick else ", after one unmeasured launch of each")
        + "; the client is the SDK's "
        "Client over stdio_client (auto mode: server/discover is the first answer). refund-mcp runs with the "
        "packaged default policy and the sandbox."
    )
    section.notes.append(
        f"Import time (-X importtime, sum of self times): refund-mcp's start {fmt(sum(imports_refund.values()), 0)} ms in "
        f"{len(imports_refund)} modules, the bare MCPServer's {fmt(sum(imports_bare.values()), 0)} ms in {len(imports_bare)}. "
        f"Modules only refund-mcp imports: {fmt(sum(extra.values()), 0)} ms, of which "
        + ", ".join(f"{root} {fmt(delta, 0)} ms" for root, delta in offenders)
        + "."
    )
    print("cold start: -X importtime, modules only refund-mcp's start imports (ms of self time per top-level package):", file=sys.stderr)
    for root, delta in offenders:
        print(f"  {root:<24} {delta:8.1f}", file=sys.stderr)
    slowest = sorted(((t, m) for m, t in imports_refund.items() if m not in imports_bare), reverse=True)[:10]
    print("cold start: slowest single modules among them (ms self):", file=sys.stderr)
    for t, module in slowest:
        print(f"  {module:<48} {t:8.1f}", file=sys.stderr)
    section.raw = {
        "bare_seconds": {k: v.as_dict() for k, v in bare.items()},
        "refund_mcp_seconds": {k: v.as_dict() for k, v in refund.items()},
        "ratio": ratios.as_dict(),
        "importtime_total_ms": {"refund_mcp": sum(imports_refund.values()), "bare": sum(imports_bare.values())},
        "imports_only_refund_mcp_ms_by_package": extra,
    }
    return section


def _default_policy() -> Path:
    from refund_mcp.policy import default_policy_path

    return Path(default_policy_path())
