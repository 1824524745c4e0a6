"""cancel_refund: a refund's own actor may cancel it; anyone else needs the refunds:operate scope,
and such a cancel is audited as an operator's cancel of another actor's refund."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from refund_mcp.store import tables
from tests.security._asgi import served, tokens_for
from tests.security._support import SANDBOX_TXN
from tests.test_human_in_the_loop import HITL_POLICY

pytestmark = pytest.mark.anyio
WRITE = ["refunds:read", "refunds:write"]


async def audit_rows(app, action: str) -> list[dict]:
    async with app.db.engine.connect() as conn:
        rows = (await conn.execute(select(tables.audit_log.c.body).where(tables.audit_log.c.action == action))).all()
    return [json.loads(row.body) for row in rows]


async def test_only_the_refunds_actor_or_an_operator_may_cancel_it(app_factory, tmp_path):
    tokens = tokens_for(
        tmp_path / "tokens.yaml", owner_bot=WRITE, other_bot=WRITE, ops_lead=[*WRITE, "refunds:operate"]
    )
    async with app_factory(policy=HITL_POLICY) as app, served(app, tmp_path / "tokens.yaml") as connect:
        async with connect(tokens["owner_bot"]) as owner:
            parked = [
                (await owner.call_tool(
                    "create_refund", {"transaction_id": SANDBOX_TXN, "reason": "fraudulent", "amount_minor": amount}
                )).structured_content
                for amount in (100, 200, 300)
            ]
        assert all(refund["status"] == "pending_approval" and refund["actor"] == "owner-bot" for refund in parked)

        async with connect(tokens["other_bot"]) as other:
            refused = await other.call_tool("cancel_refund", {"refund_id": parked[0]["refund_id"], "reason": "mine now"})
            assert refused.is_error and "[forbidden]" in refused.content[0].text
            assert "refunds:operate" in refused.content[0].text
            still = (await other.call_tool("get_refund_status", {"refund_id": parked[0]["refund_id"]})).structured_content
            assert still["status"] == "pending_approval"

        async with connect(tokens["ops_lead"]) as operator:
            cancelled = (await operator.call_tool("cancel_refund", {"refund_id": parked[1]["refund_id"]})).structured_content
            assert cancelled["status"] == "cancelled"

        async with connect(tokens["owner_bot"]) as owner:
            own = (await owner.call_tool("cancel_refund", {"refund_id": parked[2]["refund_id"]})).structured_content
            assert own["status"] == "cancelled"

    [operator_record] = await audit_rows(app, "refund.operator_cancel")
    assert operator_record["actor"] == "ops-lead" and operator_record["target"] == parked[1]["refund_id"]
    assert operator_record["detail"]["refund_actor"] == "owner-bot"
    denied = [row for row in await audit_rows(app, "refund.cancel") if row["outcome"] == "error"]
    assert [(row["actor"], row["error_code"]) for row in denied] == [("other-bot", "forbidden")]
    own_records = [row for row in await audit_rows(app, "refund.cancel") if row["outcome"] == "cancelled"]
    assert [row["actor"] for row in own_records] == ["owner-bot"]
