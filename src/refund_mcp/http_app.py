"""The streamable-HTTP app: MCP at /mcp, plus /healthz and /metrics, the webhook routes and the console.

What a request meets, outermost first:

    RejectTokensInUrl        a token in the query string -> 400, before anything can log the URL
    SDK authentication       verifies the bearer token, when auth is configured (auth/config.py)
    /mcp  ScopeGate          the JSON-RPC body asks for more than the token's scopes -> 403
          SDK RequireAuth    no valid token -> 401 with WWW-Authenticate
          SDK transport      body over MAX_REQUEST_BODY_BYTES -> 413; foreign Host -> 421, Origin -> 403

/healthz, /metrics and custom routes (webhooks, which verify processor signatures) need no token;
/console has its own sign-in (console/routes.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp.server.transport_security import TransportSecuritySettings
from refund_mcp.auth import MCP_SCOPES, TOOL_SCOPES, AuthConfig, load_auth_config, refuse_open_exposure
from refund_mcp.auth.gate import Refusal, ScopeGate
from refund_mcp.auth.url_tokens import RejectTokensInUrl

logger = logging.getLogger("refund_mcp.http")

MCP_PATH = "/mcp"
# A tool call is a few hundred bytes; a quarter MiB leaves room for any honest request while keeping
# what one unauthenticated or hostile client can make us buffer small.
MAX_REQUEST_BODY_BYTES = 256 * 1024
# Connections and tasks uvicorn serves at once before answering 503: what slow or stalled clients
# can hold is bounded whether or not a proxy sits in front.
MAX_CONCURRENT_CONNECTIONS = 200


def transport_security(config: AuthConfig) -> TransportSecuritySettings:
    """DNS-rebinding protection for every address: only our own names in Host and Origin."""
    hosts: list[str] = []
    origins: list[str] = []
    for name in config.allowed_hosts:
        hosts += [name, f"{name}:*"]
        origins += [f"{scheme}://{name}{port}" for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def _refusal_recorder(app: Any) -> Any:
    """Scope refusals are denied calls: they go to the audit log and the metrics like any other."""
    from refund_mcp.audit.log import AuditEntry, append

    async def record(refusal: Refusal) -> None:
        if refusal.target in TOOL_SCOPES:
            app.server.calls[(refusal.target, "forbidden")] += 1
        entry = AuditEntry(
            actor=refusal.actor,
            action="access.denied",
            target=refusal.target,
            outcome="denied",
            error_code="forbidden",
            detail={"required_scope": refusal.required_scope, "granted_scopes": list(refusal.granted)},
        )
        try:
            async with app.db.write() as conn:
                await append(conn, entry)
        except SQLAlchemyError:
            # The call is refused either way; an unrecordable refusal must not become a 500.
            logger.exception("could not write the audit record of a scope refusal")

    return record


def _gate_mcp_route(starlette_app: Starlette, gate: Any) -> None:
    for route in starlette_app.router.routes:
        if isinstance(route, Route) and route.path == MCP_PATH:
            route.app = gate(route.app)
            return
    raise RuntimeError(f"the SDK app has no {MCP_PATH} route to protect")


def _advertise_scopes(starlette_app: Starlette, config: AuthConfig) -> None:
    """The SDK's protected-resource metadata lists `required_scopes`, which we leave empty (the gate
    decides per call); clients choose what to ask the issuer for from `scopes_supported`, so serve
    metadata that names both scopes, ahead of the SDK's route."""
    from mcp.server.auth.routes import create_protected_resource_routes

    assert config.settings is not None and config.settings.resource_server_url is not None
    routes = create_protected_resource_routes(
        resource_url=config.settings.resource_server_url,
        authorization_servers=[config.settings.issuer_url],
        scopes_supported=list(MCP_SCOPES),
        resource_name="refund-mcp",
    )
    starlette_app.router.routes[0:0] = routes


def build_http_app(
    app: Any, host: str = "127.0.0.1", *, port: int = 8765, auth: AuthConfig | None = None, console_http: Any = None
) -> Starlette:
    """A Starlette app for `app` (refund_mcp.app.App).

    `auth` defaults to the environment (load_auth_config). Auth belongs to the HTTP transport only,
    so it is attached here rather than when App.create builds the MCP server.

    Raises:
        AuthConfigError: the auth settings are invalid, or `host` is not loopback and nothing checks tokens.
    """
    config = auth if auth is not None else load_auth_config(os.environ, host=host, port=port)
    refuse_open_exposure(host, config)
    server = app.server

    async def healthz(request: Request) -> Response:
        from sqlalchemy import text

        try:
            async with app.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # report, don't crash: this is what load balancers poll
            return JSONResponse({"status": "unhealthy", "database": type(exc).__name__}, status_code=503)
        auth_problem = config.problem()
        if auth_problem is not None:
            # Credentials fail closed; say so where operators and load balancers look.
            return JSONResponse({"status": "degraded", "auth": auth_problem}, status_code=503)
        return JSONResponse(
            {"status": "ok", "processors": app.processors.names(), "policy_version": app.policy.engine().version}
        )

    async def metrics(request: Request) -> Response:
        from refund_mcp.metrics import exposition
        from refund_mcp.observability.state import STATE

        await STATE.refresh()
        body, content_type = exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    registered = {getattr(route, "path", None) for route in server._custom_starlette_routes}
    if "/healthz" not in registered:
        server.custom_route("/healthz", methods=["GET"])(healthz)
        server.custom_route("/metrics", methods=["GET"])(metrics)
    if "/webhooks/stripe" not in registered:
        from refund_mcp.webhooks.routes import webhook_routes

        # Webhooks carry no bearer token: each route verifies its processor's signature over the raw body.
        server._custom_starlette_routes.extend(webhook_routes(app))
    from refund_mcp.console.mount import console_routes_for

    # The approvers' console: its own sign-in (session cookie), never the agents' bearer tokens. Built
    # per HTTP app (it depends on this app's auth settings), so not kept on the shared MCP server.
    console = console_routes_for(app, config, http=console_http)

    # The lowlevel builder takes the token verifier and AuthSettings as arguments, so the MCP
    # server built for stdio needs no auth of its own.
    starlette_app = server._lowlevel_server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        max_request_body_size=MAX_REQUEST_BODY_BYTES,
        transport_security=transport_security(config),
        host=host,
        auth=config.settings,
        token_verifier=config.verifier,
        custom_starlette_routes=[*server._custom_starlette_routes, *console],
        debug=server.settings.debug,
    )
    if config.enabled:
        record = _refusal_recorder(app)
        _gate_mcp_route(
            starlette_app,
            lambda inner: ScopeGate(
                inner,
                max_body_bytes=MAX_REQUEST_BODY_BYTES,
                resource_metadata_url=config.resource_metadata_url,
                on_refusal=record,
            ),
        )
    if config.oauth_issuer is not None:
        _advertise_scopes(starlette_app, config)
    starlette_app.add_middleware(RejectTokensInUrl)
    return starlette_app


async def serve_http(app: Any, host: str, port: int, *, auth: AuthConfig | None = None) -> None:
    """Raises AuthConfigError like build_http_app."""
    import uvicorn

    config = auth if auth is not None else load_auth_config(os.environ, host=host, port=port)
    starlette_app = build_http_app(app, host, port=port, auth=config)
    logger.info("HTTP auth: %s", config.description if config.enabled else "none (loopback only)")
    logger.info("accepted Host names: %s", ", ".join(config.allowed_hosts))
    # No access log: request lines are not worth the risk of a URL that carries something secret.
    # MCP clients keep their connection between calls; uvicorn's 5 s default closes it under their feet.
    uv_config = uvicorn.Config(
        starlette_app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_keep_alive=30,
        limit_concurrency=MAX_CONCURRENT_CONNECTIONS,
    )
    await uvicorn.Server(uv_config).serve()
