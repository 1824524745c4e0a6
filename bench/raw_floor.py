"""0. The raw-driver floor: one create_refund's own SQL, replayed through the driver alone.

One real create_refund (sandbox, 1 unit) is run through the App with every statement captured as the
driver received it, grouped into its transactions. The same statements are then replayed through
aiosqlite (WAL, `synchronous=NORMAL` as refund-mcp runs it, and `FULL`) and asyncpg alone: no
SQLAlchemy, no service, no MCP. What differs per replay is only what must: a fresh refund id,
idempotency key and processor refund id, and the audit sequence number read from the head in the same
transaction. The distance from this to `create_refund` is overhead we wrote; this is what storage costs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import BENCH_ACTOR, Config, Section, Spread, fmt, fmt_spread, fresh_db, log, make_app, ms, pg_available

PAYMENT = "sandbox:demo_usd_large"


@dataclass
class Captured:
    transactions: list[list[tuple[str, tuple[Any, ...]]]] = field(default_factory=list)
    dynamic: dict[Any, str] = field(default_factory=dict)  # captured value -> its kind ("refund", "key", "processor_ref")

    @property
    def statements(self) -> int:
        return sum(len(txn) for txn in self.transactions)


async def _no_background_seal(_engine: Any) -> None:
    return None


async def _capture(url: str) -> Captured:
    """The statements of one create_refund (after a warm-up one), per transaction, as the driver got them."""
    from sqlalchemy import event

    from refund_mcp.service.refunds import RefundInput

    captured = Captured()
    async with make_app(url) as app:
        service = app.service
        request = RefundInput(transaction_id=PAYMENT, reason="service_issue", amount_minor=1, idempotency_key="floor-warm")
        await service.create_refund(BENCH_ACTOR, request)
        sync_engine = app.db.engine.sync_engine
        current: list[tuple[str, tuple[Any, ...]]] = []

        def on_begin(_conn: Any) -> None:
            current.clear()

        def on_statement(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            if statement.strip().upper() != "BEGIN IMMEDIATE":  # the replay begins its own transactions
                current.append((statement, tuple(parameters or ())))

        def on_commit(_conn: Any) -> None:
            captured.transactions.append(list(current))

        from refund_mcp.audit import sealing

        await sealing.settle(app.db.engine)
        # PostgreSQL seals audit records in the background after a commit, coalesced across writes, on other
        # connections: left out of the capture (it would interleave with the refund's own transactions).
        background_seal = sealing.seal_after_commit
        sealing.seal_after_commit = _no_background_seal  # type: ignore[assignment]
        event.listen(sync_engine, "begin", on_begin)
        event.listen(sync_engine, "before_cursor_execute", on_statement)
        event.listen(sync_engine, "commit", on_commit)
        try:
            result = await service.create_refund(
                BENCH_ACTOR, RefundInput(transaction_id=PAYMENT, reason="service_issue", amount_minor=1, idempotency_key="floor-captured")
            )
        finally:
            sealing.seal_after_commit = background_seal  # type: ignore[assignment]
            for target, name, fn in ((sync_engine, "begin", on_begin), (sync_engine, "before_cursor_execute", on_statement), (sync_engine, "commit", on_commit)):
                event.remove(target, name, fn)
        captured.dynamic[result.refund_id] = "refund"
        captured.dynamic["floor-captured"] = "key"
        if result.processor_refund_id:
            captured.dynamic[result.processor_refund_id] = "processor_ref"
    captured.transactions = [txn for txn in captured.transactions if txn]
    return captured


class _Chain:
    """The audit chain's head as the replay moves it (SQLite): one connection replays in sequence."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.hash = ""


class _Rewriter:
    """Per replay: fresh unique values, and the audit sequence continued from the head the replays left."""

    def __init__(self, captured: Captured, index: int, chain: _Chain) -> None:
        from refund_mcp.domain.ids import new_refund_id

        fresh = {"refund": new_refund_id(), "key": f"floor-{index}", "processor_ref": f"sbx_re_floor{index:08d}"}
        self.values = {value: fresh[kind] for value, kind in captured.dynamic.items()}
        self.chain = chain

    def params(self, statement: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        out = [self.values.get(p, p) if isinstance(p, str) else p for p in params]
        head = " ".join(statement.split()).upper()
        chain = self.chain
        if head.startswith("UPDATE AUDIT_HEAD") and chain.seq is not None:
            # SET seq, hash WHERE id AND seq AND hash: the append moves the head it last left (audit/log.py).
            new_hash = f"{chain.seq + 1:064x}"
            out = [chain.seq + 1, new_hash, out[2], chain.seq, chain.hash]
            chain.seq, chain.hash = chain.seq + 1, new_hash
        elif head.startswith("INSERT INTO AUDIT_LOG") and chain.seq is not None:
            out[0] = chain.seq  # seq is the first column
        return tuple(out)

    def saw(self, statement: str, rows: list[Any]) -> None:
        head = " ".join(statement.split()).upper()
        if head.startswith("SELECT AUDIT_HEAD.SEQ") and rows:
            self.chain.seq, self.chain.hash = int(rows[0][0]), rows[0][1]


async def _replay_sqlite(path: str, captured: Captured, synchronous: str, calls: int, warmup: int) -> list[float]:
    import aiosqlite

    samples: list[float] = []
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        for pragma in ("journal_mode=WAL", f"synchronous={synchronous}", "foreign_keys=ON", "busy_timeout=60000"):
            await conn.execute(f"PRAGMA {pragma}")
        chain = _Chain()
        cursor = await conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
        chain.seq, chain.hash = next(iter(await cursor.fetchall()))
        await cursor.close()
        for index in range(warmup + calls):
            rewriter = _Rewriter(captured, index + (0 if synchronous == "NORMAL" else 1_000_000), chain)
            start = time.perf_counter()
            for txn in captured.transactions:
                await conn.execute("BEGIN IMMEDIATE")
                for statement, params in txn:
                    cursor = await conn.execute(statement, rewriter.params(statement, params))
                    rewriter.saw(statement, list(await cursor.fetchall()))
                    await cursor.close()
                await conn.execute("COMMIT")
            if index >= warmup:
                samples.append(time.perf_counter() - start)
    return samples


def _asyncpg_sql(statement: str) -> str:
    """SQLAlchemy's asyncpg dialect hands `%s`-style placeholders to its cursor; asyncpg wants `$n`."""
    parts = statement.split("%s")
    return "".join(part + (f"${i + 1}" if i < len(parts) - 1 else "") for i, part in enumerate(parts))


async def _replay_pg(url: str, captured: Captured, calls: int, warmup: int) -> list[float]:
    import asyncpg

    from bench.common import _asyncpg_dsn

    samples: list[float] = []
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        chain = _Chain()  # PostgreSQL appends to audit_pending: no seq in the writer's statements
        for index in range(warmup + calls):
            rewriter = _Rewriter(captured, index, chain)
            start = time.perf_counter()
            for txn in captured.transactions:
                async with conn.transaction():
                    for statement, params in txn:
                        sql = _asyncpg_sql(statement) if "%s" in statement else statement
                        rows = await conn.fetch(sql, *rewriter.params(statement, params))
                        rewriter.saw(statement, [tuple(r) for r in rows])
            if index >= warmup:
                samples.append(time.perf_counter() - start)
    finally:
        await conn.close()
    return samples


async def _one(kind: str, cfg: Config) -> tuple[dict[str, float], Captured]:
    from sqlalchemy.engine import make_url

    calls, warmup = cfg.overhead_calls * 2, cfg.overhead_warmup
    async with fresh_db(kind, cfg) as url:
        captured = await _capture(url)
        if kind == "sqlite":
            path = make_url(url).database
            normal = await _replay_sqlite(path, captured, "NORMAL", calls, warmup)
            full = await _replay_sqlite(path, captured, "FULL", calls, warmup)
            return {"sqlite NORMAL": statistics.median(normal), "sqlite FULL": statistics.median(full)}, captured
        return {"postgresql": statistics.median(await _replay_pg(url, captured, calls, warmup))}, captured


async def run(cfg: Config) -> Section:
    section = Section(
        name="floor",
        title="0. Raw-driver floor: one create_refund's statements through the driver alone (p50 ms per refund)",
        columns=["driver, durability", "p50 per refund", "statements / transactions"],
    )
    kinds = ["sqlite"] + (["postgresql"] if await pg_available(cfg.pg_url) else [])
    spreads: dict[str, Spread] = {}
    shape: dict[str, str] = {}
    for kind in kinds:
        for repeat in range(cfg.repeats):
            log(f"floor: {kind}, repeat {repeat + 1}/{cfg.repeats}")
            medians, captured = await _one(kind, cfg)
            for label, value in medians.items():
                spreads.setdefault(label, Spread()).add(ms(value))
                shape[label] = f"{captured.statements} / {len(captured.transactions)}"
    for label, spread in spreads.items():
        driver = "asyncpg, fsync on (server default)" if label == "postgresql" else f"aiosqlite, WAL, synchronous={label.split()[1]}"
        section.rows.append([driver, fmt_spread(spread, 3), shape[label]])
    section.notes.append(
        f"{cfg.overhead_calls * 2} replays per repeat after {cfg.overhead_warmup} warm-up ones, one connection, repeats: {cfg.repeats}; "
        "the statements are those one create_refund sent (captured with SQLAlchemy's before_cursor_execute), each "
        "transaction committed as the service commits it. refund-mcp runs SQLite with synchronous=FULL (every commit is "
        "fsynced; NORMAL survives a process crash but may lose the last commits on power failure). On PostgreSQL the "
        "audit records go to audit_pending and are sealed into the chain in the background after commit, coalesced "
        "across writes: that sealing is not in these statements."
    )
    section.raw = {label: spread.as_dict() for label, spread in spreads.items()}
    section.raw["floor_ms"] = {label: spread.median for label, spread in spreads.items()}
    return section
