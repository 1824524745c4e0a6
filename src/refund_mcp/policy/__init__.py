"""The refund policy: the YAML file's schema, its loader, the engine that decides, and hot reload."""

from refund_mcp.policy.engine import Decision, Outcome, PolicyEngine, PolicyRequest, RuleResult, strictest
from refund_mcp.policy.holder import PolicyHolder
from refund_mcp.policy.loader import (
    LoadedPolicy,
    PolicyFileError,
    default_policy_path,
    load_policy,
    parse_policy,
    policy_json_schema,
    render_json_schema,
)
from refund_mcp.policy.schema import Policy

__all__ = [
    "Decision",
    "LoadedPolicy",
    "Outcome",
    "Policy",
    "PolicyEngine",
    "PolicyFileError",
    "PolicyHolder",
    "PolicyRequest",
    "RuleResult",
    "default_policy_path",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
    "render_json_schema",
    "strictest",
]
