"""The console's routes for an app, with single sign-on when the environment configures it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from starlette.routing import BaseRoute

from refund_mcp.auth.config import AuthConfig


def console_routes_for(app: Any, config: AuthConfig, *, env: Mapping[str, str] | None = None, http: Any = None) -> list[BaseRoute]:
    """Raises OidcConfigError when SSO is half-configured. `http` (an httpx2.AsyncClient) reaches the
    OIDC issuer; tests pass one over the fake provider's ASGI app."""
    from refund_mcp.console.oidc import OidcClient, OidcConfig
    from refund_mcp.console.routes import console_routes

    oidc_config = OidcConfig.from_env(os.environ if env is None else env)
    oidc = None
    if oidc_config is not None:
        import httpx2

        oidc = OidcClient(oidc_config, http or httpx2.AsyncClient(follow_redirects=False))
    return console_routes(app, config, oidc=oidc)
