"""OAuth/JWT bearer tokens over real HTTP: an issuer's JWKS served by a small HTTP server, and a
`refund-mcp serve --transport http` subprocess configured with REFUND_MCP_OAUTH_ISSUER."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.security._support import (
    SANDBOX_TXN,
    Issuer,
    RunningServer,
    base_env,
    ec_key,
    jwks_issuer,
    mcp_over_http,
    mcp_post,
    refund_mcp_http,
    rsa_key,
    run_cli,
    tool_call,
)
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

WRITE_SCOPES = "refunds:read refunds:write"


@dataclass
class OAuthDeployment:
    server: RunningServer
    issuer: Issuer
    env: dict[str, str]
    rsa: object
    ec: object

    @property
    def audience(self) -> str:
        return self.server.mcp_url  # the default audience: the server's resource URL

    def token(self, *, key=None, **claims) -> str:
        claims.setdefault("sub", "agent@example.com")
        claims.setdefault("scope", WRITE_SCOPES)
        claims.setdefault("audience", self.audience)
        audience = claims.pop("audience")
        return self.issuer.mint(key or self.rsa, audience=audience, **claims)


@pytest.fixture(scope="module")
def oauth(tmp_path_factory) -> Iterator[OAuthDeployment]:
    tmp = tmp_path_factory.mktemp("oauth")
    signing_rsa, signing_ec = rsa_key("rsa-1"), ec_key("ec-1")
    with jwks_issuer(tmp / "issuer") as issuer:
        issuer.publish([signing_rsa, signing_ec])
        port = free_port()
        env = {**base_env(tmp), "REFUND_MCP_OAUTH_ISSUER": issuer.url}
        with refund_mcp_http(env, tmp, port=port) as server:
            yield OAuthDeployment(server, issuer, env, signing_rsa, signing_ec)


def status_of(deployment: OAuthDeployment, token: str, call=None) -> int:
    call = call or tool_call("list_refunds")
    return mcp_post(deployment.server.mcp_url, call, token=token).status_code


async def test_a_valid_jwt_refunds_as_its_subject(oauth):
    async with mcp_over_http(oauth.server.mcp_url, oauth.token(sub="agent-7@example.com")) as client:
        result = await client.call_tool("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 301})
        assert not result.is_error, result.content
        assert result.structured_content["actor"] == "agent-7@example.com"
    exported = run_cli(oauth.env, "audit", "export")
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    mine = [r for r in records if r["target"] == result.structured_content["refund_id"]]
    assert mine and {r["actor"] for r in mine} == {"agent-7@example.com"}


async def test_an_es256_token_with_scp_claims_is_accepted(oauth):
    token = oauth.token(key=oauth.ec, sub=None, client_id="svc-reporting", scope=None, scp=["refunds:read"])
    async with mcp_over_http(oauth.server.mcp_url, token) as client:
        listed = await client.call_tool("list_refunds", {})
        assert not listed.is_error, listed.content
    assert status_of(oauth, token, tool_call("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "duplicate"})) == 403


@pytest.mark.parametrize(
    "claims",
    [
        {"ttl": -120},
        {"audience": "https://some-other-api.example.com"},
        {"iss": "https://evil.example.com"},
        {"ttl": None, "exp": None},
        {"sub": None},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "no-exp", "no-subject"],
)
def test_a_jwt_with_bad_claims_is_401(oauth, claims):
    claims = dict(claims)
    if claims.pop("exp", "keep") is None:
        now = int(time.time())
        token = jwt.encode(
            {"iss": oauth.issuer.url, "aud": oauth.audience, "sub": "x", "iat": now, "scope": WRITE_SCOPES},
            oauth.rsa.private,
            algorithm="RS256",
            headers={"kid": oauth.rsa.kid},
        )
    else:
        ttl = claims.pop("ttl", 300)
        token = oauth.token(ttl=ttl, **claims)
    response = mcp_post(oauth.server.mcp_url, tool_call("list_refunds"), token=token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_jwt_signed_by_another_key_under_a_known_key_id_is_401(oauth):
    impostor = rsa_key(oauth.rsa.kid)
    assert status_of(oauth, oauth.issuer.mint(impostor, audience=oauth.audience, sub="x", scope=WRITE_SCOPES)) == 401


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_algorithm_confusion_is_401(oauth, alg):
    now = int(time.time())
    claims = {"iss": oauth.issuer.url, "aud": oauth.audience, "sub": "x", "exp": now + 300, "scope": WRITE_SCOPES}
    signing_input = f"{_b64(json.dumps({'alg': alg, 'kid': oauth.rsa.kid}).encode())}.{_b64(json.dumps(claims).encode())}"
    if alg == "none":
        token = signing_input + "."
    else:
        # The classic attack: HMAC keyed with the issuer's *public* key, which anyone can fetch.
        public_pem = oauth.rsa.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        token = signing_input + "." + _b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    assert status_of(oauth, token) == 401


def test_a_rotated_key_is_fetched_once_when_its_key_id_first_appears(oauth):
    assert status_of(oauth, oauth.token()) == 200  # the JWKS is cached now
    rotated = rsa_key("rsa-rotated")
    oauth.issuer.publish([oauth.rsa, oauth.ec, rotated])
    assert status_of(oauth, oauth.issuer.mint(rotated, audience=oauth.audience, sub="x", scope=WRITE_SCOPES)) == 200


def test_a_token_without_the_write_scope_is_403_with_a_step_up_challenge(oauth):
    token = oauth.token(scope="refunds:read")
    response = mcp_post(oauth.server.mcp_url, tool_call("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "duplicate"}), token=token)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="refunds:write"' in challenge
    assert f'resource_metadata="{oauth.server.base}/.well-known/oauth-protected-resource/mcp"' in challenge


def test_the_401_points_to_protected_resource_metadata_that_names_the_issuer_and_both_scopes(oauth):
    response = mcp_post(oauth.server.mcp_url, tool_call("list_refunds"))
    assert response.status_code == 401
    metadata_url = f"{oauth.server.base}/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="{metadata_url}"' in response.headers["www-authenticate"]
    metadata = httpx2.get(metadata_url).json()
    assert metadata["resource"] == oauth.audience
    assert [url.rstrip("/") for url in metadata["authorization_servers"]] == [oauth.issuer.url]
    assert sorted(metadata["scopes_supported"]) == ["refunds:operate", "refunds:read", "refunds:write"]


def test_a_jwks_url_over_plain_http_to_another_host_is_refused_at_start(tmp_path):
    env = {**base_env(tmp_path), "REFUND_MCP_OAUTH_ISSUER": "http://idp.example.com"}
    finished = run_cli(env, "serve", "--transport", "http", "--port", "1")
    assert finished.returncode != 0
    assert "must use https" in finished.stderr


# ------------------------------------------------------------------------ the JWKS cache, in-process


class CountingIssuer:
    """A JWKS endpoint as an httpx2 MockTransport handler; it counts fetches and can go down."""

    def __init__(self, keys) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.fetches += 1
        if self.down:
            return httpx2.Response(503)
        return httpx2.Response(200, json={"keys": [key.public_jwk() for key in self.keys]})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier_for(issuer_keys, clock) -> tuple[object, CountingIssuer]:
    from refund_mcp.auth.jwks import JwksCache
    from refund_mcp.auth.oauth import JwtVerifier

    endpoint = CountingIssuer(issuer_keys)
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(endpoint))
    cache = JwksCache("https://idp.example.com/jwks", http=http, ttl_seconds=900, refetch_cooldown_seconds=10, clock=clock)
    return JwtVerifier(issuer="https://idp.example.com", audience="https://refunds.example.com/mcp", jwks=cache), endpoint


def mint(key, **claims) -> str:
    now = int(time.time())
    body = {"iss": "https://idp.example.com", "aud": "https://refunds.example.com/mcp", "sub": "agent", "exp": now + 300, **claims}
    return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid})


async def test_unknown_key_ids_cause_at_most_one_refetch_per_cooldown():
    clock = FakeClock()
    known = rsa_key("known")
    verifier, endpoint = verifier_for([known], clock)
    assert (await verifier.verify_token(mint(known))).client_id == "agent"
    assert endpoint.fetches == 1
    for n in range(5):
        assert await verifier.verify_token(mint(rsa_key(f"made-up-{n}"))) is None
    assert endpoint.fetches == 2, "one refetch for the first unknown key id, then the cooldown holds"
    clock.now += 11
    rotated = rsa_key("rotated")
    endpoint.keys.append(rotated)
    assert (await verifier.verify_token(mint(rotated))).client_id == "agent"
    assert endpoint.fetches == 3


async def test_when_the_issuer_is_down_the_cached_keys_keep_working():
    clock = FakeClock()
    known = ec_key("known")
    verifier, endpoint = verifier_for([known], clock)
    assert await verifier.verify_token(mint(known)) is not None
    endpoint.down = True
    clock.now += 901  # past the cache's lifetime: it tries to refresh, fails, keeps what it has
    assert await verifier.verify_token(mint(known)) is not None
    fetches = endpoint.fetches
    assert await verifier.verify_token(mint(known)) is not None
    assert endpoint.fetches == fetches, "no refetch on every request while the issuer is down"


async def test_an_issuer_that_was_never_reachable_means_401_not_a_crash():
    verifier, endpoint = verifier_for([], FakeClock())
    endpoint.down = True
    assert await verifier.verify_token(mint(rsa_key("any"))) is None


@pytest.mark.parametrize("subject", ["refund-mcp", "Refund-MCP", "external", "webhook:stripe", "refund-mcp-worker"])
def test_a_jwt_whose_subject_is_a_name_refund_mcp_writes_itself_is_401(oauth, subject):
    assert status_of(oauth, oauth.token(sub=subject)) == 401
    assert status_of(oauth, oauth.token(sub=None, client_id=subject)) == 401


async def test_an_issuer_down_at_start_is_fetched_once_for_a_burst_of_tokens_then_after_a_backoff():
    import anyio

    clock = FakeClock()
    key = rsa_key("k1")
    endpoint = CountingIssuer([key])
    endpoint.down = True
    released = anyio.Event()

    async def slow_issuer(request: httpx2.Request) -> httpx2.Response:
        await released.wait()  # an issuer that answers only after a while (a timeout, say)
        return endpoint(request)

    from refund_mcp.auth.jwks import JwksCache
    from refund_mcp.auth.oauth import JwtVerifier

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(slow_issuer))
    cache = JwksCache("https://idp.example.com/jwks", http=http, ttl_seconds=900, refetch_cooldown_seconds=10, clock=clock)
    verifier = JwtVerifier(issuer="https://idp.example.com", audience="https://refunds.example.com/mcp", jwks=cache)
    results: list[object] = []

    async def verify() -> None:
        results.append(await verifier.verify_token(mint(key)))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(verify)
        await anyio.wait_all_tasks_blocked()
        released.set()
    assert results == [None] * 20
    assert endpoint.fetches == 1, "one fetch for the whole burst; the others did not each wait for their own"
    assert await verifier.verify_token(mint(key)) is None
    assert endpoint.fetches == 1, "within the backoff a token is refused without fetching"
    clock.now += 10
    endpoint.down = False
    assert (await verifier.verify_token(mint(key))).client_id == "agent"
    assert endpoint.fetches == 2
