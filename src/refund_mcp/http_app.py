"""The streamable-HTTP app: MCP at /mcp, plus /healthz and /metrics (and, later, webhooks)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response


def build_http_app(app: Any, host: str = "127.0.0.1") -> Any:
    """A Starlette app for `app` (refund_mcp.app.App). DNS-rebinding protection stays on (host-bound)."""
    server = app.server

    async def healthz(request: Request) -> Response:
        from sqlalchemy import text

        try:
            async with app.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # report, don't crash: this is what load balancers poll
            return JSONResponse({"status": "unhealthy", "database": type(exc).__name__}, status_code=503)
        return JSONResponse(
            {"status": "ok", "processors": app.processors.names(), "policy_version": app.policy.engine().version}
        )

    async def metrics(request: Request) -> Response:
        lines = [
            "# HELP refund_mcp_tool_calls_total Tool calls by tool and outcome code.",
            "# TYPE refund_mcp_tool_calls_total counter",
        ]
        for (tool, outcome), count in sorted(server.calls.items()):
            lines.append(f'refund_mcp_tool_calls_total{{tool="{tool}",outcome="{outcome}"}} {count}')
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    registered = {getattr(route, "path", None) for route in server._custom_starlette_routes}
    if "/healthz" not in registered:
        server.custom_route("/healthz", methods=["GET"])(healthz)
        server.custom_route("/metrics", methods=["GET"])(metrics)
    return server.streamable_http_app(host=host)


async def serve_http(app: Any, host: str, port: int) -> None:
    import uvicorn

    starlette_app = build_http_app(app, host)
    config = uvicorn.Config(starlette_app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
