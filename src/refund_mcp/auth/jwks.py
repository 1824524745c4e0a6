"""An issuer's signing keys (JWKS), fetched over HTTP and cached.

Keys are cached for `ttl_seconds`. A token signed with a key id we have not seen triggers one
refetch (the issuer may have rotated its keys), at most once per `refetch_cooldown_seconds`, so a
stream of tokens with made-up key ids cannot turn us into a load generator against the issuer.
When a refetch fails, the keys we already have stay in use.

Fetches are single-flight: concurrent requests wait for the one fetch in progress rather than each
making their own. While the issuer has never answered (an outage at start), a failed fetch is
remembered for a backoff that starts at the refetch cooldown and doubles up to MAX_BACKOFF_SECONDS;
until it ends, JWT-shaped tokens are refused at once instead of each waiting for a fetch to time out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import jwt

logger = logging.getLogger("refund_mcp.auth")

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
MAX_BACKOFF_SECONDS = 300.0
# The key type each accepted algorithm needs; symmetric keys ("oct") are never accepted.
KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}


class JwksUnavailable(Exception):
    """The JWKS could not be fetched or parsed (and no earlier copy is cached)."""


def _usable(jwk: Any) -> bool:
    return isinstance(jwk, dict) and jwk.get("kty") in KEY_TYPES.values() and jwk.get("use", "sig") == "sig"


def parse_jwks(body: bytes) -> list[dict[str, Any]]:
    """Raises JwksUnavailable when `body` is not a JWKS."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JwksUnavailable(f"the JWKS is not JSON: {exc}") from exc
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise JwksUnavailable('the JWKS has no "keys" list')
    return [jwk for jwk in keys[:MAX_KEYS] if _usable(jwk)]


class JwksCache:
    def __init__(
        self,
        url: str,
        *,
        http: httpx2.AsyncClient | None = None,
        ttl_seconds: float = 900.0,
        refetch_cooldown_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._http = http
        self._ttl = ttl_seconds
        self._cooldown = refetch_cooldown_seconds
        self._clock = clock
        self._keys: list[dict[str, Any]] | None = None
        self._fetched_at = float("-inf")
        self._last_refetch = float("-inf")
        self._built: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._lock = anyio.Lock()
        self._failures = 0
        self._retry_at = float("-inf")

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The key that may verify a token with header (`kid`, `alg`), or None.

        Raises:
            JwksUnavailable: the JWKS was never fetched successfully.
        """
        async with self._lock:
            if self._keys is None and self._clock() < self._retry_at:
                raise JwksUnavailable(f"the JWKS at {self.url} could not be fetched; not retrying before the backoff ends")
            if self._keys is None or self._clock() - self._fetched_at > self._ttl:
                await self._refresh()
            found = self._pick(kid, alg)
            if found is None and self._clock() - self._last_refetch >= self._cooldown:
                self._last_refetch = self._clock()
                await self._refresh()
                found = self._pick(kid, alg)
        return found

    async def _refresh(self) -> None:
        try:
            self._keys = await self._fetch()
        except JwksUnavailable:
            if self._keys is None:
                self._failures += 1
                backoff = min(MAX_BACKOFF_SECONDS, self._cooldown * 2 ** (self._failures - 1))
                self._retry_at = self._clock() + backoff
                raise
            logger.warning("could not refresh the JWKS from %s; keeping the keys already known", self.url)
            # Try again after the cooldown, not on every request while the issuer is down.
            self._fetched_at = self._clock() - self._ttl + self._cooldown
            return
        self._fetched_at = self._clock()
        self._failures = 0
        self._built.clear()

    async def _fetch(self) -> list[dict[str, Any]]:
        client = self._http or httpx2.AsyncClient(timeout=5.0, follow_redirects=False)
        try:
            async with client.stream("GET", self.url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise JwksUnavailable(f"GET {self.url} answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksUnavailable(f"the JWKS at {self.url} is larger than {MAX_JWKS_BYTES} bytes")
        except httpx2.HTTPError as exc:
            raise JwksUnavailable(f"GET {self.url} failed: {type(exc).__name__}") from exc
        finally:
            if self._http is None:
                await client.aclose()
        return parse_jwks(bytes(body))

    def _pick(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        keys = self._keys or []
        if kid is None:
            # No key id: only unambiguous when the issuer publishes a single key.
            candidates = keys if len(keys) == 1 else []
        else:
            candidates = [jwk for jwk in keys if jwk.get("kid") == kid]
        for jwk in candidates:
            if jwk.get("kty") != KEY_TYPES.get(alg) or jwk.get("alg", alg) != alg:
                continue
            cache_key = (kid, alg)
            if cache_key not in self._built:
                try:
                    self._built[cache_key] = jwt.PyJWK(jwk, algorithm=alg)
                except jwt.PyJWTError as exc:
                    logger.warning("JWKS key %r is not usable for %s: %s", kid, alg, exc)
                    continue
            return self._built[cache_key]
        return None
