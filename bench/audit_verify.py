"""6. Audit: verifying a 100k-record hash chain.

The chain is built with refund_mcp.audit.chain (canonical_json, record_hash) in the exact body format
audit.log.append writes, and bulk-inserted in batches: appending 100k records one by one through
append() would take minutes and measure the insert, not the verify. That the bulk-built chain is
faithful is checked by verify() itself returning ok. Then refund_mcp.audit.log.verify(engine) is
timed, and once per database `refund-mcp audit verify` end to end (process start, wall time, peak RSS).
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import Config, Section, Spread, fmt, fmt_spread, fresh_db, log, pg_available, refund_mcp_command, server_env

BATCH = 5000
ACTIONS = (
    ("refund.reserved", "queued"),
    ("refund.submitted", "succeeded"),
    ("transaction.lookup", "ok"),
    ("policy.check", "allow"),
)


def _iso(value: datetime) -> str:
    # Same rendering as refund_mcp.audit.log (microseconds, Z): the body and the `at` column must agree.
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _rows(count: int) -> Any:
    """Chained audit rows shaped like real ones (a create_refund request, a policy decision, a detail)."""
    from refund_mcp.audit.chain import GENESIS_HASH, canonical_json, record_hash

    prev = GENESIS_HASH
    start = datetime.now(UTC) - timedelta(days=30)
    batch: list[dict[str, Any]] = []
    for seq in range(1, count + 1):
        action, outcome = ACTIONS[seq % len(ACTIONS)]
        at = start + timedelta(milliseconds=seq * 25)
        target = f"rf_{seq:026d}"
        body = {
            "seq": seq,
            "at": _iso(at),
            "actor": f"agent-{seq % 7}",
            "action": action,
            "target": target,
            "outcome": outcome,
            "error_code": None,
            "request": {
                "transaction_id": f"stripe:ch_{seq:024d}",
                "reason": "requested_by_customer",
                "amount_minor": 1000 + seq % 5000,
                "currency": "USD",
                "note": None,
                "idempotency_key": f"key-{seq}",
                "processor": None,
                "customer_ref": "customer@example.com",
            },
            "decision": {"outcome": "allow", "rules": ["limits.per_refund", "reasons"], "policy_version": "0104033b969ec667"},
            "processor_request_id": f"req_{seq:012d}",
            "detail": {"transaction_id": f"stripe:ch_{seq:024d}", "amount_minor": 1000 + seq % 5000, "currency": "USD"},
        }
        text = canonical_json(body)
        digest = record_hash(prev, text)
        batch.append(
            {"seq": seq, "at": at, "actor": body["actor"], "action": action, "target": target, "outcome": outcome,
             "error_code": None, "body": text, "prev_hash": prev, "hash": digest}
        )
        prev = digest
        if len(batch) == BATCH:
            yield batch, prev
            batch = []
    if batch:
        yield batch, prev


async def _fill(db_url: str, count: int) -> float:
    from sqlalchemy import insert, update

    from refund_mcp.store import tables
    from refund_mcp.store.database import Database

    db = Database(db_url)
    try:
        await db.migrate()
        start = time.perf_counter()
        head = None
        for rows, head in _rows(count):
            async with db.engine.begin() as conn:
                await conn.execute(insert(tables.audit_log), rows)
        async with db.engine.begin() as conn:
            await conn.execute(update(tables.audit_head).where(tables.audit_head.c.id == 1).values(seq=count, hash=head))
        return time.perf_counter() - start
    finally:
        await db.dispose()


async def _verify_once(db_url: str) -> tuple[float, Any]:
    from refund_mcp.audit import log as audit
    from refund_mcp.store.database import Database

    db = Database(db_url)  # a fresh engine: no warm connection pool, as in `refund-mcp audit verify`
    try:
        start = time.perf_counter()
        result = await audit.verify(db.engine)
        return time.perf_counter() - start, result
    finally:
        await db.dispose()


def _peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a running process (its own peak RSS since exec), in MiB.

    Not getrusage/wait4: on Linux a child's ru_maxrss starts from the parent's RSS at fork and survives
    exec, so a small child of a large benchmark process would report the benchmark's size.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cli_verify(db_url: str) -> tuple[float, float, str]:
    """`refund-mcp audit verify` as a user runs it: wall seconds, peak RSS (MiB), its one-line answer."""
    env = server_env(db_url)
    start = time.perf_counter()
    proc = subprocess.Popen([*refund_mcp_command(), "audit", "verify"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0.0
    while proc.poll() is None:  # the high-water mark only grows: the last reading is the peak, to within 20 ms
        peak = max(peak, _peak_rss_mib(proc.pid) or 0.0)
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else b""  # a few lines: the pipe never fills
    if proc.stdout:
        proc.stdout.close()
    answer = out.decode(errors="replace").strip().splitlines()
    return seconds, peak, answer[-1] if answer else f"exit {proc.returncode}"


async def run(cfg: Config) -> Section:
    section = Section(
        name="audit",
        title=f"6. Audit chain verify, {cfg.audit_records:,} records",
        columns=["db", "bulk insert (s)", "verify() (s)", "records/s", "result", "`refund-mcp audit verify` (s)", "its peak RSS"],
    )
    kinds = ["sqlite"]
    if cfg.audit_pg and await pg_available(cfg.pg_url):
        kinds.append("postgresql")
    raw: dict[str, Any] = {}
    for kind in kinds:
        async with fresh_db(kind, cfg) as url:
            log(f"audit: inserting {cfg.audit_records:,} chained records into {kind}")
            fill_seconds = await _fill(url, cfg.audit_records)
            times, rates = Spread(), Spread()
            result = None
            for repeat in range(cfg.repeats):
                log(f"audit: verify on {kind}, repeat {repeat + 1}/{cfg.repeats}")
                seconds, result = await _verify_once(url)
                times.add(seconds)
                rates.add(result.records / seconds)
            cli_seconds, cli_rss, cli_answer = _cli_verify(url)
        section.rows.append(
            [
                kind,
                fmt(fill_seconds),
                fmt_spread(times),
                fmt_spread(rates, 0),
                "ok" if result and result.ok else f"BROKEN: {result.problem if result else '?'}",
                fmt(cli_seconds),
                f"{fmt(cli_rss, 0)} MiB",
            ]
        )
        raw[kind] = {
            "insert_seconds": fill_seconds,
            "verify_seconds": times.as_dict(),
            "records_per_second": rates.as_dict(),
            "ok": bool(result and result.ok),
            "cli_seconds": cli_seconds,
            "cli_peak_rss_mib": cli_rss,
            "cli_answer": cli_answer,
        }
    # Baseline for the RSS column: the same command on an empty chain.
    async with fresh_db("sqlite", cfg) as url:
        from refund_mcp.store.database import Database

        db = Database(url)
        await db.migrate()
        await db.dispose()
        _, empty_rss, _ = _cli_verify(url)
    section.notes.append(
        f"Records are built with refund_mcp.audit.chain in append()'s body format (~{_body_size()} bytes of canonical JSON each, "
        f"like a create_refund record) and inserted {BATCH:,} per transaction; verify() returning ok shows the bulk-built chain "
        f"is faithful. verify() is timed {cfg.repeats}× with a fresh engine; the CLI column is one run including process start."
    )
    section.notes.append(
        f"Peak RSS (VmHWM) of `refund-mcp audit verify` on an empty chain: {fmt(empty_rss, 0)} MiB; the difference is the "
        "memory verifying the chain takes (records are read 5,000 at a time)."
    )
    raw["cli_empty_chain_peak_rss_mib"] = empty_rss
    section.raw = raw
    return section


def _body_size() -> int:
    rows, _ = next(_rows(1))
    return len(rows[0]["body"].encode())
