"""A tiny OpenID Connect provider (an ASGI app) for the console's SSO tests: discovery, an authorize
endpoint that signs in a fixed person at once, a token endpoint that checks PKCE, and its JWKS."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from tests.security._support import rsa_key

ISSUER = "http://idp.test"


class FakeOidc:
    def __init__(self, client_id: str, person: dict[str, Any]) -> None:
        self.client_id = client_id
        self.person = person
        self.key = rsa_key("idp-1")
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
            Route("/jwks", self.jwks),
        ])

    async def discovery(self, request: Request) -> JSONResponse:
        return JSONResponse({"issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/authorize", "token_endpoint": f"{ISSUER}/token", "jwks_uri": f"{ISSUER}/jwks"})

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse({"keys": [self.key.public_jwk()]})

    async def authorize(self, request: Request) -> RedirectResponse:
        q = request.query_params
        assert q["response_type"] == "code" and q["client_id"] == self.client_id and q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": q["code_challenge"], "nonce": q["nonce"], "redirect_uri": q["redirect_uri"]}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", status_code=302)

    async def token(self, request: Request) -> JSONResponse:
        form = dict(await request.form())
        self.token_requests.append(form)
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = form.get("code_verifier", "")
        if base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=") != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": self.client_id, "iat": now, "exp": now + 300, "nonce": grant["nonce"], **self.person}
        id_token = jwt.encode(claims, self.key.private, algorithm="RS256", headers={"kid": self.key.kid})
        return JSONResponse({"access_token": "opaque", "token_type": "Bearer", "id_token": id_token})
