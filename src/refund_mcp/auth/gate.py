"""ASGI middleware around /mcp: refuse a JSON-RPC request whose token lacks the scope it needs.

All tools share one endpoint, so the HTTP layer cannot tell a lookup from a refund by the URL: the
gate reads the body of each POST (bounded), finds every request in it (JSON-RPC batches included;
one call without its scope refuses the whole batch) and answers 403 `insufficient_scope` naming the
scope, before the SDK parses or runs anything. It sits behind the SDK's authentication, which has
already put the verified token on the connection; unauthenticated requests pass through untouched
so that the SDK answers them 401.

The body is parsed strictly: a document the gate cannot read, or one with a repeated key (another
parser might take the other value), is refused rather than passed on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from refund_mcp.auth.scopes import TOOL_SCOPES, scope_for_message

_PRINTABLE_METHOD = re.compile(r"^[a-z][a-z/_]{0,60}$")


@dataclass(frozen=True)
class Refusal:
    actor: str
    target: str
    required_scope: str
    granted: tuple[str, ...]


RefusalHook = Callable[[Refusal], Awaitable[None]]


class _Malformed(Exception):
    pass


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Malformed("a JSON object repeats a key")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


def parse_messages(body: bytes) -> list[Any]:
    """The JSON-RPC messages in a POST body (a batch is a list).

    Raises:
        _Malformed: not UTF-8 JSON, or a repeated key, NaN or Infinity anywhere.
    """
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_no_repeated_keys, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _Malformed(type(exc).__name__) from exc
    return data if isinstance(data, list) else [data]


def _printable(target: str) -> str:
    """Only names we define go into headers and the audit log; anything else is described."""
    if target in TOOL_SCOPES or _PRINTABLE_METHOD.match(target):
        return target
    return "this request"


class ScopeGate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        resource_metadata_url: str | None = None,
        on_refusal: RefusalHook | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.resource_metadata_url = resource_metadata_url
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if scope["type"] != "http" or scope["method"] != "POST" or not isinstance(user, AuthenticatedUser):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        try:
            messages = parse_messages(bytes(body))
        except _Malformed as exc:
            error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": f"Parse error: {exc}"}}
            await JSONResponse(error, status_code=400)(scope, receive, send)
            return
        granted = tuple(user.scopes)
        for item in messages:
            needed = scope_for_message(item)
            if needed is not None and needed[1] not in granted:
                refusal = Refusal(user.access_token.client_id, _printable(needed[0]), needed[1], granted)
                if self.on_refusal is not None:
                    await self.on_refusal(refusal)
                await self._forbidden(refusal)(scope, receive, send)
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await Response(f"Request body too large (limit {self.max_body_bytes} bytes)", status_code=413)(scope, receive, send)

    def _forbidden(self, refusal: Refusal) -> Response:
        description = f"{refusal.target} needs scope {refusal.required_scope}"
        challenge = [
            'error="insufficient_scope"',
            f'scope="{refusal.required_scope}"',
            f'error_description="{description}"',
        ]
        if self.resource_metadata_url:
            challenge.append(f'resource_metadata="{self.resource_metadata_url}"')
        return JSONResponse(
            {"error": "insufficient_scope", "error_description": description, "scope": refusal.required_scope},
            status_code=403,
            headers={"WWW-Authenticate": "Bearer " + ", ".join(challenge)},
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the body we read to the app as if it came from the client; later messages pass through."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
