"""The approval workflow through the console's HTTP app (no browser): an agent asks over MCP, humans
sign in with personal tokens and decide; every refusal the console promises is checked here."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mcp import Client
from refund_mcp.service.console import ConsoleQueries, RefundFilter
from refund_mcp.service.refunds import RefundInput
from refund_mcp.store import tables
from tests.console.support import AGENT, LARGE, POLICY, SMALL, Browser, console_world

pytestmark = pytest.mark.anyio

XSS_NOTE = '<script>alert(1)</script><a href="javascript:alert(2)">click</a>'


async def ask(client, request):
    result = await client.call_tool("create_refund", request)
    assert not result.is_error, result.content
    return result.structured_content


async def expire_now(app, refund_id):
    from sqlalchemy import update

    async with app.db.write() as conn:
        await conn.execute(
            update(tables.refunds).where(tables.refunds.c.id == refund_id).values(approval_expires_at=app.service.clock() - timedelta(seconds=1))
        )


async def status_of(client, refund_id):
    return (await client.call_tool("get_refund_status", {"refund_id": refund_id})).structured_content


async def test_a_human_approves_in_the_console_and_the_agent_sees_it_succeed(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        parked = await ask(agent, {**SMALL, "note": XSS_NOTE})
        assert parked["status"] == "pending_approval"
        alice = Browser(asgi)
        signed = await alice.sign_in(tokens["alice"])
        assert signed.status_code == 303 and signed.headers["location"] == "/console"
        queue = await alice.http.get("/console")
        assert queue.status_code == 200
        page = queue.text
        assert parked["refund_id"] in page and "USD 80.00" in page and "approval.above" in page and AGENT in page
        assert "still refundable USD 40.00" in page  # the payment's balance with this refund reserved
        # The agent's note is quoted data: escaped, no live script, no javascript: link.
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script" not in page and 'href="javascript:' not in page
        assert "script-src" not in queue.headers["content-security-policy"] and "default-src 'none'" in queue.headers["content-security-policy"]

        approved = await alice.decide(parked["refund_id"], "approve", note="customer called")
        assert approved.status_code == 303
        assert (await status_of(agent, parked["refund_id"]))["status"] == "succeeded"
        trail = await app.service.refund_with_trail(parked["refund_id"])
        decisions = [(r["action"], r["actor"]) for r in trail["audit_trail"] if r["action"].startswith("approval.")]
        assert decisions == [("approval.approved", "alice")]
        detail = await alice.http.get(f"/console/refunds/{parked['refund_id']}", headers={"accept": "application/json"})
        assert detail.json()["refund"]["status"] == "succeeded"
        actions = [e["action"] for e in detail.json()["timeline"]]
        assert actions.index("refund.pending_approval") < actions.index("approval.approved") < actions.index("refund.submitted")
        await alice.aclose()


async def test_deny_releases_the_amount(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        parked = await ask(agent, SMALL)
        bob = Browser(asgi)
        await bob.sign_in(tokens["bob"])
        denied = await bob.decide(parked["refund_id"], "deny", note="not eligible")
        assert denied.status_code == 303
        status = await status_of(agent, parked["refund_id"])
        assert status["status"] == "cancelled" and status["approval"]["decided_by"] == "bob"
        txn = (await agent.call_tool("lookup_transaction", {"transaction_id": SMALL["transaction_id"]})).structured_content
        assert txn["refundable_minor"] == 12000
        await bob.aclose()


async def test_the_requester_cannot_approve_their_own_refund(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens):
        own = await app.service.create_refund("alice", RefundInput(**SMALL))
        alice = Browser(asgi)
        await alice.sign_in(tokens["alice"])
        page = (await alice.http.get(f"/console/refunds/{own.refund_id}")).text
        assert "You asked for this refund" in page
        refused = await alice.decide(own.refund_id, "approve")
        assert refused.status_code == 403 and "[forbidden]" in refused.text
        assert (await app.service.refund_with_trail(own.refund_id))["refund"]["status"] == "pending_approval"
        await alice.aclose()


async def test_two_person_approval_needs_two_different_humans(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        parked = await ask(agent, LARGE)
        assert parked["approval"]["approvals_required"] == 2
        alice, bob = Browser(asgi), Browser(asgi)
        await alice.sign_in(tokens["alice"])
        await bob.sign_in(tokens["bob"])
        first = await alice.decide(parked["refund_id"], "approve")
        assert first.headers["location"].endswith("notice=first_approval")
        assert (await status_of(agent, parked["refund_id"]))["status"] == "pending_approval"
        again = await alice.decide(parked["refund_id"], "approve")
        assert again.status_code == 403 and "different second approver" in again.text
        assert "1 of 2" in (await bob.http.get("/console")).text
        second = await bob.decide(parked["refund_id"], "approve")
        assert second.status_code == 303
        status = await status_of(agent, parked["refund_id"])
        assert status["status"] == "succeeded" and status["approval"]["approved_by"] == ["alice", "bob"]
        trail = (await app.service.refund_with_trail(parked["refund_id"]))["audit_trail"]
        assert [(r["action"], r["actor"]) for r in trail if r["action"].startswith("approval.")] == [
            ("approval.recorded", "alice"), ("approval.refused", "alice"), ("approval.approved", "bob")
        ]
        await alice.aclose()
        await bob.aclose()


async def test_state_changes_without_the_csrf_token_are_refused(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        parked = await ask(agent, SMALL)
        alice = Browser(asgi)
        await alice.sign_in(tokens["alice"])
        missing = await alice.http.post(f"/console/refunds/{parked['refund_id']}/approve", data={"note": "x"})
        wrong = await alice.http.post(f"/console/refunds/{parked['refund_id']}/approve", data={"csrf_token": "forged"})
        cross = await alice.http.post(
            f"/console/refunds/{parked['refund_id']}/approve",
            data={"csrf_token": await alice.csrf()}, headers={"origin": "https://evil.example"},
        )
        assert (missing.status_code, wrong.status_code, cross.status_code) == (403, 403, 403)
        assert (await status_of(agent, parked["refund_id"]))["status"] == "pending_approval"
        await alice.aclose()


async def test_an_expired_approval_cannot_be_approved(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        parked = await ask(agent, SMALL)
        alice = Browser(asgi)
        await alice.sign_in(tokens["alice"])
        token = await alice.csrf(f"/console/refunds/{parked['refund_id']}")
        await expire_now(app, parked["refund_id"])  # its hour is over, and the worker has not run yet
        refused = await alice.http.post(f"/console/refunds/{parked['refund_id']}/approve", data={"csrf_token": token})
        assert refused.status_code == 409 and "expired" in refused.text
        # The decision came after the deadline: the refund is expired there and then, its amount released.
        assert (await status_of(agent, parked["refund_id"]))["status"] == "cancelled"
        await alice.aclose()


async def test_a_read_only_human_sees_but_cannot_decide(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        parked = await ask(agent, SMALL)
        rita = Browser(asgi)
        await rita.sign_in(tokens["rita"])
        page = (await rita.http.get("/console")).text
        assert parked["refund_id"] in page and "view but not decide" in page and 'class="approve"' not in page
        token = await rita.csrf()
        refused = await rita.http.post(f"/console/refunds/{parked['refund_id']}/approve", data={"csrf_token": token})
        assert refused.status_code == 403 and "refunds:approve" in refused.text
        assert (await status_of(agent, parked["refund_id"]))["status"] == "pending_approval"
        await rita.aclose()


async def test_agents_and_strangers_get_no_session(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens):
        browser = Browser(asgi)
        agent = await browser.sign_in(tokens[AGENT])
        assert agent.status_code == 403 and "agent" in agent.text
        assert "refund_mcp_console" not in browser.http.cookies
        bad = await browser.sign_in("rmcp_not-a-real-token")
        assert bad.status_code == 401
        page = await browser.http.get("/console/refunds")
        assert page.status_code == 303 and page.headers["location"].startswith("/console/login?next=")
        api = await browser.http.get("/console", headers={"accept": "application/json"})
        assert api.status_code == 401
        await browser.aclose()


async def test_session_cookie_is_httponly_strict_and_expires_when_idle(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens):
        alice = Browser(asgi)
        signed = await alice.sign_in(tokens["alice"])
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Secure" not in cookie
        stored = await app.db.engine.connect()
        from sqlalchemy import select

        rows = (await stored.execute(select(tables.console_sessions.c.id_hash))).all()
        await stored.close()
        assert rows and alice.http.cookies["refund_mcp_console"] not in {row.id_hash for row in rows}  # only hashes stored
        assert (await alice.http.get("/console")).status_code == 200
        real = app.service.clock
        app.service.clock = lambda: real() + timedelta(minutes=31)
        assert (await alice.http.get("/console")).status_code == 303
        app.service.clock = real
        await alice.aclose()


async def test_cookie_is_secure_with_host_prefix_off_loopback(app_factory, tmp_path):
    from refund_mcp.auth.config import load_auth_config
    from refund_mcp.http_app import build_http_app

    async with console_world(app_factory, tmp_path) as (app, _asgi, tokens):
        config = load_auth_config(
            {"REFUND_MCP_TOKENS": str(tmp_path / "tokens.yaml"), "REFUND_MCP_ALLOWED_HOSTS": "refunds.example.com"}, host="0.0.0.0", port=8765
        )
        public = Browser(build_http_app(app, "0.0.0.0", auth=config), base="https://refunds.example.com")
        signed = await public.sign_in(tokens["alice"])
        assert signed.headers["set-cookie"].startswith("__Host-refund_mcp_console=") and "Secure" in signed.headers["set-cookie"]
        rebinding = Browser(build_http_app(app, "0.0.0.0", auth=config), base="http://attacker.example")
        assert (await rebinding.http.get("/console/login")).status_code == 421
        await public.aclose()
        await rebinding.aclose()


async def test_json_twins_search_attention_policy_and_audit(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        small = await ask(agent, SMALL)
        await ask(agent, LARGE)
        rita = Browser(asgi)
        await rita.sign_in(tokens["rita"])
        as_json = {"accept": "application/json"}
        queue = (await rita.http.get("/console", headers=as_json)).json()
        assert [item["refund"]["amount_display"] for item in queue["pending"]] == ["USD 80.00", "USD 600.00"]
        assert queue["pending"][1]["approvals_required"] == 2
        assert any("approvers" in rule for rule in queue["pending"][1]["rules"])
        found = (await rita.http.get("/console/refunds?amount_min=10000&status=pending_approval", headers=as_json)).json()
        assert [r["amount_minor"] for r in found["refunds"]] == [60000]
        by_payment = (await rita.http.get("/console/refunds?transaction_id=demo_usd_order", headers=as_json)).json()
        assert [r["refund_id"] for r in by_payment["refunds"]] == [small["refund_id"]]
        first = (await rita.http.get("/console/refunds?limit=1", headers=as_json)).json()
        rest = (await rita.http.get(f"/console/refunds?limit=1&cursor={first['next_cursor']}", headers=as_json)).json()
        assert len(first["refunds"]) == len(rest["refunds"]) == 1 and rest["next_cursor"] is None
        assert (await rita.http.get("/console/refunds?status=bogus", headers=as_json)).status_code == 400
        attention = (await rita.http.get("/console/attention", headers=as_json)).json()
        assert attention["stuck"] == [] and attention["open_circuits"] == []
        policy = (await rita.http.get("/console/policy", headers=as_json)).json()
        assert policy["version"] and policy["versions_seen"][0]["refunds"] == 2
        token = await rita.csrf("/console/policy")
        check = await rita.http.post(
            "/console/policy/check", data={"csrf_token": token, "transaction_id": LARGE["transaction_id"], "reason": "product_defective", "amount_minor": "30000"},
            headers=as_json,
        )
        assert check.json()["decision"] == "needs_approval" and any(r["name"] == "approval.above" and r["outcome"] == "needs_approval" for r in check.json()["rules"])
        verified = await rita.http.post("/console/audit/verify", data={"csrf_token": token}, headers=as_json)
        assert verified.json()["verified"] is True and verified.json()["verified_up_to"] >= 2
        export = await rita.http.get("/console/audit/export")
        assert export.status_code == 200 and export.text.count("\n") == verified.json()["verified_up_to"]
        await rita.aclose()


async def test_a_script_with_a_session_decides_through_the_json_twin(app_factory, tmp_path):
    async with console_world(app_factory, tmp_path) as (app, asgi, tokens), Client(app.server) as agent:
        parked = await ask(agent, SMALL)
        alice = Browser(asgi)
        await alice.sign_in(tokens["alice"])
        queue = (await alice.http.get("/console", headers={"accept": "application/json"})).json()
        assert queue["you"]["actor"] == "alice" and "refunds:approve" in queue["you"]["scopes"]
        decided = await alice.http.post(
            f"/console/refunds/{parked['refund_id']}/approve",
            headers={"accept": "application/json", "x-csrf-token": queue["you"]["csrf_token"]},
        )
        assert decided.status_code == 200 and decided.json()["status"] == "succeeded"
        refused = await alice.http.post(f"/console/refunds/{parked['refund_id']}/approve", headers={"accept": "application/json"})
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        await alice.aclose()


@pytest.mark.postgres
async def test_two_person_approval_and_its_notifications_on_postgresql(app_factory, pg_database):
    async with app_factory(db_url=pg_database, policy=POLICY, actor=AGENT) as app, Client(app.server) as agent:
        parked = await ask(agent, LARGE)
        first = await app.service.approve(parked["refund_id"], approver="alice")
        assert first.status == "pending_approval" and first.approval.approved_by == ["alice"]
        done = await app.service.approve(parked["refund_id"], approver="bob")
        assert done.status == "succeeded" and done.approval.approved_by == ["alice", "bob"]
        from sqlalchemy import select

        from refund_mcp.audit import sealing

        # Notifications are written when their audit records are sealed, just after the commit, in the background.
        await sealing.seal_all(app.db.engine)
        async with app.db.read() as conn:
            kinds = (await conn.execute(select(tables.notifications.c.type).order_by(tables.notifications.c.audit_seq))).scalars().all()
        assert kinds == ["refund.approval_requested", "refund.approval_requested", "refund.approval_decided"]
        page = await ConsoleQueries(app.service).search(RefundFilter(status="succeeded", amount_min=60000))
        assert [r.refund_id for r in page.refunds] == [parked["refund_id"]]
