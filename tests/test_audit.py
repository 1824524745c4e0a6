"""The audit chain: every tool call leaves a record; edits, deletions and reordering are detected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import delete, select, update

from mcp import Client
from refund_mcp.audit import log as audit
from refund_mcp.store import tables

pytestmark = pytest.mark.anyio

TXN = "sandbox:demo_usd_order"


async def records(app) -> list:
    async with app.db.engine.connect() as conn:
        return list((await conn.execute(select(tables.audit_log).order_by(tables.audit_log.c.seq))).all())


async def make_some_history(app) -> None:
    async with Client(app.server) as client:
        await client.call_tool("lookup_transaction", {"transaction_id": TXN})
        await client.call_tool("check_refund_policy", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 100})
        done = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 100})
        await client.call_tool("get_refund_status", {"refund_id": done.structured_content["refund_id"]})
        await client.call_tool("list_refunds", {})
        await client.call_tool("cancel_refund", {"refund_id": done.structured_content["refund_id"]})  # refused
        await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "goodwill", "amount_minor": 100})  # denied


async def test_every_tool_call_leaves_a_record_including_refusals(app_factory):
    async with app_factory() as app:
        await make_some_history(app)
        actions = [row.action for row in await records(app)]
        assert actions[0] == "transaction.lookup"
        for expected in ("policy.check", "refund.reserved", "refund.submitted", "refund.status", "refund.list", "refund.cancel", "refund.create"):
            assert expected in actions, expected
        denied = [row for row in await records(app) if row.outcome == "denied"]
        assert any(row.error_code == "policy_denied" for row in denied)
        body = json.loads(denied[-1].body)
        assert "reasons" in body["decision"]["rules"]
        assert body["decision"]["policy_version"]
        assert (await audit.verify(app.db.engine)).ok


async def test_an_edited_record_is_detected(app_factory):
    async with app_factory() as app:
        await make_some_history(app)
        async with app.db.engine.begin() as conn:
            await conn.execute(update(tables.audit_log).where(tables.audit_log.c.seq == 3).values(actor="someone-else"))
        result = await audit.verify(app.db.engine)
        assert not result.ok and result.bad_seq == 3


async def test_an_edited_body_is_detected(app_factory):
    async with app_factory() as app:
        await make_some_history(app)
        row = (await records(app))[2]
        forged = row.body.replace('"service_issue"', '"fraudulent"')
        assert forged != row.body
        async with app.db.engine.begin() as conn:
            await conn.execute(update(tables.audit_log).where(tables.audit_log.c.seq == row.seq).values(body=forged))
        assert not (await audit.verify(app.db.engine)).ok


async def test_a_deleted_record_is_detected(app_factory):
    async with app_factory() as app:
        await make_some_history(app)
        async with app.db.engine.begin() as conn:
            await conn.execute(delete(tables.audit_log).where(tables.audit_log.c.seq == 4))
        result = await audit.verify(app.db.engine)
        assert not result.ok and result.bad_seq == 5


async def test_a_deleted_last_record_is_detected(app_factory):
    async with app_factory() as app:
        await make_some_history(app)
        last = (await records(app))[-1].seq
        async with app.db.engine.begin() as conn:
            await conn.execute(delete(tables.audit_log).where(tables.audit_log.c.seq == last))
        assert not (await audit.verify(app.db.engine)).ok


async def test_reordered_records_are_detected(app_factory):
    async with app_factory() as app:
        await make_some_history(app)
        rows = await records(app)
        a, b = rows[1], rows[2]
        async with app.db.engine.begin() as conn:
            await conn.execute(update(tables.audit_log).where(tables.audit_log.c.seq == a.seq).values(seq=-1))
            await conn.execute(update(tables.audit_log).where(tables.audit_log.c.seq == b.seq).values(seq=a.seq))
            await conn.execute(update(tables.audit_log).where(tables.audit_log.c.seq == -1).values(seq=b.seq))
        assert not (await audit.verify(app.db.engine)).ok


async def test_cli_verify_and_export(app_factory, tmp_path):
    async with app_factory() as app:
        await make_some_history(app)
        count = len(await records(app))
        url = app.settings.db_url
    # PYTHONPATH, when set, picks which sources the subprocess runs (as for the tests themselves).
    env = {"REFUND_MCP_DB": url, "PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    ok = subprocess.run([sys.executable, "-m", "refund_mcp", "audit", "verify"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"{count} record(s)" in ok.stdout
    out = tmp_path / "audit.jsonl"
    exported = subprocess.run([sys.executable, "-m", "refund_mcp", "audit", "export", "-o", str(out)], env=env, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, count + 1))
    assert all(line["hash"] and line["prev_hash"] for line in lines)
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(update(tables.audit_log).where(tables.audit_log.c.seq == 2).values(outcome="ok!"))
    await engine.dispose()
    broken = subprocess.run([sys.executable, "-m", "refund_mcp", "audit", "verify"], env=env, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "record 2" in broken.stderr


async def test_sqlite_appends_from_two_processes_and_after_a_rollback_keep_one_chain(tmp_path):
    """Each engine remembers the head it last moved and moves it only if it is still exactly that: a head
    another process moved, or one a rolled-back transaction left behind, is read again."""
    from refund_mcp.audit.log import AuditEntry
    from refund_mcp.store.database import Database

    url = f"sqlite+aiosqlite:///{tmp_path / 'chain.sqlite3'}"
    first, second = Database(url), Database(url)
    await first.migrate()

    class Undo(Exception):
        pass

    try:
        # After the rolled-back append, the other process appends at the very seq the first one remembers:
        # only the hash tells the first one that the head is not its own.
        for index, writer in enumerate((first, first, second, first, second, first)):
            async with writer.write() as conn:
                await audit.append(conn, AuditEntry(actor="a", action="test.append", outcome="ok", target=str(index)))
            if index == 3:
                with pytest.raises(Undo):
                    async with first.write() as conn:
                        await audit.append(conn, AuditEntry(actor="a", action="test.undone", outcome="ok"))
                        raise Undo
        async with first.write() as conn:  # two records in one transaction
            await audit.append(conn, AuditEntry(actor="a", action="test.append", outcome="ok", target="6"))
            await audit.append(conn, AuditEntry(actor="a", action="test.append", outcome="ok", target="7"))
        result = await audit.verify(first.engine)
        assert result.ok
        async with first.read() as conn:
            rows = (await conn.execute(select(tables.audit_log.c.seq, tables.audit_log.c.target).where(tables.audit_log.c.action.like("test.%")))).all()
        assert [row.target for row in rows] == [str(index) for index in range(8)]
        assert [row.seq for row in rows] == list(range(rows[0].seq, rows[0].seq + 8))
    finally:
        await first.dispose()
        await second.dispose()
