"""Refund metadata given by the caller: bounded, validated, and never able to replace refund-mcp's own keys.

At most METADATA_MAX_KEYS string keys of 1-40 characters (Stripe's limit) with string values of at most
500 characters (Stripe's). Keys starting `refund_mcp` are refund-mcp's own (`refund_mcp_id` ties a
processor's refund to ours; webhooks trust it) and are refused rather than silently overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from refund_mcp.domain.errors import ValidationFailed

METADATA_MAX_KEYS = 10
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
RESERVED_PREFIX = "refund_mcp"


def validate_metadata(metadata: Any) -> dict[str, str]:
    """The metadata as a plain dict. Raises ValidationFailed naming the problem (never echoing a long value)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValidationFailed("metadata must be an object of string keys to string values", fields=["metadata"])
    if len(metadata) > METADATA_MAX_KEYS:
        raise ValidationFailed(f"metadata has {len(metadata)} keys; at most {METADATA_MAX_KEYS} are kept", fields=["metadata"])
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= METADATA_KEY_MAX or any(ord(ch) < 32 for ch in key):
            raise ValidationFailed(f"metadata keys are 1-{METADATA_KEY_MAX} printable characters", fields=["metadata"])
        if key.lower().startswith(RESERVED_PREFIX):
            raise ValidationFailed(f"metadata key {key!r} is reserved: keys starting {RESERVED_PREFIX} are refund-mcp's own", fields=["metadata"])
        if not isinstance(value, str) or len(value) > METADATA_VALUE_MAX:
            raise ValidationFailed(f"metadata[{key!r}] must be a string of at most {METADATA_VALUE_MAX} characters", fields=["metadata"])
    return dict(metadata)


def encode(metadata: Mapping[str, str]) -> str | None:
    return json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False) if metadata else None


def decode(stored: str | None) -> dict[str, str]:
    if not stored:
        return {}
    try:
        value = json.loads(stored)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
