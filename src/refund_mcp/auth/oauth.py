"""A TokenVerifier for OAuth access tokens issued as JWTs by the company's identity provider.

Checks: the signature (RS256 or ES256 only, with a key from the issuer's JWKS, so neither `none`
nor an HMAC algorithm keyed with a public key can pass), `iss`, `aud` (this resource) and `exp`
(all three required). The actor is `sub`, else `client_id`, else `azp`; scopes come from `scope`
(space-separated) or `scp` (a list or a string).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import jwt

from mcp.server.auth.provider import AccessToken, TokenVerifier
from refund_mcp.auth.jwks import KEY_TYPES, JwksCache, JwksUnavailable
from refund_mcp.auth.actors import usable_actor
from refund_mcp.auth.tokens_file import fingerprint

logger = logging.getLogger("refund_mcp.auth")

ALGORITHMS = tuple(KEY_TYPES)
MAX_JWT_LENGTH = 16 * 1024
# Tolerated clock skew between us and the issuer.
LEEWAY_SECONDS = 30
_KEPT_CLAIMS = ("iss", "sub", "aud", "azp", "client_id", "jti")


def actor_of(claims: dict[str, Any]) -> str | None:
    for name in ("sub", "client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            # The actor is written to the audit log and matched against policy `actors:`; an identity
            # provider's odd subject must not smuggle control characters into either, nor pass
            # itself off as one of refund-mcp's own names (auth/actors.py).
            return value if usable_actor(value) else None
    return None


def scopes_of(claims: dict[str, Any]) -> list[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope.split()
    scp = claims.get("scp")
    if isinstance(scp, str):
        return scp.split()
    if isinstance(scp, list):
        return [item for item in scp if isinstance(item, str)]
    return []


class JwtVerifier(TokenVerifier):
    def __init__(
        self, *, issuer: str, audience: str, jwks: JwksCache, algorithms: Sequence[str] = ALGORITHMS
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self._algorithms = tuple(alg for alg in algorithms if alg in KEY_TYPES)

    async def verify_token(self, token: str) -> AccessToken | None:
        if not token or len(token) > MAX_JWT_LENGTH or token.count(".") != 2:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms or not (kid is None or isinstance(kid, str)):
            return None
        try:
            key = await self.jwks.key_for(kid, alg)
        except JwksUnavailable as exc:
            logger.warning("cannot verify bearer JWTs: %s", exc)
            return None
        if key is None:
            logger.info("bearer JWT refused: no %s key with id %r in the issuer's JWKS", alg, kid)
            return None
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            # The exception's name says why (expired, audience, issuer, signature); never the token.
            logger.info("bearer JWT refused: %s", type(exc).__name__)
            return None
        actor = actor_of(claims)
        if actor is None:
            logger.info("bearer JWT refused: no usable sub, client_id or azp claim (malformed, or a name refund-mcp keeps for itself)")
            return None
        return AccessToken(
            # A fingerprint, not the token itself: see static.py.
            token=fingerprint(hashlib.sha256(token.encode()).hexdigest()),
            client_id=actor,
            scopes=scopes_of(claims),
            expires_at=int(claims["exp"]),
            subject=claims.get("sub") if isinstance(claims.get("sub"), str) else None,
            claims={name: claims[name] for name in _KEPT_CLAIMS if name in claims},
        )
