"""Policy limits enforced end to end: daily caps under concurrency, customer match, hot reload."""

from __future__ import annotations

import os
import shutil

import anyio
import pytest

from mcp import Client
from tests.conftest import TEST_POLICY

pytestmark = pytest.mark.anyio

CAPS = os.path.join(os.path.dirname(__file__), "support", "caps_policy.yaml")
BIG = "sandbox:demo_usd_large"  # USD 900.00


async def concurrent_refunds(app, actors: list[str], amount: int) -> list:
    """One task per call, each as a different agent (the service takes the actor as the transports do)."""
    from refund_mcp.domain.errors import RefundError
    from refund_mcp.service.refunds import RefundInput

    results: list = [None] * len(actors)

    async def one(index: int, actor: str) -> None:
        request = RefundInput(transaction_id=BIG, reason="service_issue", amount_minor=amount, idempotency_key=f"{actor}-{index}")
        try:
            results[index] = await app.service.create_refund(actor, request)
        except RefundError as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        for index, actor in enumerate(actors):
            tg.start_soon(one, index, actor)
    return results


async def two_waves(app) -> list:  # type: ignore[no-untyped-def]
    """bot-a's 20 calls at once (its own cap binds), then bot-b's 20 at once (the global cap binds): each cap is
    raced by concurrent calls, and which one binds does not depend on how the two actors' calls interleave."""
    return await concurrent_refunds(app, ["bot-a"] * 20, 100) + await concurrent_refunds(app, ["bot-b"] * 20, 100)


async def test_daily_caps_hold_under_concurrent_calls(app_factory):
    async with app_factory(policy=CAPS) as app:
        assert_caps_held(await two_waves(app))


@pytest.mark.postgres
async def test_daily_caps_hold_under_concurrent_calls_on_postgresql(pg_database):
    from tests.conftest import make_app

    async with make_app(pg_database, policy=CAPS) as app:
        assert_caps_held(await two_waves(app))


def assert_caps_held(results: list) -> None:
    from refund_mcp.domain.errors import PolicyDenied
    done = [r for r in results if not isinstance(r, Exception)]
    denied = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(e, PolicyDenied) for e in denied)
    per_actor = {actor: sum(r.amount_minor for r in done if r.actor == actor) for actor in ("bot-a", "bot-b")}
    assert all(total <= 1000 for total in per_actor.values()), per_actor
    assert sum(per_actor.values()) == 1500  # the global cap binds exactly
    assert any("limits.global_daily" in str(e) for e in denied)
    assert any("limits.per_actor_daily" in str(e) for e in denied)


async def test_a_customer_reference_must_match_when_the_policy_says_so(app_factory):
    async with app_factory(policy=CAPS, actor="strict-bot") as app, Client(app.server) as client:
        args = {"transaction_id": BIG, "reason": "service_issue", "amount_minor": 100}
        missing = await client.call_tool("create_refund", args)
        assert "[policy_denied]" in missing.content[0].text and "require_customer_match" in missing.content[0].text
        wrong = await client.call_tool("create_refund", {**args, "customer_ref": "mallory@example.com"})
        assert "[policy_denied]" in wrong.content[0].text
        right = await client.call_tool("create_refund", {**args, "customer_ref": "  GUS@Example.com "})
        assert not right.is_error, right.content
        assert right.structured_content["status"] == "succeeded"


async def test_the_policy_is_reloaded_when_the_file_changes_and_a_broken_file_keeps_the_last_good_one(app_factory, tmp_path):
    live = tmp_path / "policy.yaml"
    shutil.copy(TEST_POLICY, live)
    async with app_factory(policy=live) as app, Client(app.server) as client:
        args = {"transaction_id": BIG, "reason": "service_issue", "amount_minor": 100}
        first_version = app.policy.engine().version
        assert (await client.call_tool("check_refund_policy", args)).structured_content["decision"] == "allow"
        live.write_text(TEST_POLICY.read_text().replace("service_issue]", "goodwill]"))
        assert app.policy.reload()
        check = (await client.call_tool("check_refund_policy", args)).structured_content
        assert check["decision"] == "deny" and check["policy_version"] != first_version
        good_version = check["policy_version"]
        live.write_text("version: 1\nreasons: [nonsense_reason]\n")
        assert not app.policy.reload()
        assert app.policy.last_error is not None and "reasons" in app.policy.last_error
        assert app.policy.engine().version == good_version
        denied = await client.call_tool("create_refund", args)
        assert "[policy_denied]" in denied.content[0].text
        from refund_mcp.audit import log as audit

        records = [r async for r in audit.export(app.db.engine)]
        assert records[-1]["decision"]["policy_version"] == good_version
