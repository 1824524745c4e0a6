"""What the numbers were measured on: they mean little without it."""

from __future__ import annotations

import os
import platform
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any

from bench.common import Config, pg_version


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return None


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


async def describe(cfg: Config) -> dict[str, Any]:
    ram = _ram_gib()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram": f"{ram:.1f} GiB" if ram else "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "postgresql": await pg_version(cfg.pg_url) or "unavailable",
        "mcp": _package_version("mcp"),
        "sqlalchemy": _package_version("SQLAlchemy"),
        "refund_mcp": _package_version("refund-mcp"),
        "load_at_start": load_average(),
    }


def load_average() -> str:
    """1/5/15-minute load: the machine is shared, and the numbers only mean something next to it."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def render(machine: dict[str, Any]) -> str:
    return (
        f"- Date: {machine['date']}\n"
        f"- CPU: {machine['cpu']}, nproc = {machine['nproc']}; RAM {machine['ram']}; {machine['os']}\n"
        f"- Python {machine['python']}; SQLite {machine['sqlite']}; PostgreSQL {machine['postgresql']} (local, same machine)\n"
        f"- mcp {machine['mcp']}; SQLAlchemy {machine['sqlalchemy']}; refund-mcp {machine['refund_mcp']}\n"
        f"- Load average (1/5/15 min) at start {machine['load_at_start']}, at end {machine.get('load_at_end', 'n/a')}: "
        "the machine was not reserved for the benchmark, so anything else running shows up as spread\n"
    )
