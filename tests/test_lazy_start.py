"""`serve` answers initialize and tools/list before it builds what only a tool call needs.

The MCP server is built from static tool definitions; the database, the store and the processor clients
come with the first tool call. What must be refused at start still is: an invalid policy.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mcp import Client, StdioServerParameters
from tests.conftest import TEST_POLICY
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
