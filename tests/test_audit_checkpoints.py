"""Signed audit checkpoints: a chain rewritten consistently by someone with database write access, a truncated
tail and a removed checkpoint are all detected; without checkpoints `verify` says what it cannot see."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy import delete, select, update

from refund_mcp.audit import checkpoints as signed
from refund_mcp.audit import log as audit
from refund_mcp.audit.chain import canonical_json, record_hash
from refund_mcp.cli import main
from refund_mcp.store import tables
from refund_mcp.worker import checkpoint_schedule
from tests.test_audit import make_some_history

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "audit.key", tmp_path / "audit.pub"
    signed.generate_key_pair(private, public)
    return private, public


async def rewrite_consistently(engine, *, edit_seq: int, drop_last: int) -> None:
    """The reproduction: edit a record, recompute every hash after it, drop the newest records and
    move audit_head back, so the hash chain alone is consistent again."""
    log = tables.audit_log
    async with engine.begin() as conn:
        rows = (await conn.execute(select(log).order_by(log.c.seq))).all()
        keep = rows[: len(rows) - drop_last]
        prev = "0" * 64
        for row in keep:
            body = json.loads(row.body)
            if row.seq == edit_seq:
                body["outcome"] = "denied"
            text = canonical_json(body)
            digest = record_hash(prev, text)
            await conn.execute(
                update(log).where(log.c.seq == row.seq).values(body=text, outcome=body["outcome"], prev_hash=prev, hash=digest)
            )
            prev = digest
        await conn.execute(delete(log).where(log.c.seq > keep[-1].seq))
        await conn.execute(update(tables.audit_head).where(tables.audit_head.c.id == 1).values(seq=keep[-1].seq, hash=prev))


async def anchors_of(path: Path, public: Path) -> dict[int, str]:
    return signed.verify_file(signed.read_file(path), signed.load_public_key(public))


async def test_a_consistently_rewritten_chain_passes_alone_and_fails_against_checkpoints(app_factory, keys, tmp_path):
    private, public = keys
    file = tmp_path / "checkpoints.jsonl"
    async with app_factory() as app:
        await make_some_history(app)
        await signed.append_checkpoint(app.db.engine, file, signed.load_private_key(private), now=NOW)
        await rewrite_consistently(app.db.engine, edit_seq=3, drop_last=1)
        assert (await audit.verify(app.db.engine)).ok  # what the hash chain alone cannot see
        result = await audit.verify(app.db.engine, anchors=await anchors_of(file, public))
    assert not result.ok
    assert "signed checkpoint" in result.problem


async def test_a_truncated_tail_fails_against_checkpoints(app_factory, keys, tmp_path):
    private, public = keys
    file = tmp_path / "checkpoints.jsonl"
    async with app_factory() as app:
        await make_some_history(app)
        await signed.append_checkpoint(app.db.engine, file, signed.load_private_key(private), now=NOW)
        signed_upto = signed.read_file(file)[-1].seq
        # Remove only the newest records and move the head back: every remaining hash is genuine.
        async with app.db.engine.begin() as conn:
            kept = (await conn.execute(select(tables.audit_log).where(tables.audit_log.c.seq == signed_upto - 2))).one()
            await conn.execute(delete(tables.audit_log).where(tables.audit_log.c.seq > kept.seq))
            await conn.execute(update(tables.audit_head).where(tables.audit_head.c.id == 1).values(seq=kept.seq, hash=kept.hash))
        assert (await audit.verify(app.db.engine)).ok
        result = await audit.verify(app.db.engine, anchors=await anchors_of(file, public))
    assert not result.ok and "records were removed" in result.problem


async def test_records_after_the_newest_checkpoint_extend_it(app_factory, keys, tmp_path):
    private, public = keys
    file = tmp_path / "checkpoints.jsonl"
    key = signed.load_private_key(private)
    async with app_factory() as app:
        await signed.append_checkpoint(app.db.engine, file, key, now=NOW)  # the empty chain
        await make_some_history(app)
        await signed.append_checkpoint(app.db.engine, file, key, now=NOW)
        await make_some_history(app)
        assert (await audit.verify(app.db.engine, anchors=await anchors_of(file, public))).ok
        assert [checkpoint.seq for checkpoint in signed.read_file(file)][0] == 0


async def test_a_removed_forged_or_foreign_checkpoint_is_refused(app_factory, keys, tmp_path):
    private, public = keys
    file = tmp_path / "checkpoints.jsonl"
    key = signed.load_private_key(private)
    async with app_factory() as app:
        for _ in range(3):
            await make_some_history(app)
            await signed.append_checkpoint(app.db.engine, file, key, now=NOW)
    lines = file.read_text().splitlines()
    removed = tmp_path / "removed.jsonl"
    removed.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(signed.CheckpointError, match="does not follow"):
        await anchors_of(removed, public)
    forged = tmp_path / "forged.jsonl"
    moved = json.loads(lines[1]) | {"hash": "f" * 64}
    forged.write_text("\n".join([lines[0], json.dumps(moved), lines[2]]) + "\n")
    with pytest.raises(signed.CheckpointError, match="invalid signature"):
        await anchors_of(forged, public)
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    signed.generate_key_pair(other_private, other_public)
    with pytest.raises(signed.CheckpointError, match="signed by key"):
        await anchors_of(file, other_public)


async def test_checkpoint_refuses_to_sign_a_chain_that_no_longer_extends_the_last_one(app_factory, keys, tmp_path):
    private, _ = keys
    file = tmp_path / "checkpoints.jsonl"
    key = signed.load_private_key(private)
    async with app_factory() as app:
        await make_some_history(app)
        await signed.append_checkpoint(app.db.engine, file, key, now=NOW)
        await rewrite_consistently(app.db.engine, edit_seq=2, drop_last=0)
        with pytest.raises(signed.CheckpointError, match="not signing"):
            await signed.append_checkpoint(app.db.engine, file, key, now=NOW)
    assert len(file.read_text().splitlines()) == 1


async def test_the_worker_loop_writes_checkpoints(app_factory, keys, tmp_path):
    private, public = keys
    file = tmp_path / "worker" / "checkpoints.jsonl"
    schedule = checkpoint_schedule(
        {"REFUND_MCP_AUDIT_CHECKPOINT_MINUTES": "60", "REFUND_MCP_AUDIT_KEY": str(private), "REFUND_MCP_AUDIT_CHECKPOINTS": str(file)}
    )
    assert schedule is not None and schedule.minutes == 60
    with pytest.raises(ValueError, match="REFUND_MCP_AUDIT_KEY"):
        checkpoint_schedule({"REFUND_MCP_AUDIT_CHECKPOINT_MINUTES": "5"})
    async with app_factory() as app:
        await make_some_history(app)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(signed.checkpoint_forever, app.db.engine, schedule.key, schedule.path, schedule.minutes, stop)
            give_up = time.monotonic() + 30
            while not (file.exists() and file.read_text()) and time.monotonic() < give_up:  # readiness polling
                await anyio.sleep(0.02)
            stop.set()
        assert (await audit.verify(app.db.engine, anchors=await anchors_of(file, public))).ok
    assert len(signed.read_file(file)) == 1


def test_the_cli_keygen_checkpoint_and_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFUND_MCP_DB", f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}")
    private, public, file = tmp_path / "k", tmp_path / "k.pub", tmp_path / "cp.jsonl"
    assert main(["audit", "keygen", "--private", str(private), "--public", str(public)]) == 0
    assert private.stat().st_mode & 0o777 == 0o600
    assert main(["audit", "keygen", "--private", str(private), "--public", str(public)]) == 1  # never overwrites
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "audit chain OK" in out and "not a chain rewritten consistently" in out
    monkeypatch.setenv("REFUND_MCP_AUDIT_KEY", str(private))
    assert main(["audit", "checkpoint", "-o", str(file)]) == 0
    assert main(["audit", "checkpoint"]) == 0  # printed
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["seq"] == 0 and printed["signature"]
    assert main(["audit", "verify", "--checkpoints", str(file), "--public-key", str(public)]) == 0
    assert "1 signed checkpoint(s) hold" in capsys.readouterr().out
    assert main(["audit", "verify", "--checkpoints", str(file)]) == 2
