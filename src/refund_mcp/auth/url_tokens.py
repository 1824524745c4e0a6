"""ASGI middleware: a bearer token in the URL is refused (400), before anything can log the URL.

URLs end up in access logs, proxy logs and browser histories, which is why RFC 6750 §2.3 and the
MCP spec keep tokens out of them. We refuse `?access_token=`/`?token=` (any case) and any query
value that looks like a bearer token (ours, or a JWT), whatever its parameter name, and never echo
it back.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from refund_mcp.auth.tokens_file import TOKEN_PREFIX

TOKEN_PARAMETERS = frozenset({"access_token", "token"})


def _looks_like_a_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX) or (value.startswith("eyJ") and value.count(".") == 2)


def carries_token(query_string: bytes) -> bool:
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return any(name.lower() in TOKEN_PARAMETERS or _looks_like_a_token(value) for name, value in pairs)


class RejectTokensInUrl:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and carries_token(scope.get("query_string", b"")):
            response = JSONResponse(
                {
                    "error": "invalid_request",
                    "error_description": "Bearer tokens are not accepted in the URL; send them in the "
                    "Authorization header. Treat the token you sent as exposed and replace it.",
                },
                status_code=400,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
