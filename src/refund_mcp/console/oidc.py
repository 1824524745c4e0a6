"""Single sign-on for the console: OpenID Connect authorization code flow with PKCE (S256).

    REFUND_MCP_CONSOLE_OIDC_CLIENT_ID      turns SSO on (the console's client at the issuer)
    REFUND_MCP_CONSOLE_OIDC_CLIENT_SECRET  for a confidential client (sent with HTTP Basic auth)
    REFUND_MCP_CONSOLE_OIDC_ISSUER         the issuer (default REFUND_MCP_OAUTH_ISSUER)
    REFUND_MCP_CONSOLE_OIDC_APPROVERS      comma-separated identities (email or subject) who get
                                           refunds:approve; everyone else who signs in may only read

The person is named by their verified `email` (else `sub`). A sign-in in progress (state, nonce,
PKCE verifier) is kept in this process for ten minutes: with several replicas, route
/console/sso* of one browser to one replica (or sign in with a personal token).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
import jwt
from pydantic import SecretStr

from refund_mcp.auth.jwks import JwksCache, JwksUnavailable
from refund_mcp.auth.oauth import LEEWAY_SECONDS
from refund_mcp.auth.scopes import APPROVE, READ
from refund_mcp.auth.actors import usable_actor
from refund_mcp.console.identity import Human, SignInRefused

PENDING_SECONDS = 600
MAX_PENDING = 1000


class OidcConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: SecretStr | None = None
    approvers: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OidcConfig | None:
        client_id = (env.get("REFUND_MCP_CONSOLE_OIDC_CLIENT_ID") or "").strip()
        if not client_id:
            return None
        issuer = (env.get("REFUND_MCP_CONSOLE_OIDC_ISSUER") or env.get("REFUND_MCP_OAUTH_ISSUER") or "").strip()
        parts = urlsplit(issuer)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OidcConfigError("REFUND_MCP_CONSOLE_OIDC_CLIENT_ID is set but no issuer: set REFUND_MCP_OAUTH_ISSUER or REFUND_MCP_CONSOLE_OIDC_ISSUER")
        secret = (env.get("REFUND_MCP_CONSOLE_OIDC_CLIENT_SECRET") or "").strip()
        approvers = frozenset(name.strip() for name in (env.get("REFUND_MCP_CONSOLE_OIDC_APPROVERS") or "").split(",") if name.strip())
        return cls(issuer=issuer.rstrip("/"), client_id=client_id, client_secret=SecretStr(secret) if secret else None, approvers=approvers)


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


@dataclass
class _Pending:
    nonce: str
    verifier: str
    redirect_uri: str
    next_path: str
    started: float


@dataclass
class OidcClient:
    config: OidcConfig
    http: httpx2.AsyncClient
    clock: Any = time.monotonic
    _metadata: dict[str, Any] | None = None
    _jwks: JwksCache | None = None
    _pending: dict[str, _Pending] = field(default_factory=dict)

    async def _discover(self) -> dict[str, Any]:
        if self._metadata is None:
            url = f"{self.config.issuer}/.well-known/openid-configuration"
            try:
                response = await self.http.get(url, timeout=10.0)
                data = response.json() if response.status_code == 200 else None
            except (httpx2.HTTPError, ValueError) as exc:
                raise SignInRefused("the identity provider cannot be reached; try again or sign in with a token") from exc
            if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")):
                raise SignInRefused("the identity provider's discovery document is not usable")
            if data.get("issuer", self.config.issuer).rstrip("/") != self.config.issuer:
                raise SignInRefused("the identity provider names a different issuer")
            self._metadata = data
            self._jwks = JwksCache(data["jwks_uri"], http=self.http)
        return self._metadata

    async def start(self, redirect_uri: str, next_path: str) -> str:
        """The URL to send the browser to."""
        metadata = await self._discover()
        now = self.clock()
        self._pending = {state: p for state, p in self._pending.items() if now - p.started < PENDING_SECONDS}
        if len(self._pending) >= MAX_PENDING:
            raise SignInRefused("too many sign-ins in progress; try again in a few minutes")
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        self._pending[state] = _Pending(nonce, verifier, redirect_uri, next_path, now)
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid email profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": _challenge(verifier),
            "code_challenge_method": "S256",
        }
        return f"{metadata['authorization_endpoint']}?{urlencode(query)}"

    async def finish(self, state: str, code: str) -> tuple[Human, str]:
        """Exchange the code; returns the person and where they were going. Raises SignInRefused."""
        pending = self._pending.pop(state or "", None)
        if pending is None or self.clock() - pending.started >= PENDING_SECONDS:
            raise SignInRefused("this sign-in is unknown or too old; start again")
        metadata = await self._discover()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri, "code_verifier": pending.verifier, "client_id": self.config.client_id}
        auth = (self.config.client_id, self.config.client_secret.get_secret_value()) if self.config.client_secret else None
        try:
            response = await self.http.post(metadata["token_endpoint"], data=form, auth=auth, timeout=10.0)
            answer = response.json() if response.status_code == 200 else None
        except (httpx2.HTTPError, ValueError) as exc:
            raise SignInRefused("the identity provider did not answer the sign-in") from exc
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise SignInRefused("the identity provider refused the sign-in")
        claims = await self._verify(id_token, pending.nonce)
        return self._human(claims), pending.next_path

    async def _verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        assert self._jwks is not None
        try:
            header = jwt.get_unverified_header(id_token)
            key = await self._jwks.key_for(header.get("kid"), header.get("alg", ""))
            if key is None or header.get("alg") not in ("RS256", "ES256"):
                raise SignInRefused("the sign-in was not signed by the identity provider")
            claims = jwt.decode(
                id_token, key=key, algorithms=[header["alg"]], audience=self.config.client_id, issuer=self.config.issuer,
                leeway=LEEWAY_SECONDS, options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, JwksUnavailable) as exc:
            raise SignInRefused(f"the sign-in could not be verified ({type(exc).__name__})") from exc
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInRefused("the sign-in does not belong to this browser (nonce)")
        return claims

    def _human(self, claims: dict[str, Any]) -> Human:
        email = claims.get("email")
        name = email if isinstance(email, str) and claims.get("email_verified", True) is not False else claims.get("sub")
        if not isinstance(name, str) or not usable_actor(name):
            raise SignInRefused("the identity provider gave no usable name for you")
        scopes = {READ}
        if name in self.config.approvers or claims.get("sub") in self.config.approvers:
            scopes.add(APPROVE)
        return Human(actor=name, scopes=frozenset(scopes))
