"""Where notifications go, read from the environment.

    REFUND_MCP_NOTIFY_URL          receiver of signed webhooks (Standard Webhooks)
    REFUND_MCP_NOTIFY_SECRET       its signing secret, `whsec_` + base64 (required with the URL)
    REFUND_MCP_SLACK_WEBHOOK_URL   a Slack incoming-webhook URL (itself a secret: never logged)
    REFUND_MCP_CONSOLE_URL         the console's public address for links (default: from
                                   REFUND_MCP_RESOURCE_URL, else http://127.0.0.1:8765/console)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import SecretStr


class NotifyConfigError(ValueError):
    """A notification setting is invalid; the message names the variable (never its secret value)."""


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyConfigError(f"{name} must be an http(s) URL")
    return value


def console_base_url(env: Mapping[str, str]) -> str:
    explicit = (env.get("REFUND_MCP_CONSOLE_URL") or "").strip()
    if explicit:
        return _url("REFUND_MCP_CONSOLE_URL", explicit).rstrip("/")
    resource = (env.get("REFUND_MCP_RESOURCE_URL") or "").strip()
    if resource:
        parts = urlsplit(resource)
        return f"{parts.scheme}://{parts.netloc}/console"
    return "http://127.0.0.1:8765/console"


@dataclass(frozen=True)
class NotifySettings:
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    slack_url: SecretStr | None = None
    console_url: str = "http://127.0.0.1:8765/console"

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None or self.slack_url is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NotifySettings:
        """Raises NotifyConfigError for a URL without its secret, a malformed secret or URL."""
        url = (env.get("REFUND_MCP_NOTIFY_URL") or "").strip() or None
        secret = (env.get("REFUND_MCP_NOTIFY_SECRET") or "").strip() or None
        if url is not None:
            _url("REFUND_MCP_NOTIFY_URL", url)
            if secret is None:
                raise NotifyConfigError("REFUND_MCP_NOTIFY_URL is set but REFUND_MCP_NOTIFY_SECRET is not (a whsec_… secret)")
        if secret is not None:
            if not secret.startswith("whsec_"):
                raise NotifyConfigError("REFUND_MCP_NOTIFY_SECRET must look like whsec_<base64>")
            from standardwebhooks.webhooks import Webhook

            try:
                Webhook(secret)
            except Exception as exc:  # binascii.Error, EmptyWebhookSecretError: say which variable, not the value
                raise NotifyConfigError("REFUND_MCP_NOTIFY_SECRET is not valid base64 after whsec_") from exc
        slack = (env.get("REFUND_MCP_SLACK_WEBHOOK_URL") or "").strip() or None
        if slack is not None:
            _url("REFUND_MCP_SLACK_WEBHOOK_URL", slack)
        return cls(
            webhook_url=url,
            webhook_secret=SecretStr(secret) if secret else None,
            slack_url=SecretStr(slack) if slack else None,
            console_url=console_base_url(env),
        )
