"""Who may reach the HTTP transport, read from the environment.

    REFUND_MCP_TOKENS           YAML file of {actor, scopes, sha256} entries (static bearer tokens)
    REFUND_MCP_OAUTH_ISSUER     OAuth issuer whose JWT access tokens are accepted
    REFUND_MCP_OAUTH_JWKS_URL   its signing keys (default {issuer}/.well-known/jwks.json)
    REFUND_MCP_OAUTH_AUDIENCE   the `aud` tokens must carry (default the resource URL)
    REFUND_MCP_RESOURCE_URL     this server's public MCP URL (default http://{host}:{port}/mcp)
    REFUND_MCP_ALLOWED_HOSTS    extra Host names accepted besides loopback, the bind address and
                                the resource URL's host (DNS-rebinding protection stays on)

Both kinds of token may be configured at once; a static token is tried first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from refund_mcp.auth.jwks import JwksCache
from refund_mcp.auth.oauth import JwtVerifier
from refund_mcp.auth.static import StaticTokenVerifier, warn_if_writable_by_others
from refund_mcp.auth.tokens_file import TokensFileError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class AuthConfigError(ValueError):
    """The auth configuration is incomplete or invalid; the message says which variable and why."""


def is_loopback(host: str) -> bool:
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """A host as it appears in a URL or a Host header: IPv6 in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


class ChainVerifier(TokenVerifier):
    """Asks each verifier in turn; the first that recognises the token wins."""

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self.verifiers = list(verifiers)

    async def verify_token(self, token: str) -> AccessToken | None:
        for verifier in self.verifiers:
            if (access := await verifier.verify_token(token)) is not None:
                return access
        return None


@dataclass(frozen=True)
class AuthConfig:
    resource_url: str
    allowed_hosts: tuple[str, ...]
    verifier: TokenVerifier | None = None
    settings: AuthSettings | None = None
    oauth_issuer: str | None = None
    description: str = "none"
    static_tokens: StaticTokenVerifier | None = None

    def problem(self) -> str | None:
        """Why some configured credentials are refused right now (a tokens file that does not load), or None."""
        if self.static_tokens is None:
            return None
        self.static_tokens.refresh()
        if self.static_tokens.problem is None:
            return None
        return "the tokens file cannot be read or parsed: every static bearer token is refused (see the server log)"

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    @property
    def resource_metadata_url(self) -> str | None:
        """Advertised only with OAuth: static tokens have no authorization server to point clients to."""
        if self.oauth_issuer is None:
            return None
        from mcp.server.auth.routes import build_resource_metadata_url

        return str(build_resource_metadata_url(self.settings.resource_server_url))  # type: ignore[union-attr, arg-type]


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AuthConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value


def _oauth(env: Mapping[str, str], resource_url: str, http: Any) -> tuple[JwtVerifier, str] | None:
    issuer = (env.get("REFUND_MCP_OAUTH_ISSUER") or "").strip()
    if not issuer:
        for name in ("REFUND_MCP_OAUTH_JWKS_URL", "REFUND_MCP_OAUTH_AUDIENCE"):
            if env.get(name):
                raise AuthConfigError(f"{name} is set but REFUND_MCP_OAUTH_ISSUER is not")
        return None
    _http_url("REFUND_MCP_OAUTH_ISSUER", issuer)
    jwks_url = _http_url(
        "REFUND_MCP_OAUTH_JWKS_URL", (env.get("REFUND_MCP_OAUTH_JWKS_URL") or "").strip() or f"{issuer.rstrip('/')}/.well-known/jwks.json"
    )
    parts = urlsplit(jwks_url)
    if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        # Keys fetched in the clear can be swapped in transit, and then anyone can mint tokens.
        raise AuthConfigError(f"REFUND_MCP_OAUTH_JWKS_URL must use https (got {jwks_url})")
    audience = (env.get("REFUND_MCP_OAUTH_AUDIENCE") or "").strip() or resource_url
    verifier = JwtVerifier(issuer=issuer, audience=audience, jwks=JwksCache(jwks_url, http=http))
    return verifier, issuer


def load_auth_config(env: Mapping[str, str], *, host: str, port: int, http: Any = None) -> AuthConfig:
    """Raises AuthConfigError for a missing or invalid tokens file or OAuth setting."""
    resource_url = (env.get("REFUND_MCP_RESOURCE_URL") or "").strip() or f"http://{_url_host(host)}:{port}/mcp"
    _http_url("REFUND_MCP_RESOURCE_URL", resource_url)

    names = list(LOOPBACK_HOSTS)
    if host not in _WILDCARD_HOSTS:
        names.append(_url_host(host))
    names.append(_url_host(urlsplit(resource_url).hostname or ""))
    names += [name.strip() for name in (env.get("REFUND_MCP_ALLOWED_HOSTS") or "").split(",") if name.strip()]
    allowed_hosts = tuple(dict.fromkeys(names))

    verifiers: list[TokenVerifier] = []
    described: list[str] = []
    tokens_path = (env.get("REFUND_MCP_TOKENS") or "").strip()
    if tokens_path:
        path = Path(tokens_path).expanduser()
        try:
            static = StaticTokenVerifier(path)
        except TokensFileError as exc:
            raise AuthConfigError(f"REFUND_MCP_TOKENS: {exc}") from exc
        warn_if_writable_by_others(path)
        verifiers.append(static)
        described.append(f"bearer tokens from {path} ({len(static.entries)} token(s))")
    oauth = _oauth(env, resource_url, http)
    if oauth is not None:
        verifiers.append(oauth[0])
        described.append(f"OAuth JWTs from {oauth[1]} (audience {oauth[0].audience})")
    if not verifiers:
        return AuthConfig(resource_url=resource_url, allowed_hosts=allowed_hosts)

    # AuthSettings always wants an issuer; with static tokens only it is never advertised.
    here = urlsplit(resource_url)
    issuer = oauth[1] if oauth is not None else f"{here.scheme}://{here.netloc}"
    settings = AuthSettings(
        issuer_url=issuer,  # type: ignore[arg-type]
        resource_server_url=resource_url if oauth is not None else None,  # type: ignore[arg-type]
        # No blanket scope at the SDK's door: the gate and require_scope decide per call, so a
        # write-only token can still connect and list tools.
        required_scopes=None,
        # The JWT verifier checks `aud` itself (the audience may differ from the URL).
        validate_token_resource=False,
    )
    verifier = verifiers[0] if len(verifiers) == 1 else ChainVerifier(verifiers)
    return AuthConfig(
        resource_url=resource_url,
        allowed_hosts=allowed_hosts,
        verifier=verifier,
        settings=settings,
        oauth_issuer=oauth[1] if oauth is not None else None,
        description="; ".join(described),
        static_tokens=next((v for v in verifiers if isinstance(v, StaticTokenVerifier)), None),
    )


def refuse_open_exposure(host: str, config: AuthConfig) -> None:
    """Raises AuthConfigError when `host` is reachable from other machines and nothing checks tokens."""
    if not config.enabled and not is_loopback(host):
        raise AuthConfigError(
            f"refusing to serve HTTP on {host} without auth: set REFUND_MCP_TOKENS (create tokens with "
            "`refund-mcp tokens add ACTOR --scopes refunds:read`) or REFUND_MCP_OAUTH_ISSUER, or bind 127.0.0.1"
        )
