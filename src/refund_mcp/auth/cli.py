"""`refund-mcp tokens add|list|revoke`: manage the REFUND_MCP_TOKENS file.

`add` prints the new token alone on stdout (so `TOKEN=$(refund-mcp tokens add bot)` works) and
everything else on stderr; the token is shown this once and stored nowhere. `list` shows actors,
scopes and short fingerprints, never whole hashes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refund_mcp.auth.scopes import ALL_SCOPES, READ
from refund_mcp.auth.tokens_file import TokensFileError, add_token, load_tokens, parse_scopes, remove_tokens

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_tokens_parser(sub: Any) -> None:
    """Register `tokens` on the top-level subparsers."""
    tokens = sub.add_parser("tokens", help="manage HTTP bearer tokens (the REFUND_MCP_TOKENS file)")
    tokens.add_argument("--file", default=None, help="tokens file (default: $REFUND_MCP_TOKENS)")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    add = tokens_sub.add_parser("add", help="mint a token for ACTOR; prints it once")
    add.add_argument("actor", help="the identity recorded in the audit log and matched by the policy's actors:")
    add.add_argument(
        "--scopes",
        default=READ,
        help=f"comma-separated, from {', '.join(ALL_SCOPES)} (default: {READ})",
    )
    tokens_sub.add_parser("list", help="actors, scopes and fingerprints (never tokens or whole hashes)")
    revoke = tokens_sub.add_parser("revoke", help="remove a token by the start of its hash (see list)")
    revoke.add_argument("fingerprint", help="sha256:… as shown by list, at least 8 hex digits")


def run_tokens(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    location = args.file or env.get("REFUND_MCP_TOKENS")
    if not location:
        print("no tokens file: set REFUND_MCP_TOKENS or pass --file PATH", file=sys.stderr)
        return EXIT_USAGE
    path = Path(location).expanduser()
    try:
        if args.tokens_command == "add":
            return _add(path, args.actor, args.scopes)
        if args.tokens_command == "list":
            return _list(path)
        removed = remove_tokens(path, args.fingerprint)
        for entry in removed:
            print(
                f"revoked {entry.fingerprint} ({entry.actor}); a running server stops accepting it at once "
                "(one that cannot read the file refuses every static token until it can)",
                file=sys.stderr,
            )
        return EXIT_OK
    except TokensFileError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE


def _add(path: Path, actor: str, scopes_text: str) -> int:
    token, entry = add_token(path, actor, parse_scopes(scopes_text))
    print(token, flush=True)
    print(
        f"token for {entry.actor} ({', '.join(entry.scopes)}), {entry.fingerprint}, added to {path}.\n"
        "It is shown this once and stored nowhere: copy it now. Clients send it as 'Authorization: Bearer <token>'.",
        file=sys.stderr,
    )
    return EXIT_OK


def _list(path: Path) -> int:
    entries = load_tokens(path) if path.exists() else []
    if not entries:
        print(f"no tokens in {path}", file=sys.stderr)
        return EXIT_OK
    width = max(len(entry.actor) for entry in entries)
    for entry in entries:
        created = entry.created_at.strftime("%Y-%m-%d %H:%M") + "Z" if entry.created_at else "-"
        print(f"{entry.actor:<{width}}  {','.join(entry.scopes):<27}  {entry.fingerprint}  created {created}")
    return EXIT_OK
