"""The six tools through the SDK's in-process client, on both protocol modes."""

from __future__ import annotations

from typing import Any

import pytest

from mcp import Client
from tests.conftest import POLICY_DIR

pytestmark = pytest.mark.anyio

MODES = [pytest.param({}, id="2026-07-28"), pytest.param({"mode": "legacy"}, id="legacy")]
USD_ORDER = "sandbox:demo_usd_order"  # USD 120.00, captured


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


async def refund_rows(app: Any) -> int:
    from sqlalchemy import func, select

    from refund_mcp.store import tables

    async with app.db.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(tables.refunds))).scalar_one()


@pytest.mark.parametrize("mode", MODES)
async def test_tools_are_listed_with_schemas_and_annotations(app_factory, mode):
    async with app_factory() as app, Client(app.server, **mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {
        "lookup_transaction", "create_refund", "get_refund_status", "cancel_refund", "list_refunds", "check_refund_policy",
    }
    create = tools["create_refund"]
    assert create.annotations.destructive_hint is True
    assert create.annotations.idempotent_hint is False
    assert create.annotations.open_world_hint is True
    assert set(create.input_schema["required"]) == {"transaction_id", "reason"}
    assert "confirmation" not in create.input_schema["properties"]
    assert create.output_schema["properties"]["amount_display"]["type"] == "string"
    for name in ("lookup_transaction", "get_refund_status", "list_refunds", "check_refund_policy"):
        assert tools[name].annotations.read_only_hint is True, name
    assert tools["cancel_refund"].annotations.idempotent_hint is True


@pytest.mark.parametrize("mode", MODES)
async def test_a_full_refund_refunds_the_remaining_balance(app_factory, mode):
    async with app_factory() as app, Client(app.server, **mode) as client:
        result = await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "requested_by_customer"})
        assert not result.is_error, result.content
        refund = result.structured_content
        assert refund["status"] == "succeeded"
        assert refund["amount_minor"] == 12000
        assert refund["amount_display"] == "USD 120.00"
        assert refund["processor"] == "sandbox"
        assert refund["processor_refund_id"].startswith("sbx_re_")
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": USD_ORDER})).structured_content
        assert txn["refundable_minor"] == 0
        assert txn["refunded_minor"] == 12000
        assert [r["refund_id"] for r in txn["refunds"]] == [refund["refund_id"]]


@pytest.mark.parametrize("mode", MODES)
async def test_partial_refunds_until_exhausted_then_already_refunded(app_factory, mode):
    async with app_factory() as app, Client(app.server, **mode) as client:
        for number, amount in enumerate((5000, 5000, 2000)):
            # Distinct keys: without them the duplicate window would return the first USD 50.00 refund.
            result = await client.call_tool(
                "create_refund",
                {"transaction_id": USD_ORDER, "reason": "product_defective", "amount_minor": amount, "idempotency_key": f"part-{number}"},
            )
            assert not result.is_error, result.content
            assert result.structured_content["status"] == "succeeded"
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": USD_ORDER})).structured_content
        assert txn["refundable_minor"] == 0
        assert txn["refunded_minor"] == 12000
        again = await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "product_defective", "amount_minor": 1})
        assert "[already_refunded]" in error_text(again)


@pytest.mark.parametrize("mode", MODES)
async def test_more_than_the_refundable_balance_is_refused_and_nothing_moves(app_factory, mode):
    async with app_factory() as app, Client(app.server, **mode) as client:
        result = await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": 12001})
        text = error_text(result)
        assert "[amount_exceeds_refundable]" in text
        assert "USD 120.01 requested, USD 120.00 refundable on sandbox:demo_usd_order" in text
        assert await refund_rows(app) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_currency_other_than_the_payments_is_refused(app_factory, mode):
    async with app_factory() as app, Client(app.server, **mode) as client:
        result = await client.call_tool(
            "create_refund", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": 100, "currency": "EUR"}
        )
        assert "[currency_mismatch]" in error_text(result)
        assert await refund_rows(app) == 0


async def test_a_reason_the_policy_does_not_list_is_denied_naming_the_rule(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "goodwill", "amount_minor": 100})
        text = error_text(result)
        assert "[policy_denied]" in text
        assert "reasons" in text
        assert await refund_rows(app) == 0


async def test_a_reason_outside_the_vocabulary_is_a_validation_error(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "because", "amount_minor": 100})
        text = error_text(result)
        assert "[validation_error]" in text and "reason" in text


async def test_the_per_refund_limit_denies_a_larger_refund(app_factory):
    async with app_factory(policy=POLICY_DIR / "strict.yaml") as app, Client(app.server) as client:
        check = await client.call_tool(
            "check_refund_policy", {"transaction_id": "sandbox:demo_usd_large", "reason": "product_defective", "amount_minor": 90000}
        )
        assert check.structured_content["decision"] == "deny"
        denied = [r["name"] for r in check.structured_content["rules"] if r["outcome"] == "deny"]
        assert "limits.per_refund" in denied
        result = await client.call_tool(
            "create_refund",
            {"transaction_id": "sandbox:demo_usd_large", "reason": "product_defective", "amount_minor": 90000, "customer_ref": "gus@example.com"},
        )
        assert "[policy_denied]" in error_text(result)
        assert "limits.per_refund" in error_text(result)
        assert await refund_rows(app) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_the_same_idempotency_key_returns_the_same_refund_and_a_different_request_conflicts(app_factory, mode):
    async with app_factory() as app, Client(app.server, **mode) as client:
        args = {"transaction_id": USD_ORDER, "reason": "requested_by_customer", "amount_minor": 1500, "idempotency_key": "ticket-42"}
        first = (await client.call_tool("create_refund", args)).structured_content
        second = (await client.call_tool("create_refund", args)).structured_content
        assert second["refund_id"] == first["refund_id"]
        conflict = await client.call_tool("create_refund", {**args, "amount_minor": 1600})
        assert "[idempotency_conflict]" in error_text(conflict)
        assert await refund_rows(app) == 1


async def test_an_identical_request_within_the_duplicate_window_returns_the_first_refund(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        args = {"transaction_id": USD_ORDER, "reason": "requested_by_customer", "amount_minor": 1500}
        first = (await client.call_tool("create_refund", args)).structured_content
        second = (await client.call_tool("create_refund", {**args, "note": "said twice"})).structured_content
        assert second["refund_id"] == first["refund_id"]
        assert second["duplicate_of"] == first["refund_id"]
        explicit = (await client.call_tool("create_refund", {**args, "idempotency_key": "really-a-second-one"})).structured_content
        assert explicit["refund_id"] != first["refund_id"]
        assert explicit["duplicate_of"] is None
        assert await refund_rows(app) == 2


async def test_a_queued_refund_can_be_cancelled_and_its_amount_is_released(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        # The sandbox cannot be reached on the first attempt for amounts ending in 99.
        queued = (await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": 1099})).structured_content
        assert queued["status"] == "queued"
        assert queued["retry"]["attempts"] == 1
        assert "retried" in queued["message"]
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": USD_ORDER})).structured_content
        assert txn["reserved_minor"] == 1099
        cancelled = (await client.call_tool("cancel_refund", {"refund_id": queued["refund_id"], "reason": "customer changed mind"})).structured_content
        assert cancelled["status"] == "cancelled"
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": USD_ORDER})).structured_content
        assert txn["reserved_minor"] == 0
        assert txn["refundable_minor"] == 12000
        again = (await client.call_tool("cancel_refund", {"refund_id": queued["refund_id"]})).structured_content
        assert again["status"] == "cancelled"


async def test_a_succeeded_refund_cannot_be_cancelled(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        done = (await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": 100})).structured_content
        result = await client.call_tool("cancel_refund", {"refund_id": done["refund_id"]})
        assert "[not_supported]" in error_text(result)
        assert "sandbox" in error_text(result)


async def test_list_refunds_filters_and_paginates_newest_first(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        made = []
        for amount in (101, 102, 103, 104, 105):
            made.append((await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": amount})).structured_content["refund_id"])
        jpy = (await client.call_tool("create_refund", {"transaction_id": "sandbox:demo_jpy_order", "reason": "service_issue", "amount_minor": 500})).structured_content
        assert jpy["amount_display"] == "JPY 500"
        seen: list[str] = []
        cursor = None
        while True:
            args: dict[str, Any] = {"transaction_id": USD_ORDER, "limit": 2}
            if cursor:
                args["cursor"] = cursor
            page = (await client.call_tool("list_refunds", args)).structured_content
            seen += [r["refund_id"] for r in page["refunds"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(made))
        succeeded = (await client.call_tool("list_refunds", {"status": "succeeded", "limit": 100})).structured_content
        assert len(succeeded["refunds"]) == 6
        bad = await client.call_tool("list_refunds", {"cursor": "not-a-cursor"})
        assert "[validation_error]" in error_text(bad)


async def test_check_refund_policy_moves_nothing(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        before = (await client.call_tool("lookup_transaction", {"transaction_id": USD_ORDER})).structured_content
        check = (await client.call_tool("check_refund_policy", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": 5000})).structured_content
        assert check["decision"] == "allow"
        assert check["refundable_minor"] == 12000
        assert {"balance", "reasons", "limits.per_refund"} <= {r["name"] for r in check["rules"]}
        after = (await client.call_tool("lookup_transaction", {"transaction_id": USD_ORDER})).structured_content
        assert after["refundable_minor"] == before["refundable_minor"] == 12000
        assert await refund_rows(app) == 0


async def test_a_refund_the_processor_declines_is_failed_and_releases_its_amount(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": 213})
        # The sandbox answers "failed" for amounts ending in 13: a normal answer, not an exception.
        refund = result.structured_content
        assert refund["status"] == "failed"
        assert "expired" in refund["failure_reason"]
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": USD_ORDER})).structured_content
        assert txn["refundable_minor"] == 12000


async def test_an_unknown_transaction_is_not_found_and_an_ambiguous_id_lists_processors(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        missing = await client.call_tool("lookup_transaction", {"transaction_id": "sandbox:nope"})
        assert "[transaction_not_found]" in error_text(missing)
        ambiguous = await client.call_tool("lookup_transaction", {"transaction_id": "xyz_123"})
        text = error_text(ambiguous)
        assert "[validation_error]" in text and "sandbox" in text


async def test_policy_resource_and_refund_resource_and_prompt(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        policy = await client.read_resource("refunds://policy")
        assert "per_refund" in policy.contents[0].text
        done = (await client.call_tool("create_refund", {"transaction_id": USD_ORDER, "reason": "service_issue", "amount_minor": 100})).structured_content
        resource = await client.read_resource(f"refunds://refund/{done['refund_id']}")
        assert done["refund_id"] in resource.contents[0].text
        assert "refund.reserved" in resource.contents[0].text
        prompt = await client.get_prompt("handle_refund_request", {"customer_message": "refund me"})
        assert "check_refund_policy" in prompt.messages[0].content.text
