"""Helpers for the security tests: a server subprocess whose stderr we keep, an issuer's JWKS served
over real HTTP, JWT minting, MCP clients with a bearer token, and the leak scanner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from tests.conftest import TEST_POLICY
from tests.support.servers import free_port, refund_mcp_command, wait_until_healthy

SANDBOX_TXN = "sandbox:demo_usd_order"  # USD 120.00, captured
# Inherited settings that would change what the server under test does.
_CONFIG_PREFIXES = ("REFUND_MCP_", "STRIPE_", "PAYPAL_", "ADYEN_", "SQUARE_")


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "REFUND_MCP_DB": f"sqlite+aiosqlite:///{tmp_path / 'server.sqlite3'}",
        "REFUND_MCP_POLICY": str(TEST_POLICY),
        "REFUND_MCP_SANDBOX": "1",
        "REFUND_MCP_ACTOR": "stdio-identity-must-not-be-used",
    }


def hermetic_env(env: Mapping[str, str]) -> dict[str, str]:
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(_CONFIG_PREFIXES)}
    return {**inherited, **env}


def run_cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*refund_mcp_command(), *args], env=hermetic_env(env), capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class RunningServer:
    base: str
    port: int
    stderr_path: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def refund_mcp_http(env: Mapping[str, str], log_dir: Path, *, port: int | None = None, verbose: bool = True) -> Iterator[RunningServer]:
    """`refund-mcp [-v] serve --transport http` with its stderr kept in a file (debug logging on, so
    the leak scan reads everything the server can say)."""
    port = port or free_port()
    stderr_path = log_dir / f"server-{port}.stderr"
    command = [*refund_mcp_command(), *(["-v"] if verbose else []), "serve", "--transport", "http", "--port", str(port)]
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(command, env=hermetic_env(env), stdout=subprocess.DEVNULL, stderr=stderr)
    server = RunningServer(f"http://127.0.0.1:{port}", port, stderr_path)
    try:
        try:
            wait_until_healthy(f"{server.base}/healthz", proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- server stderr ---\n{server.stderr()}") from exc
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def mcp_over_http(url: str, token: str | None = None, **client_options: Any) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), **client_options) as client:
            yield client


MODERN_PROTOCOL = "2026-07-28"
_NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def mcp_post(url: str, body: bytes | Mapping[str, Any] | list[Any], *, token: str | None = None, **headers: str) -> httpx2.Response:
    """One raw POST to /mcp, for what the SDK client would never send.

    For a single request the 2026-07-28 headers that mirror the body (MCP-Protocol-Version,
    Mcp-Method, Mcp-Name) are added, so a well-formed call is answered, not refused as a mismatch.
    """
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        **({"Authorization": f"Bearer {token}"} if token else {}),
    }
    sent.update(mirrored_headers(body))
    sent.update(headers)
    return httpx2.post(url, content=content, headers=sent, timeout=30)


def mirrored_headers(body: Any) -> dict[str, str]:
    """The 2026-07-28 headers that repeat what a single request's body says."""
    if not isinstance(body, Mapping) or not isinstance(body.get("method"), str):
        return {}
    method = body["method"]
    headers = {"MCP-Protocol-Version": MODERN_PROTOCOL, "Mcp-Method": method}
    if method in _NAME_PARAM:
        headers["Mcp-Name"] = str(body.get("params", {}).get(_NAME_PARAM[method], ""))
    return headers


def request(method: str, params: Mapping[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    """A 2026-07-28 JSON-RPC request, with the per-request envelope the protocol requires."""
    envelope = {
        "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": envelope}}


def tool_call(name: str, arguments: Mapping[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    return request("tools/call", {"name": name, "arguments": dict(arguments or {})}, request_id)


# ---------------------------------------------------------------------------------- OAuth issuer


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        jwk = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Issuer:
    """An identity provider reduced to what a resource server sees: a URL and a JWKS file."""

    url: str
    directory: Path

    def publish(self, keys: Iterable[SigningKey]) -> None:
        path = self.directory / ".well-known" / "jwks.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"keys": [key.public_jwk() for key in keys]}))
        temporary.replace(path)

    def mint(self, key: SigningKey, *, audience: str, ttl: int = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "aud": audience, "iat": now, "exp": now + ttl, **claims}
        body = {name: value for name, value in body.items() if value is not None}
        return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid})


@contextmanager
def jwks_issuer(directory: Path) -> Iterator[Issuer]:
    """Serve `directory` over HTTP with the standard library's server (the verifier fetches with httpx2)."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 30
        while True:  # readiness polling, not a timing assertion
            try:
                httpx2.get(url, timeout=1.0)
                break
            except httpx2.TransportError:
                if time.monotonic() > give_up or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield Issuer(url, directory)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------- leak scanning


def leaks(secrets: Iterable[str], texts: Mapping[str, str]) -> list[str]:
    """Every (secret, where) pair found; secrets are reported by their first characters only."""
    found = []
    for secret in secrets:
        for where, text in texts.items():
            if secret and secret in text:
                found.append(f"{secret[:8]}… appears in {where}")
    return found


async def row_count(app: Any, table: Any) -> int:
    from sqlalchemy import func, select

    async with app.db.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


def result_text(result: Any) -> str:
    """Everything a tool result shows the model: content blocks and structured content."""
    return json.dumps(result.model_dump(mode="json", by_alias=True), ensure_ascii=False)
