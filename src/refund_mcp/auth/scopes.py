"""The two scopes, what each MCP call needs, and the check made inside every tool.

Scopes are enforced twice. The HTTP gate (gate.py) reads each JSON-RPC request and answers 403
before the SDK runs anything; `require_scope`, called at the top of every tool, resource and prompt,
refuses again from the caller's access token, so a gap in the gate cannot move money.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

from mcp.server.mcpserver.exceptions import ResourceError
from refund_mcp.domain.errors import Forbidden

READ = "refunds:read"
WRITE = "refunds:write"
# Acting on other actors' refunds (cancelling them): never implied by refunds:write.
OPERATE = "refunds:operate"
# The approvers' console: decide approvals and resolve stuck refunds. No MCP tool needs it.
APPROVE = "refunds:approve"
ALL_SCOPES = (READ, WRITE, OPERATE, APPROVE)
MCP_SCOPES = (READ, WRITE, OPERATE)  # what MCP clients may ask an issuer for


def is_agent(scopes: Collection[str]) -> bool:
    """A token that may create refunds belongs to an agent (or a program acting for one), never to an
    approver: it never gets a console session, and no token may both write and approve, so whoever
    asks for money can never be the one who lets it go."""
    return WRITE in scopes

TOOL_SCOPES: Mapping[str, str] = MappingProxyType(
    {
        "lookup_transaction": READ,
        "get_refund_status": READ,
        "list_refunds": READ,
        "check_refund_policy": READ,
        "create_refund": WRITE,
        "cancel_refund": WRITE,
    }
)

# Resources and the prompt are read access; named by URI (template) and prompt name.
READ_ONLY_NAMES = frozenset({"refunds://policy", "refunds://refund/{refund_id}", "handle_refund_request"})

# Session plumbing any valid token may send: connecting, discovery, and the static tool list
# (a token that may only write still needs to see the tools it can call).
_OPEN_METHODS = frozenset({"initialize", "ping", "server/discover", "tools/list"})


def scope_for_tool(name: str) -> str:
    """The scope a tool needs. A name we do not know needs the strictest scope: deny by default."""
    return TOOL_SCOPES.get(name, WRITE)


def scope_for_message(message: Any) -> tuple[str, str] | None:
    """What one JSON-RPC message asks for, as (target, scope), or None when any valid token may send it.

    tools/call needs the tool's scope; every other request (resources, prompts, completion, tasks, and
    methods added later) needs refunds:read, so only the write tools can ever need refunds:write.
    """
    if not isinstance(message, dict):
        return ("invalid message", WRITE)
    method = message.get("method")
    if method is None:
        return None  # a response to our own request (e.g. an elicitation answer)
    if not isinstance(method, str):
        return ("invalid message", WRITE)
    if method in _OPEN_METHODS or method.startswith("notifications/"):
        return None
    if method == "tools/call":
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            return ("tools/call", WRITE)
        return (name, scope_for_tool(name))
    return (method, READ)


class ScopeDeniedForResource(Forbidden, ResourceError):
    """A forbidden resource read or prompt: a ResourceError, so the SDK answers with this text
    instead of treating it as a crash."""


def has_scope(scope: str) -> bool:
    """Whether the caller's bearer token carries `scope`. Without a token (stdio, in-process) there is
    no transport identity to grant extra permissions: False."""
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    return token is not None and scope in token.scopes


class ScopeDenied(Forbidden):
    """A tool call refused by `require_scope`: the SDK layer refused it, the service never saw it."""


def require_scope(name: str) -> None:
    """Refuse the call when the caller's bearer token lacks the scope `name` needs.

    `name` is a tool name, a resource URI (template) or the prompt name. Without an access token
    (stdio, the in-process client, loopback HTTP without auth) there is no transport auth and the
    identity comes from configuration, so the call goes on.

    Raises:
        Forbidden: the token lacks the scope (ScopeDeniedForResource for resources and prompts).
    """
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    if token is None:
        return
    needed = READ if name in READ_ONLY_NAMES else scope_for_tool(name)
    if needed in token.scopes:
        return
    message = (
        f"{name} needs scope {needed}; the token of {token.client_id} has "
        f"{', '.join(sorted(token.scopes)) or 'no scopes'}. Ask an operator for a token with {needed}."
    )
    if name in READ_ONLY_NAMES:
        raise ScopeDeniedForResource(message)
    raise ScopeDenied(message)
