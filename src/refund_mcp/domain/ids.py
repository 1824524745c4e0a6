"""Our own identifiers: sortable by creation time, safe as every processor's idempotency key."""

from __future__ import annotations

import re
import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REFUND_ID_PATTERN = r"^rf_[0-9A-HJKMNP-TV-Z]{26}$"
_REFUND_ID = re.compile(REFUND_ID_PATTERN)


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def new_refund_id() -> str:
    """`rf_` + a ULID (48-bit milliseconds, 80 random bits): 29 characters, within Square's 45-character key limit."""
    return "rf_" + _encode(time.time_ns() // 1_000_000, 10) + _encode(secrets.randbits(80), 16)


def is_refund_id(value: str) -> bool:
    return bool(_REFUND_ID.match(value))
