"""The tokens file and `refund-mcp tokens`: a token is printed once, only its hash is kept."""

from __future__ import annotations

import hashlib
import stat

import pytest
import yaml

from refund_mcp.auth.cli import run_tokens
from refund_mcp.auth.static import StaticTokenVerifier
from refund_mcp.auth.tokens_file import TokensFileError, add_token, load_tokens, parse_tokens, remove_tokens
from refund_mcp.cli import build_parser
from tests.security._support import run_cli

pytestmark = pytest.mark.anyio


def tokens_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The `tokens` subcommand in-process, parsed by the real parser."""
    code = run_tokens(build_parser().parse_args(["tokens", *argv]), env={})
    out, err = capsys.readouterr()
    return code, out, err


def test_tokens_add_prints_the_token_once_and_the_file_holds_only_its_hash(tmp_path):
    path = tmp_path / "tokens.yaml"
    finished = run_cli({"REFUND_MCP_TOKENS": str(path)}, "tokens", "add", "support-bot", "--scopes", "refunds:read,refunds:write")
    assert finished.returncode == 0, finished.stderr
    token = finished.stdout.strip()
    assert finished.stdout == token + "\n", "stdout carries the token alone"
    assert token.startswith("rmcp_") and len(token) >= 5 + 43
    assert token not in finished.stderr
    text = path.read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [entry] = yaml.safe_load(text)
    assert entry["actor"] == "support-bot"
    assert entry["scopes"] == ["refunds:read", "refunds:write"]


def test_tokens_list_shows_actors_and_scopes_but_never_a_whole_hash(tmp_path, capsys):
    path = tmp_path / "tokens.yaml"
    _, reader = add_token(path, "reader-bot", ["refunds:read"])
    _, writer = add_token(path, "writer-bot", ["refunds:read", "refunds:write"])
    code, out, _ = tokens_cli(capsys, "--file", str(path), "list")
    assert code == 0
    assert "reader-bot" in out and "writer-bot" in out and "refunds:read,refunds:write" in out
    for entry in (reader, writer):
        assert entry.sha256 not in out
        assert entry.sha256[:12] in out


def test_each_token_is_new_and_a_second_add_keeps_the_operators_comments(tmp_path, capsys):
    path = tmp_path / "tokens.yaml"
    path.write_text("# owned by the platform team\n")
    first = tokens_cli(capsys, "--file", str(path), "add", "bot-a")[1].strip()
    second = tokens_cli(capsys, "--file", str(path), "add", "bot-b")[1].strip()
    assert first != second
    assert path.read_text().startswith("# owned by the platform team\n")
    assert [entry.actor for entry in load_tokens(path)] == ["bot-a", "bot-b"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "bot", "--scopes", "refunds:admin"], "unknown scope"),
        (["add", "bot", "--scopes", ","], "at least one scope"),
        (["add", "bad actor\nname"], "cannot add a token"),
    ],
    ids=["unknown-scope", "no-scope", "bad-actor"],
)
def test_tokens_add_refuses_what_the_server_could_not_use(tmp_path, capsys, argv, message):
    path = tmp_path / "tokens.yaml"
    code, out, err = tokens_cli(capsys, "--file", str(path), *argv)
    assert code != 0
    assert out == ""
    assert message in err
    assert not path.exists() or load_tokens(path) == []


def test_tokens_without_a_file_says_how_to_name_one(capsys):
    code, _, err = tokens_cli(capsys, "list")
    assert code != 0 and "REFUND_MCP_TOKENS" in err


async def test_a_revoked_token_is_refused_by_a_running_verifier(tmp_path, capsys):
    path = tmp_path / "tokens.yaml"
    token, entry = add_token(path, "bot", ["refunds:read"])
    verifier = StaticTokenVerifier(path)
    assert await verifier.verify_token(token) is not None
    code, _, err = tokens_cli(capsys, "--file", str(path), "revoke", entry.fingerprint)
    assert code == 0 and "revoked" in err
    assert await verifier.verify_token(token) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_the_verifier_maps_a_token_to_its_actor_and_scopes_and_follows_file_changes(tmp_path):
    path = tmp_path / "tokens.yaml"
    token, entry = add_token(path, "bot", ["refunds:read"])
    verifier = StaticTokenVerifier(path)
    access = await verifier.verify_token(token)
    assert access is not None
    assert (access.client_id, access.scopes) == ("bot", ["refunds:read"])
    assert token not in access.model_dump_json(), "the access token object does not carry the secret"
    assert await verifier.verify_token(token + "x") is None
    assert await verifier.verify_token("") is None

    later, _ = add_token(path, "later-bot", ["refunds:write"])
    assert (await verifier.verify_token(later)).client_id == "later-bot"
    remove_tokens(path, entry.sha256[:16])
    assert await verifier.verify_token(token) is None

    good = path.read_text()
    path.write_text("this: is: not valid")
    assert await verifier.verify_token(later) is None, "a file that does not parse accepts no token"
    assert verifier.problem is not None and "not valid YAML" in verifier.problem
    path.write_text(good)
    assert (await verifier.verify_token(later)).client_id == "later-bot", "fixing the file takes effect at once"
    assert verifier.problem is None
    path.unlink()
    assert await verifier.verify_token(later) is None, "a removed file revokes everything"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {actor: bot, scopes: [refunds:read], token: rmcp_abc}", "plaintext token"),
        ("- {actor: bot, scopes: [refunds:read], sha256: abc}", "sha256"),
        ("- {actor: bot, scopes: [refunds:root], sha256: " + "a" * 64 + "}", "scopes"),
        ("- {actor: bot, scopes: [], sha256: " + "a" * 64 + "}", "scopes"),
        ("{actor: bot}", "list"),
        ("- {actor: a, scopes: [refunds:read], sha256: " + "a" * 64 + "}\n- {actor: b, scopes: [refunds:read], sha256: " + "a" * 64 + "}", "repeats"),
    ],
    ids=["plaintext", "short-hash", "unknown-scope", "no-scopes", "not-a-list", "duplicate"],
)
def test_an_invalid_tokens_file_is_refused_naming_the_entry(text, message):
    with pytest.raises(TokensFileError, match=message):
        parse_tokens(text, "tokens.yaml")
