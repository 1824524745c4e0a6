"""The HTTP app in-process: an MCP client per bearer token over httpx2.ASGITransport (no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from refund_mcp.auth import load_auth_config
from refund_mcp.auth.tokens_file import add_token
from refund_mcp.http_app import build_http_app

BASE = "http://127.0.0.1:8765"


@asynccontextmanager
async def served(app: Any, tokens: Path) -> AsyncIterator[Callable[[str], Any]]:
    """Yields `connect(token)`, an async context manager giving an MCP Client that sends that token."""
    config = load_auth_config({"REFUND_MCP_TOKENS": str(tokens)}, host="127.0.0.1", port=8765)
    starlette_app = build_http_app(app, "127.0.0.1", port=8765, auth=config)

    @asynccontextmanager
    async def connect(token: str) -> AsyncIterator[Client]:
        transport = httpx2.ASGITransport(app=starlette_app)
        async with httpx2.AsyncClient(transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {token}"}) as http:
            async with Client(streamable_http_client(f"{BASE}/mcp", http_client=http)) as client:
                yield client

    async with starlette_app.router.lifespan_context(starlette_app):
        yield connect


def tokens_for(path: Path, **actors: list[str]) -> dict[str, str]:
    """actor -> a new token with those scopes, all in one tokens file."""
    return {actor: add_token(path, actor.replace("_", "-"), scopes)[0] for actor, scopes in actors.items()}
