"""Shared pieces: statistics, run configuration, App and database set-up, `serve` subprocesses.

Deliberately independent of tests/: the benchmark must keep running while the test helpers change.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
POLICY_DIR = BENCH_DIR / "policies"
# Permits thousands of 1-unit refunds per payment and has no duplicate window: the benchmark measures
# the refund path, not the policy saying no.
THROUGHPUT_POLICY = POLICY_DIR / "throughput.yaml"
REALISTIC_POLICY = POLICY_DIR / "realistic.yaml"
BENCH_ACTOR = "bench-agent"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

# Demo payments of the built-in sandbox that still have a balance, with what each one holds. Distinct-
# transaction load is approximated by spreading 1-unit refunds over these (the sandbox has no more).
REFUNDABLE_DEMO_PAYMENTS = (
    "sandbox:demo_usd_large",  # USD 900.00
    "sandbox:demo_jpy_order",  # JPY 15000
    "sandbox:demo_kwd_order",  # KWD 12.500
    "sandbox:demo_usd_order",  # USD 120.00
    "sandbox:demo_eur_partly_refunded",  # EUR 60.00 left
    "sandbox:demo_usd_old",  # USD 40.00, 400 days old (the bench policy allows it)
)


# ------------------------------------------------------------------ run configuration


@dataclass(frozen=True)
class Config:
    """Counts for one run. --quick shrinks them for a smoke run; the shape of every benchmark stays the same."""

    quick: bool = False
    repeats: int = 5
    pg_url: str | None = DEFAULT_PG_URL
    # 1. per-call overhead (in-process)
    overhead_calls: int = 200
    overhead_noop_calls: int = 2000
    overhead_warmup: int = 20
    # 2. HTTP throughput
    http_clients: tuple[int, ...] = (8, 32)
    http_window_seconds: float = 4.0
    http_warmup_seconds: float = 1.0
    http_processes: int = 3
    # 3. contention
    contention_calls: int = 200
    # 4. cold start
    cold_start_launches: int = 5
    # 5. policy engine
    policy_decisions: int = 20000
    # 6. audit verify
    audit_records: int = 100_000
    audit_pg: bool = True
    profile: bool = True

    @classmethod
    def make(cls, *, quick: bool, repeats: int | None, pg_url: str | None, profile: bool) -> Config:
        if quick:
            return cls(
                quick=True,
                repeats=repeats or 2,
                pg_url=pg_url,
                overhead_calls=40,
                overhead_noop_calls=300,
                overhead_warmup=5,
                http_clients=(8, 32),
                http_window_seconds=1.5,
                http_warmup_seconds=0.3,
                contention_calls=60,
                cold_start_launches=2,
                policy_decisions=3000,
                audit_records=10_000,
                profile=False,
            )
        return cls(repeats=repeats or 5, pg_url=pg_url, profile=profile)


# ------------------------------------------------------------------ statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), the same definition numpy uses by default."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Spread:
    """One metric over repeated runs: the median is reported, min-max and IQR show how stable it was."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def iqr(self) -> tuple[float, float]:
        return (percentile(self.values, 25), percentile(self.values, 75))

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "iqr": list(self.iqr), "runs": self.values}


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def fmt_spread(spread: Spread, digits: int = 2, unit: str = "") -> str:
    """`median (min–max)` with an optional unit; one run shows just the value."""
    if len(spread.values) <= 1:
        return f"{fmt(spread.median, digits)}{unit}"
    return f"{fmt(spread.median, digits)}{unit} ({fmt(spread.low, digits)}–{fmt(spread.high, digits)})"


def ms(seconds: float) -> float:
    return seconds * 1000.0


# ------------------------------------------------------------------ sections (what each benchmark returns)


@dataclass
class Target:
    what: str
    goal: str
    measured: str
    met: bool


@dataclass
class Section:
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
            "targets": [vars(t) for t in self.targets],
            "raw": self.raw,
            "seconds": self.seconds,
        }


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the final table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ databases


def sqlite_url(directory: str | Path) -> str:
    return f"sqlite+aiosqlite:///{Path(directory) / 'bench.sqlite3'}"


def _asyncpg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_available(base_url: str | None) -> bool:
    if not base_url:
        return False
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(_asyncpg_dsn(base_url)), timeout=5)
        await conn.close()
        return True
    except Exception:
        return False


@asynccontextmanager
async def pg_database(base_url: str) -> AsyncIterator[str]:
    """A brand-new PostgreSQL database (random name) for one measurement, dropped afterwards."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"refund_mcp_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(_asyncpg_dsn(base_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def fresh_db(kind: str, cfg: Config) -> AsyncIterator[str]:
    """A fresh database URL of `kind` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="refund-mcp-bench-") as tmp:
            yield sqlite_url(tmp)
    else:
        assert cfg.pg_url
        async with pg_database(cfg.pg_url) as url:
            yield url


async def pg_version(base_url: str | None) -> str | None:
    if not await pg_available(base_url):
        return None
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(base_url))  # type: ignore[arg-type]
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# ------------------------------------------------------------------ the app under test


def bench_settings(db_url: str, policy: Path = THROUGHPUT_POLICY) -> Any:
    from refund_mcp.settings import Settings

    # Only the sandbox: real processors must never be configured from the environment by accident.
    settings = Settings.from_env({"REFUND_MCP_SANDBOX": "1"})
    return replace(settings, db_url=db_url, policy_path=policy, actor=BENCH_ACTOR)


@asynccontextmanager
async def make_app(db_url: str, policy: Path = THROUGHPUT_POLICY) -> AsyncIterator[Any]:
    from refund_mcp.app import App

    app = await App.create(bench_settings(db_url, policy))
    try:
        yield app
    finally:
        await app.aclose()


def refund_args(transaction_id: str, key: str, amount_minor: int = 1) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "reason": "service_issue",
        "amount_minor": amount_minor,
        "idempotency_key": key,
    }


def unique_prefix() -> str:
    return secrets.token_hex(4)


# ------------------------------------------------------------------ `refund-mcp serve` subprocesses


BIN = Path(sys.executable).parent


def refund_mcp_command() -> list[str]:
    """The installed console script, as a user runs it."""
    script = BIN / "refund-mcp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "refund_mcp"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(db_url: str, policy: Path = THROUGHPUT_POLICY, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "PAYPAL_", "ADYEN_", "SQUARE_", "REFUND_MCP_"))}
    env.update(
        {
            "REFUND_MCP_DB": db_url,
            "REFUND_MCP_POLICY": str(policy),
            "REFUND_MCP_SANDBOX": "1",
            "REFUND_MCP_ACTOR": BENCH_ACTOR,
        }
    )
    env.update(extra or {})
    return env


def _wait_healthy(url: str, procs: Sequence[subprocess.Popen[bytes]], deadline_seconds: float = 60.0) -> None:
    """Readiness polling: a server is up when /healthz answers 200."""
    import httpx2

    give_up = time.monotonic() + deadline_seconds
    while time.monotonic() < give_up:
        for proc in procs:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"refund-mcp serve exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx2.get(url, timeout=1.0).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not become healthy")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


@contextmanager
def http_servers(db_url: str, count: int = 1, policy: Path = THROUGHPUT_POLICY) -> Iterator[list[str]]:
    """Start `count` `refund-mcp serve --transport http` processes on one database; yields their /mcp URLs.

    The first one starts alone so that it applies the schema migrations; the others then start together.
    """
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    env = server_env(db_url, policy)
    try:
        for index in range(count):
            port = free_port()
            proc = subprocess.Popen(
                [*refund_mcp_command(), "serve", "--transport", "http", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
            if index == 0:
                _wait_healthy(f"{urls[0]}/healthz", procs)
        for url in urls[1:]:
            _wait_healthy(f"{url}/healthz", procs)
        yield [f"{url}/mcp" for url in urls]
    finally:
        for proc in procs:
            _stop(proc)


def http_client_factory(timeout: float = 120.0) -> Any:
    """An httpx2 client sized for many concurrent MCP clients (the default pool caps at 100 connections)."""
    import httpx2

    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout),
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=None),
    )


async def open_clients(stack: Any, targets: Sequence[Any], count: int, http: Any = None) -> list[Any]:
    """`count` connected MCP clients spread round-robin over `targets` (in-process servers or /mcp URLs).

    All are connected before any measurement starts, so connection set-up is never timed.
    """
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    clients = []
    for index in range(count):
        target = targets[index % len(targets)]
        if isinstance(target, str):
            client = Client(streamable_http_client(target, http_client=http), cache=None)
        else:
            client = Client(target, cache=None)
        clients.append(await stack.enter_async_context(client))
    return clients


def error_code(result: Any) -> str:
    """The `[code]` refund-mcp puts at the start of an error message (after the SDK's prefix)."""
    text = result.content[0].text if result.content else ""
    start = text.find("[")
    end = text.find("]", start)
    return text[start + 1 : end] if start >= 0 and end > start else text[:60]
