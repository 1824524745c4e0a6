"""Redaction for anything that goes into the audit log or logs: no secrets, no card data."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SECRET_KEYS = re.compile(r"(secret|token|password|authorization|api[_-]?key|signature|hmac|card|pan|cvc|cvv)", re.I)
# 13-19 digits, optionally separated: the shape of a card number.
_CARD_NUMBER = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_MAX_TEXT = 500


def redact_text(value: str) -> str:
    cleaned = _CARD_NUMBER.sub("[card number removed]", value)
    return cleaned if len(cleaned) <= _MAX_TEXT else cleaned[:_MAX_TEXT] + "…"


def redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(key): ("[redacted]" if _SECRET_KEYS.search(str(key)) else redact(item)) for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
