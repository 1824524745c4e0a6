"""`refund-mcp demo`: a scripted walk through the tools against the sandbox, through a real MCP client.

It uses a throw-away database and the packaged default policy, so it never touches your data.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any


def _show(title: str, result: Any) -> None:
    print(f"\n== {title}")
    if result.is_error:
        print(f"   error: {result.content[0].text}")
        return
    data = result.structured_content or {}
    keep = (
        "transaction_id", "refund_id", "status", "decision", "amount_display", "refundable_display",
        "refundable_minor", "reason", "duplicate_of", "message", "next_cursor",
    )
    for key in keep:
        if data.get(key) is not None:
            print(f"   {key}: {data[key]}")
    if "rules" in data:
        for rule in data["rules"]:
            print(f"   rule {rule['name']}: {rule['outcome']} — {rule['detail']}")
    if "refunds" in data and "transaction_id" not in data:
        for refund in data["refunds"]:
            print(f"   {refund['refund_id']}  {refund['status']:<16} {refund['amount_display']:>12}  {refund['transaction_id']}")


async def run_demo() -> int:
    from mcp import Client
    from refund_mcp.app import App
    from refund_mcp.settings import Settings

    with tempfile.TemporaryDirectory(prefix="refund-mcp-demo-") as tmp:
        settings = replace(
            Settings.from_env({}),
            db_url=f"sqlite+aiosqlite:///{Path(tmp) / 'demo.sqlite3'}",
            actor="demo-agent",
            sandbox=True,
        )
        app = await App.create(settings)
        try:
            print("refund-mcp demo — sandbox processor, default policy, throw-away database", file=sys.stdout)
            async with Client(app.server) as client:
                tools = await client.list_tools()
                print("tools:", ", ".join(tool.name for tool in tools.tools))
                txn = "sandbox:demo_usd_order"
                _show(f"lookup_transaction {txn}", await client.call_tool("lookup_transaction", {"transaction_id": txn}))
                _show(
                    "check_refund_policy: USD 30.00, requested_by_customer",
                    await client.call_tool(
                        "check_refund_policy", {"transaction_id": txn, "reason": "requested_by_customer", "amount_minor": 3000}
                    ),
                )
                first = await client.call_tool(
                    "create_refund",
                    {"transaction_id": txn, "reason": "requested_by_customer", "amount_minor": 3000, "idempotency_key": "demo-1"},
                )
                _show("create_refund USD 30.00", first)
                _show(
                    "create_refund again with the same idempotency_key (returns the same refund)",
                    await client.call_tool(
                        "create_refund",
                        {"transaction_id": txn, "reason": "requested_by_customer", "amount_minor": 3000, "idempotency_key": "demo-1"},
                    ),
                )
                _show(
                    "create_refund USD 500.00 (more than is left)",
                    await client.call_tool("create_refund", {"transaction_id": txn, "reason": "requested_by_customer", "amount_minor": 50000}),
                )
                _show(
                    "create_refund USD 0.13 (the sandbox declines amounts ending in 13)",
                    await client.call_tool("create_refund", {"transaction_id": txn, "reason": "product_defective", "amount_minor": 13}),
                )
                _show(
                    "create_refund on a fully refunded payment",
                    await client.call_tool("create_refund", {"transaction_id": "sandbox:demo_usd_refunded", "reason": "duplicate"}),
                )
                refund_id = (first.structured_content or {}).get("refund_id")
                if refund_id:
                    _show("get_refund_status", await client.call_tool("get_refund_status", {"refund_id": refund_id}))
                _show("list_refunds", await client.call_tool("list_refunds", {"limit": 10}))
            from refund_mcp.audit import log as audit

            verdict = await audit.verify(app.db.engine)
            print(f"\naudit chain: {'OK' if verdict.ok else 'BROKEN'} ({verdict.records} records)")
            print("\nNext: `refund-mcp serve` and connect an MCP client; see README.md.")
        finally:
            await app.aclose()
    return 0
