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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
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


# ------------------------------------------------------------------ run configuration


@dataclass(frozen=True)
class Config:
    """Counts for one run. --quick shrinks them for a smoke run; the shape of every benchmark stays the same."""

    quick: bool = False
    repeats: int = 5
    # Repeats of the measurements that start server processes and fresh databases each time (HTTP
    # throughput, HTTP contention): 3 by default to keep the whole run near 10 minutes; --repeats sets both.
    process_repeats: int = 3
    pg_url: str | None = DEFAULT_PG_URL
    # 1. per-call overhead (in-process)
    overhead_calls: int = 100
    overhead_noop_calls: int = 1000
    overhead_warmup: int = 20
    # 1b. create_refund as the history grows
    history_calls: int = 60
    history_other: int = 98_000
    history_same: int = 2_000
    # 2. HTTP throughput
    http_clients: tuple[int, ...] = (8, 32)
    http_window_seconds: float = 3.0
    http_warmup_seconds: float = 0.5
    http_processes: int = 3
    # 3. contention
    contention_calls: int = 200
    # 5. policy engine
    policy_decisions: int = 10000
    # 6. audit verify
    audit_records: int = 100_000
    audit_pg: bool = True
    profile: bool = True

    @classmethod
    def make(cls, *, quick: bool, repeats: int | None, pg_url: str | None, profile: bool) -> Config:
        if quick:
            return cls(
                quick=True,
                repeats=repeats or 1,
                process_repeats=repeats or 1,
                pg_url=pg_url,
                overhead_calls=30,
                overhead_noop_calls=300,
                overhead_warmup=5,
                history_calls=20,
                history_other=2_000,
                history_same=200,
                http_clients=(8, 32),
                http_window_seconds=1.5,
                http_warmup_seconds=0.3,
                contention_calls=40,
                policy_decisions=3000,
                audit_records=5_000,
                profile=False,  # a smoke run: the profiles take longer than everything else together
            )
        return cls(repeats=repeats or 5, process_repeats=repeats or 3, pg_url=pg_url, profile=profile)


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


class LoadPayments:
    """Payments of their own for each client: the sandbox's load-test payments `demo_load_<n>`.

    Client i draws `demo_load_<i × PER_CLIENT + k>` for k = 1, 2, … (a new payment for every refund), so no
    two clients ever refund the same payment and what the throughput measures is distinct-payment load,
    not waiting for one another's payment row. Keep one instance per database: the next draw continues
    where the last load on that database stopped, so every payment starts with its full balance.
    """

    PER_CLIENT = 10_000  # the sandbox has demo_load_1 .. demo_load_1000000: room for 100 clients
    LIMIT = 1_000_000

    def __init__(self) -> None:
        self._drawn: dict[int, int] = {}

    def next(self, client: int) -> str:
        k = self._drawn.get(client, 0) + 1
        n = client * self.PER_CLIENT + k
        if k >= self.PER_CLIENT or n > self.LIMIT:
            raise RuntimeError(f"client {client} has used all its {self.PER_CLIENT - 1} load-test payments")
        self._drawn[client] = k
        return f"sandbox:demo_load_{n}"


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


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _wait_healthy(url: str, procs: Sequence[tuple[subprocess.Popen[bytes], Path]], deadline_seconds: float = 60.0) -> None:
    """Readiness polling: a server is up when /healthz answers 200."""
    import httpx2

    give_up = time.monotonic() + deadline_seconds
    while time.monotonic() < give_up:
        for proc, log_path in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"refund-mcp serve exited with {proc.returncode}: {_tail(log_path)}")
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


# Where the servers' stderr goes. A file, not a pipe: a pipe nobody reads fills up under load and then
# blocks the server on its next log line, which looks exactly like a server that stopped answering.
SERVER_LOG_DIR = BENCH_DIR / "results" / "server-logs"


@contextmanager
def http_servers(db_url: str, count: int = 1, policy: Path = THROUGHPUT_POLICY) -> Iterator[list[str]]:
    """Start `count` `refund-mcp serve --transport http` processes on one database; yields their /mcp URLs.

    The first one starts alone so that it applies the schema migrations; the others then start together.
    """
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    urls: list[str] = []
    env = server_env(db_url, policy)
    SERVER_LOG_DIR.mkdir(parents=True, exist_ok=True)
    try:
        for index in range(count):
            port = free_port()
            log_path = SERVER_LOG_DIR / f"serve-{port}.log"
            with open(log_path, "wb") as log_file:
                proc = subprocess.Popen(
                    [*refund_mcp_command(), "serve", "--transport", "http", "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                )
            procs.append((proc, log_path))
            urls.append(f"http://127.0.0.1:{port}")
            if index == 0:
                _wait_healthy(f"{urls[0]}/healthz", procs)
        for url in urls[1:]:
            _wait_healthy(f"{url}/healthz", procs)
        yield [f"{url}/mcp" for url in urls]
    finally:
        for proc, log_path in procs:
            _stop(proc)
            if proc.returncode in (0, -signal.SIGTERM) and not os.environ.get("REFUND_MCP_BENCH_KEEP_LOGS"):
                log_path.unlink(missing_ok=True)  # keep only the logs of servers that did not stop cleanly


def http_client_factory(timeout: float = 120.0) -> Any:
    """An httpx2 client for many concurrent MCP clients.

    No cap on connections (the default pool stops at 100), and idle connections expire after 2 s, before
    uvicorn closes them (its keep-alive timeout is 5 s): otherwise a request can go out on a connection
    the server is closing at that moment and fail with ReadError, which happened when 200 clients
    connected, waited for the start signal, and then all fired at once.
    """
    import httpx2

    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout),
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=2.0),
    )


def mcp_client(target: Any, http: Any = None) -> Any:
    """An MCP client for an in-process server or a /mcp URL (response caching off: every call reaches the server)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    if isinstance(target, str):
        return Client(streamable_http_client(target, http_client=http), cache=None)
    return Client(target, cache=None)


async def run_clients(
    targets: Sequence[Any],
    count: int,
    run: Callable[[Any, int], Awaitable[None]],
    *,
    prepare: Callable[[Any, int], Awaitable[None]] | None = None,
    http: Any = None,
) -> tuple[float, list[BaseException | None]]:
    """`count` MCP clients, spread round-robin over `targets`, each in its own task.

    Each client connects and runs `prepare`; once every client is ready (or has failed), all are
    released together into `run`. Returns the release time (perf_counter) and, per client, the error
    that ended it, if any: one client's broken connection is recorded, not allowed to end the run.
    """
    import anyio

    errors: list[BaseException | None] = [None] * count
    settled = 0
    go = anyio.Event()
    released = [0.0]

    async def one(index: int) -> None:
        nonlocal settled
        ready = False
        try:
            async with mcp_client(targets[index % len(targets)], http) as client:
                if prepare is not None:
                    await prepare(client, index)
                settled += 1
                ready = True
                await go.wait()
                await run(client, index)
        except Exception as exc:
            errors[index] = exc
            if not ready:
                settled += 1

    async def release() -> None:
        while settled < count:
            await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # let every task reach go.wait()
        released[0] = time.perf_counter()
        go.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release)
        for index in range(count):
            tg.start_soon(one, index)
    return released[0], errors


def describe_error(exc: BaseException) -> str:
    """The innermost cause of a (possibly grouped) client failure, e.g. `ReadError`."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


def error_code(result: Any) -> str:
    """The `[code]` refund-mcp puts at the start of an error message (after the SDK's prefix)."""
    text = result.content[0].text if result.content else ""
    start = text.find("[")
    end = text.find("]", start)
    return text[start + 1 : end] if start >= 0 and end > start else text[:60]
