"""Resources and the prompt pass the same policy gate as the tool they mirror, and are audited; a
refund's trail shown to an agent leaves out other actors' private request fields."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from mcp.shared.exceptions import MCPError
from refund_mcp.store import tables
from tests.conftest import TEST_POLICY
from tests.security._asgi import served, tokens_for
from tests.security._support import SANDBOX_TXN

pytestmark = pytest.mark.anyio
READ, WRITE = ["refunds:read"], ["refunds:read", "refunds:write"]
PRIVATE = {"note": "call me on +1 555 0100", "customer_ref": "ana.private@example.com", "idempotency_key": "writer-key-1"}


def policy_with_actors(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(TEST_POLICY.read_text() + "actors:\n  lookup-only: {tools: [lookup_transaction]}\n")
    return path


async def audit_records(app) -> list[dict]:
    async with app.db.engine.connect() as conn:
        rows = (await conn.execute(select(tables.audit_log.c.body).order_by(tables.audit_log.c.seq))).all()
    return [json.loads(row.body) for row in rows]


async def test_resources_follow_the_policys_tools_and_are_audited(app_factory, tmp_path):
    tokens = tokens_for(tmp_path / "tokens.yaml", writer_a=WRITE, lookup_only=READ, reader_b=READ)
    async with app_factory(policy=policy_with_actors(tmp_path)) as app, served(app, tmp_path / "tokens.yaml") as connect:
        async with connect(tokens["writer_a"]) as writer:
            created = (await writer.call_tool(
                "create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 500, **PRIVATE}
            )).structured_content
            own = json.loads((await writer.read_resource(f"refunds://refund/{created['refund_id']}")).contents[0].text)
        refund_uri = f"refunds://refund/{created['refund_id']}"

        async with connect(tokens["lookup_only"]) as limited:
            with pytest.raises(MCPError, match="policy_denied"):
                await limited.read_resource(refund_uri)
            with pytest.raises(MCPError, match="policy_denied"):
                await limited.read_resource("refunds://policy")
            await limited.get_prompt("handle_refund_request", {})  # its procedure starts with lookup_transaction

        async with connect(tokens["reader_b"]) as reader:
            other = json.loads((await reader.read_resource(refund_uri)).contents[0].text)
            policy = (await reader.read_resource("refunds://policy")).contents[0].text
            assert policy.startswith("# policy version")

    shown_to_other = json.dumps(other["audit_trail"])
    for value in PRIVATE.values():
        assert value not in shown_to_other, f"{value} is the writer's own business"
        assert value in json.dumps(own["audit_trail"]), "the writer sees its own request"
    assert other["refund"]["refund_id"] == created["refund_id"]

    records = await audit_records(app)
    denied = [(r["actor"], r["action"]) for r in records if r["error_code"] == "policy_denied"]
    assert denied == [("lookup-only", "get_refund_status.denied"), ("lookup-only", "check_refund_policy.denied")]
    assert ("lookup-only", "prompt.get") in [(r["actor"], r["action"]) for r in records]
    reads = [(r["actor"], r["action"]) for r in records if r["action"] in ("refund.read", "policy.read")]
    assert reads == [("writer-a", "refund.read"), ("reader-b", "refund.read"), ("reader-b", "policy.read")]
