"""A console over a real App (SQLite, sandbox processor) with personal tokens for four people, driven
through Starlette's ASGI app with httpx2, as a browser would (cookies, forms, CSRF tokens)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from refund_mcp.auth.config import load_auth_config
from refund_mcp.auth.tokens_file import add_token
from refund_mcp.http_app import build_http_app

POLICY = Path(__file__).with_name("console_policy.yaml")
AGENT = "support-bot"
SMALL = {"transaction_id": "sandbox:demo_usd_order", "reason": "requested_by_customer", "amount_minor": 8000}  # USD 80.00: one approver
LARGE = {"transaction_id": "sandbox:demo_usd_large", "reason": "product_defective", "amount_minor": 60000}  # USD 600.00: two
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


@dataclass
class People:
    tokens: dict[str, str] = field(default_factory=dict)


def make_tokens(path: Path) -> dict[str, str]:
    tokens = {}
    for name, scopes in (
        (AGENT, ("refunds:read", "refunds:write")),
        ("alice", ("refunds:approve", "refunds:read")),
        ("bob", ("refunds:approve", "refunds:read")),
        ("rita", ("refunds:read",)),
    ):
        tokens[name], _entry = add_token(path, name, scopes)
    return tokens


class Browser:
    """One person's cookie jar against the console."""

    def __init__(self, asgi: Any, base: str = "http://127.0.0.1:8765") -> None:
        self.http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi), base_url=base, follow_redirects=False)

    async def sign_in(self, token: str) -> httpx2.Response:
        form = await self.http.get("/console/login")
        return await self.http.post("/console/login", data={"token": token, "csrf_token": csrf_of(form.text), "next": "/console"})

    async def csrf(self, path: str = "/console") -> str:
        return csrf_of((await self.http.get(path)).text)

    async def decide(self, refund_id: str, verb: str, note: str | None = None) -> httpx2.Response:
        token = await self.csrf(f"/console/refunds/{refund_id}")
        return await self.http.post(f"/console/refunds/{refund_id}/{verb}", data={"csrf_token": token, "note": note or ""})

    async def aclose(self) -> None:
        await self.http.aclose()


@asynccontextmanager
async def console_world(app_factory: Any, tmp_path: Path, **kwargs: Any) -> AsyncIterator[tuple[Any, Any, dict[str, str]]]:
    """(app, the Starlette app, tokens by person); the MCP in-process client acts as the agent."""
    tokens = make_tokens(tmp_path / "tokens.yaml")
    async with app_factory(policy=POLICY, actor=AGENT, **kwargs) as app:
        config = load_auth_config({"REFUND_MCP_TOKENS": str(tmp_path / "tokens.yaml")}, host="127.0.0.1", port=8765)
        yield app, build_http_app(app, auth=config), tokens
