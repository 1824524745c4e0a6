"""Setting the console up: tokens for approvers, the standalone command's refusals. (The schema
revision is checked with the others in tests/store.)"""

from __future__ import annotations

import argparse

import pytest
from refund_mcp.auth.cli import run_tokens
from refund_mcp.auth.config import AuthConfigError
from refund_mcp.auth.tokens_file import TokensFileError, load_tokens, parse_scopes
from refund_mcp.console.standalone import build_console_app


def test_tokens_add_mints_an_approver_token_and_refuses_write_with_approve(tmp_path, capsys):
    path = tmp_path / "tokens.yaml"
    args = argparse.Namespace(file=str(path), tokens_command="add", actor="dana@example.com", scopes="refunds:read,refunds:approve")
    assert run_tokens(args, env={}) == 0
    [entry] = load_tokens(path)
    assert entry.scopes == ("refunds:approve", "refunds:read")
    assert capsys.readouterr().out.startswith("rmcp_")
    with pytest.raises(TokensFileError, match="cannot have both"):
        parse_scopes("refunds:write,refunds:approve")


def test_the_standalone_console_serves_loopback_only():
    with pytest.raises(AuthConfigError, match="loopback only"):
        build_console_app(object(), "0.0.0.0", 8766)
