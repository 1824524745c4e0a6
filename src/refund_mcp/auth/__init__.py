"""Who may call what over HTTP: bearer tokens and the scopes they carry.

    scopes.py       the scopes (read, write for agents; approve for the console), what each MCP call needs, and `require_scope` (the check inside tools)
    tokens_file.py  the REFUND_MCP_TOKENS file: SHA-256 hashes of tokens, each with an actor and scopes
    static.py       a TokenVerifier over that file (constant-time comparison, reloads when the file changes)
    jwks.py         an issuer's signing keys (JWKS), fetched and cached
    oauth.py        a TokenVerifier for OAuth access tokens: JWTs signed by the issuer (RS256/ES256)
    gate.py         ASGI middleware on /mcp: per-tool scopes, answered 403 before the SDK sees the request
    url_tokens.py   ASGI middleware: a token in the query string is refused and never logged
    config.py       the environment -> AuthConfig (verifier, SDK AuthSettings, allowed Host names)
    cli.py          `refund-mcp tokens add|list|revoke`

stdio has no transport auth: there the caller's identity comes from REFUND_MCP_ACTOR, and
`require_scope` lets every call through because no access token is present.
"""

from typing import Any

from refund_mcp.auth.scopes import ALL_SCOPES, APPROVE, MCP_SCOPES, READ, TOOL_SCOPES, WRITE, require_scope

_CONFIG_NAMES = frozenset({"AuthConfig", "AuthConfigError", "is_loopback", "load_auth_config", "refuse_open_exposure"})


def __getattr__(name: str) -> Any:
    # The HTTP auth configuration pulls in PyJWT and cryptography; stdio never needs them, so they are
    # imported on first use rather than at start (cold start matters to desktop clients).
    if name in _CONFIG_NAMES:
        from refund_mcp.auth import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_SCOPES",
    "APPROVE",
    "MCP_SCOPES",
    "READ",
    "TOOL_SCOPES",
    "WRITE",
    "AuthConfig",
    "AuthConfigError",
    "is_loopback",
    "load_auth_config",
    "refuse_open_exposure",
    "require_scope",
]
