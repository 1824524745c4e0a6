"""`serve` answers initialize and tools/list before it builds what only a tool call needs.

The MCP server is built from static tool definitions; the database, the store and the processor clients
come with the first tool call. What must be refused at start still is: an invalid policy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from mcp import Client, StdioServerParameters
from refund_mcp.settings import Settings
from tests.conftest import TEST_POLICY, sqlite_url
from tests.support.servers import refund_mcp_command

pytestmark = pytest.mark.anyio


def _env(db_url: str, policy: str = str(TEST_POLICY)) -> dict[str, str]:
    return {
        "REFUND_MCP_DB": db_url,
        "REFUND_MCP_POLICY": policy,
        "REFUND_MCP_SANDBOX": "1",
        "REFUND_MCP_ACTOR": "stdio-agent",
    }


async def test_tools_are_listed_over_stdio_even_when_the_database_cannot_be_opened(tmp_path):
    """The database directory cannot be created (its parent is a file): listing tools does not need it;
    a tool call reports the failure, and the server keeps serving."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    command, *args = refund_mcp_command()
    env = {**os.environ, **_env(f"sqlite+aiosqlite:///{blocker / 'refunds.sqlite3'}")}
    params = StdioServerParameters(command=command, args=[*args, "serve"], env=env)
    async with Client(params) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"lookup_transaction", "create_refund", "check_refund_policy", "list_refunds"} <= tools
        failed = await client.call_tool("lookup_transaction", {"transaction_id": "sandbox:demo_usd_order"})
        assert failed.is_error
        assert len((await client.list_tools()).tools) == len(tools)


def test_building_the_served_app_imports_neither_the_store_nor_the_service(tmp_path):
    """In a fresh interpreter: LazyApp (policy loaded, accounts checked, MCP server built) without SQLAlchemy."""
    script = (
        "import sys\n"
        "from refund_mcp.app import LazyApp\n"
        "from refund_mcp.settings import Settings\n"
        "app = LazyApp(Settings.from_env())\n"
        "assert app.server is not None and app.built is None\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'aiosqlite', 'asyncpg', 'grpc')"
        " or m in ('refund_mcp.service.refunds', 'refund_mcp.store.database', 'refund_mcp.processors.registry'))\n"
        "print(','.join(loaded))\n"
    )
    env = {**os.environ, **_env(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == ""
    assert not (tmp_path / "db.sqlite3").exists()


def test_an_invalid_policy_is_still_refused_at_start_with_file_and_line(tmp_path):
    policy = tmp_path / "broken.yaml"
    policy.write_text("version: 1\nrules:\n  - name: [unclosed\n")
    proc = subprocess.run(
        [*refund_mcp_command(), "serve"],
        input=b"",
        env={**os.environ, **_env(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}", policy=str(policy))},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 1
    stderr = proc.stderr.decode()
    assert "invalid policy" in stderr and f"{policy}:" in stderr, stderr[-2000:]
    assert "refund-mcp serving" not in stderr


async def test_on_stdio_the_worker_starts_with_the_first_tool_call_and_then_retries_an_earlier_sessions_refund(app_factory, tmp_path):
    """The worker never builds the App: an idle session stays without database and processor clients however
    many worker intervals pass; the first tool call builds it, and the worker then picks up a refund that an
    earlier session left queued."""
    import anyio

    from refund_mcp.app import LazyApp
    from refund_mcp.worker import run_app_worker

    async with app_factory() as earlier, Client(earlier.server) as client:
        queued = (
            await client.call_tool(
                "create_refund", {"transaction_id": "sandbox:demo_usd_order", "reason": "service_issue", "amount_minor": 199}
            )
        ).structured_content
        assert queued["status"] == "queued" and queued["retry"]["attempts"] == 1

    interval = 0.01
    settings = replace(
        Settings.from_env({"REFUND_MCP_SANDBOX": "1"}),
        db_url=sqlite_url(tmp_path), policy_path=TEST_POLICY, actor="stdio-agent", worker_interval_seconds=interval,
    )
    lazy = LazyApp(settings)
    stop = anyio.Event()
    worker_started = anyio.Event()

    async def worker(app: Any) -> None:
        worker_started.set()
        # The earlier session's backoff has passed by now (the clock is injected, nothing sleeps through it).
        real_clock = app.service.clock
        app.service.clock = lambda: real_clock() + timedelta(minutes=10)
        await run_app_worker(app, None, stop)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lazy.run_worker, worker, stop)
            async with Client(lazy.server) as session:
                assert (await session.list_tools()).tools
                # Several worker intervals with no tool call: the App stays unbuilt and the worker waits.
                with anyio.move_on_after(5 * interval):
                    while True:
                        assert lazy.built is None and not worker_started.is_set()
                        await anyio.sleep(interval / 2)
                assert lazy.built is None and not worker_started.is_set()

                looked_up = await session.call_tool("lookup_transaction", {"transaction_id": "sandbox:demo_usd_large"})
                assert not looked_up.is_error and lazy.built is not None
                with anyio.fail_after(30):
                    while True:
                        status = (
                            await session.call_tool("get_refund_status", {"refund_id": queued["refund_id"], "refresh": False})
                        ).structured_content
                        if status["retry"]["attempts"] >= 2:  # the worker sent it again, under the same key
                            break
                        await anyio.sleep(interval)
                assert worker_started.is_set()
            stop.set()
    finally:
        await lazy.aclose()
