"""`refund-mcp console`: the console alone, on loopback, without MCP (e.g. on an approver's laptop
against the team's PostgreSQL). Sign-in is the same; there is no worker here."""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Route

from refund_mcp.auth.config import AuthConfigError, is_loopback, load_auth_config
from refund_mcp.auth.url_tokens import RejectTokensInUrl
from refund_mcp.console.mount import console_routes_for


def build_console_app(app: Any, host: str, port: int) -> Starlette:
    """Raises AuthConfigError for a non-loopback host or invalid auth settings."""
    if not is_loopback(host):
        raise AuthConfigError(
            f"refund-mcp console serves loopback only (got {host}); to serve a team, use "
            "`refund-mcp serve --transport http` behind TLS, which mounts the console at /console"
        )
    config = load_auth_config(os.environ, host=host, port=port)

    async def home(request: Any) -> RedirectResponse:
        return RedirectResponse("/console", status_code=307)

    routes = [Route("/", home), *console_routes_for(app, config)]
    starlette_app = Starlette(routes=routes)
    starlette_app.add_middleware(RejectTokensInUrl)
    return starlette_app


async def serve_console(app: Any, host: str, port: int) -> None:
    import uvicorn

    starlette_app = build_console_app(app, host, port)
    config = uvicorn.Config(starlette_app, host=host, port=port, log_level="warning", access_log=False)
    await uvicorn.Server(config).serve()
