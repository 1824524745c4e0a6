"""No configured secret and no bearer token appears in logs (text and JSON), traces, audit records, tool results or error texts.

Two full sessions with fake credentials for every processor: one in-process (logs captured with
caplog at DEBUG, processors answered by a hostile fake that echoes credentials back in its error
bodies), one against a real `refund-mcp -v serve --transport http` subprocess (its stderr captured,
processors unreachable, audit read with `refund-mcp audit export`).
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx2
import pytest

from mcp import Client
from refund_mcp.audit import log as audit
from refund_mcp.auth.tokens_file import add_token
from refund_mcp.settings import Settings
from refund_mcp.worker import run_once
from tests.security._support import (
    SANDBOX_TXN,
    base_env,
    leaks,
    mcp_over_http,
    mcp_post,
    refund_mcp_http,
    result_text,
    run_cli,
    tool_call,
)
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

PAYPAL_ACCESS_TOKEN = "A21AA-SECRETSECRET-paypal-access-token-issued-at-runtime"


def fake_credentials(api_base: str) -> dict[str, str]:
    return {
        "STRIPE_API_KEY": "sk_test_SECRETSECRETstripe0123456789",
        "STRIPE_API_BASE": api_base,
        "STRIPE_WEBHOOK_SECRET": "whsec_SECRETSECRETstripewebhook01234",
        "PAYPAL_CLIENT_ID": "paypal-client-id-not-secret",
        "PAYPAL_CLIENT_SECRET": "EPsecretSECRETSECRETpaypal0123456789",
        "PAYPAL_API_BASE": api_base,
        "PAYPAL_WEBHOOK_ID": "WH-NOT-SECRET",
        "ADYEN_API_KEY": "AQE_SECRETSECRETadyen0123456789",
        "ADYEN_MERCHANT_ACCOUNT": "TestMerchant",
        "ADYEN_API_BASE": api_base,
        "ADYEN_HMAC_KEY": "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
        "SQUARE_ACCESS_TOKEN": "EAAAl-SECRETSECRETsquare0123456789",
        "SQUARE_API_BASE": api_base,
        "SQUARE_WEBHOOK_SIGNATURE_KEY": "sqsig-SECRETSECRETsquare0123456789",
        "SQUARE_WEBHOOK_URL": "https://refunds.example.com/webhooks/square",
        "REFUND_MCP_SANDBOX": "1",
    }


SECRET_VARIABLES = (
    "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "PAYPAL_CLIENT_SECRET", "ADYEN_API_KEY", "ADYEN_HMAC_KEY",
    "SQUARE_ACCESS_TOKEN", "SQUARE_WEBHOOK_SIGNATURE_KEY",
)


def configured_secrets(env: dict[str, str]) -> list[str]:
    secrets = Settings.from_env(env).secrets()
    assert sorted(secrets) == sorted(env[name] for name in SECRET_VARIABLES), "Settings.secrets() lists every secret"
    return secrets


def _credentials_sent(request: httpx2.Request) -> str:
    return " ".join(value for name, value in request.headers.items() if name.lower() in ("authorization", "x-api-key"))


def _paypal_token(request: httpx2.Request) -> httpx2.Response | None:
    """PayPal's client-credentials exchange hands out a runtime access token: a secret too."""
    if request.url.path == "/v1/oauth2/token":
        return httpx2.Response(200, json={"access_token": PAYPAL_ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 32400})
    return None


def failing_processors(request: httpx2.Request) -> httpx2.Response:
    """Processors that refuse our credentials (401), fail (503) or throttle (429), quoting the
    credentials in their bodies: answers whose bodies we never relay."""
    if (token := _paypal_token(request)) is not None:
        return token
    credentials = _credentials_sent(request)
    path = request.url.path
    if path.startswith("/v1/"):  # Stripe
        return httpx2.Response(401, json={"error": {"type": "invalid_request_error", "message": f"Invalid API Key provided: {credentials}"}})
    if path.startswith("/v2/payments/captures") or path.startswith("/v2/payments/refunds"):  # PayPal
        return httpx2.Response(503, json={"name": "SERVICE_UNAVAILABLE", "message": f"down for {credentials}"})
    if path.startswith("/v2/"):  # Square
        return httpx2.Response(429, json={"errors": [{"category": "RATE_LIMIT_ERROR", "code": "RATE_LIMITED", "detail": credentials}]})
    return httpx2.Response(500, text=f"upstream failure for {credentials}")


def echoing_processors(request: httpx2.Request) -> httpx2.Response:
    """Processors that reject a request (400) with a message quoting the credentials they were sent:
    what a careless or hostile upstream might do. Their text must not travel on."""
    if (token := _paypal_token(request)) is not None:
        return token
    credentials = _credentials_sent(request)
    path = request.url.path
    if path.startswith("/v1/"):  # Stripe
        return httpx2.Response(400, json={"error": {"type": "invalid_request_error", "code": "parameter_invalid", "message": f"bad key {credentials}"}})
    if path.startswith("/v2/payments/captures") or path.startswith("/v2/payments/refunds"):  # PayPal
        return httpx2.Response(400, json={"name": "INVALID_REQUEST", "message": f"Request rejected for {credentials}", "debug_id": "dbg1"})
    if path.startswith("/v2/"):  # Square
        return httpx2.Response(
            400, json={"errors": [{"category": "INVALID_REQUEST_ERROR", "code": "BAD_REQUEST", "detail": f"bad request by {credentials}"}]}
        )
    return httpx2.Response(500, text=f"upstream failure for {credentials}")


async def exercise_every_tool(client: Client) -> dict[str, str]:
    """Every tool, resource and prompt, with successes and failures on every processor."""
    seen: dict[str, str] = {}

    async def call(name: str, args: dict[str, Any]) -> Any:
        result = await client.call_tool(name, args)
        seen[f"{name}({json.dumps(args, sort_keys=True)})"] = result_text(result)
        return result

    refund = await call("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 1500})
    refund_id = refund.structured_content["refund_id"]
    queued = await call("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "duplicate", "amount_minor": 1099})
    for txn in ("stripe:ch_3SECRET", "paypal:8MC585209K746392H", "square:KkAkhdMsgzn59SM8A", "adyen:QFQTPCQ8HXSKGK82"):
        await call("lookup_transaction", {"transaction_id": txn})
        await call("check_refund_policy", {"transaction_id": txn, "reason": "duplicate", "amount_minor": 100})
        await call("create_refund", {"transaction_id": txn, "reason": "duplicate", "amount_minor": 100})
    await call("get_refund_status", {"refund_id": refund_id, "refresh": True})
    await call("cancel_refund", {"refund_id": queued.structured_content["refund_id"], "reason": "testing"})
    await call("cancel_refund", {"refund_id": refund_id})
    await call("list_refunds", {"limit": 100})
    await call("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": "lots"})
    for uri in ("refunds://policy", f"refunds://refund/{refund_id}"):
        contents = await client.read_resource(uri)
        seen[uri] = contents.model_dump_json()
    prompt = await client.get_prompt("handle_refund_request", {"customer_message": "please refund", "transaction_id": SANDBOX_TXN})
    seen["prompt"] = prompt.model_dump_json()
    return seen


@pytest.mark.parametrize(
    "processors",
    [
        pytest.param(failing_processors, id="failing-processors"),
        pytest.param(echoing_processors, id="processors-echoing-credentials"),
    ],
)
async def test_no_secret_reaches_logs_traces_results_or_the_audit_log_in_process(app_factory, caplog, processors):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from refund_mcp.observability import logs, tracing

    env = fake_credentials("https://processor.test")
    secrets = [*configured_secrets(env), PAYPAL_ACCESS_TOKEN]
    caplog.set_level(logging.DEBUG)
    json_lines = io.StringIO()
    json_handler = logging.StreamHandler(json_lines)
    json_handler.setFormatter(logs.JsonFormatter())
    logging.getLogger().addHandler(json_handler)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use_provider(provider)
    try:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(processors)) as http:
            async with app_factory(env=env, http=http) as app:
                async with Client(app.server) as client:
                    seen = await exercise_every_tool(client)
                await run_once(app.service)  # retries of queued refunds log too
                records = [record async for record in audit.export(app.db.engine)]
    finally:
        tracing.use_provider(None)
        logging.getLogger().removeHandler(json_handler)
    traced = spans.get_finished_spans()
    assert len(records) >= 10
    assert any(span.name.startswith("processor.") for span in traced)
    texts = {
        **seen,
        "logs": caplog.text,
        "json logs": json_lines.getvalue(),
        "spans": "\n".join(span.to_json() for span in traced),
        "audit": json.dumps(records, default=str),
    }
    assert leaks(secrets, texts) == []


async def test_no_secret_or_bearer_token_reaches_the_servers_stderr_results_or_audit_export(tmp_path):
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: every processor call fails to connect
    tokens = tmp_path / "tokens.yaml"
    bearer, _ = add_token(tokens, "support-bot", ["refunds:read", "refunds:write"])
    # JSON logs here (the in-process test reads both formats): every line the server writes is scanned.
    env = {**base_env(tmp_path), **fake_credentials(unreachable), "REFUND_MCP_TOKENS": str(tokens), "REFUND_MCP_LOG_FORMAT": "json"}
    secrets = [*configured_secrets(env), bearer]

    with refund_mcp_http(env, tmp_path) as server:
        async with mcp_over_http(server.mcp_url, bearer) as client:
            seen = await exercise_every_tool(client)
        # The token misused in every way a client might: each refusal is a chance to log it.
        near_miss = bearer[:-4] + "AAAA"
        refusals = {
            "wrong token": mcp_post(server.mcp_url, tool_call("list_refunds"), token=near_miss),
            "token in URL": mcp_post(f"{server.mcp_url}?access_token={bearer}", tool_call("list_refunds")),
            "oversized": mcp_post(server.mcp_url, tool_call("list_refunds", {"cursor": bearer * 20_000}), token=bearer),
        }
        for name, response in refusals.items():
            seen[f"http: {name}"] = f"{response.status_code} {dict(response.headers)} {response.text}"
    stderr = server.stderr()
    assert '"level": "DEBUG"' in stderr, "the server ran with debug logging, so the scan covers everything it can say"
    exported = run_cli(env, "audit", "export")
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) >= 10
    texts = {**seen, "server stderr": stderr, "audit export": exported.stdout + exported.stderr}
    assert leaks([*secrets, near_miss], texts) == []
