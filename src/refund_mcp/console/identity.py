"""Who may sign in to the console.

A personal token (from the REFUND_MCP_TOKENS file, or an OAuth access token) is exchanged once for a
session. It must carry `refunds:read`, and it must not carry `refunds:write`: a token that may create
refunds is an agent's, and agents never get a session (see auth/scopes.py `is_agent`).
"""

from __future__ import annotations

from dataclasses import dataclass

from refund_mcp.auth.scopes import APPROVE, READ, is_agent


@dataclass(frozen=True)
class Human:
    actor: str
    scopes: frozenset[str]


class SignInRefused(Exception):
    """Why a sign-in was refused, in words safe to show (never the token)."""


def human_from(actor: str, scopes: list[str] | tuple[str, ...] | frozenset[str]) -> Human:
    """Raises SignInRefused for an agent's token or one that may not even read."""
    granted = frozenset(scopes)
    if is_agent(granted):
        raise SignInRefused("this is an agent's token (it may create refunds); agents cannot sign in to the console")
    if READ not in granted:
        raise SignInRefused(f"this token lacks {READ}; ask an operator for a personal token with {READ}")
    return Human(actor=actor, scopes=granted & {READ, APPROVE})
