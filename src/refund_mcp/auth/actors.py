"""Which names a caller's identity (the actor) may take.

The actor is written to the audit log and matched against the policy's `actors:` section, so it is
one printable token, and it may not be a name refund-mcp itself writes as actor: the worker and
CLI operations (`refund-mcp…`), refunds made elsewhere (`external`) and webhook deliveries
(`webhook:<processor>`). Otherwise a token or an identity provider's `sub` could make an agent's
records read as the server's own.
"""

from __future__ import annotations

import re

ACTOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,99}$"
RESERVED_ACTORS = frozenset({"refund-mcp", "external"})
RESERVED_PREFIXES = ("refund-mcp", "webhook:")


def is_reserved_actor(name: str) -> bool:
    folded = name.strip().lower()
    return folded in RESERVED_ACTORS or folded.startswith(RESERVED_PREFIXES)


def usable_actor(name: str) -> bool:
    """A well-formed name that refund-mcp does not keep for itself."""
    return re.fullmatch(ACTOR_PATTERN, name) is not None and not is_reserved_actor(name)
