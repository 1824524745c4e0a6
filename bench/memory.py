"""4b. Resident memory of an idle `refund-mcp serve` (stdio) against a bare MCPServer.

Each server is started with pipes, answers `initialize` and `tools/list` (JSON-RPC written by hand, so the
process and its pid are ours), then sits idle for a few seconds before VmRSS is read from /proc.
`serve` runs twice: as shipped (its worker starts with the first tool call, so the idle seconds, which are
longer than the 1 s worker interval, pass without the database or the processors) and with --no-worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Config, Section, Spread, Target, fmt, fmt_spread, log, refund_mcp_command, server_env, sqlite_url
from bench.cold_start import BARE_SCRIPT, _default_policy

TARGET_RATIO = 1.25
IDLE_SECONDS = 3.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _request(proc: subprocess.Popen[bytes], message: dict[str, Any], expect_answer: bool = True, timeout: float = 60.0) -> Any:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()
    if not expect_answer:
        return None
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:  # readline blocks; the server answers or exits (then b"")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server exited before answering")
        answer = json.loads(line)
        if answer.get("id") == message["id"]:
            return answer
    raise RuntimeError("no answer")


def _idle_rss(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=devnull)
    try:
        _request(
            proc,
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}},
        )
        _request(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"}, expect_answer=False)
        tools = _request(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        time.sleep(IDLE_SECONDS)  # idle on purpose: the measurement is of a server nobody is calling
        return _rss_mib(proc.pid), len(tools["result"]["tools"])
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(cfg: Config) -> Section:
    section = Section(
        name="memory",
        title=f"4b. Resident memory, idle {IDLE_SECONDS:g} s after tools/list over stdio (MiB)",
        columns=["server", "VmRSS", "÷ bare", "tools"],
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_MCP_")}
    bare, shipped, lean = Spread(), Spread(), Spread()
    ratio_shipped, ratio_lean = Spread(), Spread()
    counts: dict[str, int] = {}
    repeats = max(1, min(cfg.repeats, 3))
    with tempfile.TemporaryDirectory(prefix="refund-mcp-bench-rss-") as tmp:
        for repeat in range(repeats):
            log(f"memory: repeat {repeat + 1}/{repeats}")
            b, counts["bare"] = _idle_rss([sys.executable, str(BARE_SCRIPT)], base_env)
            env = server_env(sqlite_url(Path(tmp) / f"r{repeat}"), policy=_default_policy())
            s, counts["serve"] = _idle_rss([*refund_mcp_command(), "serve"], env)
            env = server_env(sqlite_url(Path(tmp) / f"n{repeat}"), policy=_default_policy())
            n, _ = _idle_rss([*refund_mcp_command(), "serve", "--no-worker"], env)
            bare.add(b), shipped.add(s), lean.add(n)
            ratio_shipped.add(s / b), ratio_lean.add(n / b)
    section.rows.append(["bare MCPServer", fmt_spread(bare, 1), "1.00", str(counts["bare"])])
    section.rows.append(["refund-mcp serve (worker on: starts with the first tool call)", fmt_spread(shipped, 1), f"{fmt(ratio_shipped.median)}×", str(counts["serve"])])
    section.rows.append(["refund-mcp serve --no-worker (App not built)", fmt_spread(lean, 1), f"{fmt(ratio_lean.median)}×", str(counts["serve"])])
    section.targets.append(
        Target(
            what="idle serve (stdio) RSS vs a bare MCPServer",
            goal=f"≤ {TARGET_RATIO}×",
            measured=f"{fmt(ratio_shipped.median)}× as shipped, {fmt(ratio_lean.median)}× without the worker",
            met=ratio_shipped.median <= TARGET_RATIO,
        )
    )
    section.notes.append(
        f"Launches of each: {repeats}; SQLite, the packaged default policy and the sandbox; VmRSS from /proc after "
        f"initialize, tools/list and {IDLE_SECONDS:g} s idle."
    )
    section.raw = {"bare": bare.as_dict(), "serve": shipped.as_dict(), "serve_no_worker": lean.as_dict(),
                   "ratio": ratio_shipped.as_dict(), "ratio_no_worker": ratio_lean.as_dict()}
    return section
