"""Checks of a UCS account's configuration that need no gRPC (run when the processors file is loaded)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from refund_mcp.settings import UcsSettings

_SCHEMES = {"http": False, "grpc": False, "https": True, "grpcs": True}


def parse_target(url: str) -> tuple[str, bool]:
    """(host:port, tls) from `http://host:port` (plaintext) or `https://host:port` (TLS). Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(f"a UCS url must be http://host:port (plaintext) or https://host:port (TLS), got {url!r}")
    tls = _SCHEMES[parts.scheme]
    port = parts.port or (443 if tls else 50051)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", tls


def check_ucs_settings(settings: UcsSettings) -> None:
    """Raises ValueError (never quoting the credentials) for a url or connector config that cannot work."""
    parse_target(settings.url)
    try:
        config = json.loads(settings.connector_config.get_secret_value())
    except ValueError:
        raise ValueError("connector_config must be JSON, e.g. {\"config\": {\"Checkout\": {\"api_key\": …}}}") from None
    if not isinstance(config, dict):
        raise ValueError("connector_config must be a JSON object")
    if settings.deadline_seconds <= 0 or settings.connect_seconds <= 0:
        raise ValueError("deadline_seconds and connect_seconds must be positive")
