"""Configuration from the environment. Credentials are SecretStr: they never print."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

# scheme://user:password@ — the same groups as sqlalchemy.engine.url's pattern (user [^:/]*, password [^@]*).
_URL_PASSWORD = re.compile(r"^(?P<head>[\w+]+://[^:/]*:)[^@]*@")

REAL_PROCESSORS = ("stripe", "paypal", "adyen", "square")


@dataclass(frozen=True)
class StripeSettings:
    api_key: SecretStr
    api_base: str = "https://api.stripe.com"
    webhook_secret: SecretStr | None = None
    stripe_account: str | None = None  # a Connect account: every call sends `Stripe-Account`


@dataclass(frozen=True)
class PayPalSettings:
    client_id: str
    client_secret: SecretStr
    api_base: str = "https://api-m.sandbox.paypal.com"
    webhook_id: str | None = None


@dataclass(frozen=True)
class AdyenSettings:
    api_key: SecretStr
    merchant_account: str
    api_base: str = "https://checkout-test.adyen.com/v71"
    hmac_key: SecretStr | None = None


@dataclass(frozen=True)
class SquareSettings:
    access_token: SecretStr
    api_base: str = "https://connect.squareupsandbox.com"
    webhook_signature_key: SecretStr | None = None
    webhook_url: str | None = None


@dataclass(frozen=True)
class UcsSettings:
    """One connector behind a Unified Connector Service server (only from the processors file)."""

    url: str  # http://host:port (plaintext) or https://host:port (TLS)
    connector: str  # the connector's name at UCS (x-connector), e.g. checkout
    connector_config: SecretStr  # its credentials, JSON (x-connector-config)
    webhook_secret: SecretStr | None = None
    merchant_id: str = "refund-mcp"
    tenant_id: str = "public"
    ca_file: str | None = None  # PEM roots for TLS; the system's when unset
    deadline_seconds: float = 20.0
    connect_seconds: float = 5.0


def default_db_url() -> str:
    from platformdirs import user_data_dir

    data_dir = Path(user_data_dir("refund-mcp", appauthor=False))
    return f"sqlite+aiosqlite:///{data_dir / 'refund-mcp.sqlite3'}"


def _secret(env: Mapping[str, str], key: str) -> SecretStr | None:
    value = env.get(key, "").strip()
    return SecretStr(value) if value else None


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{key} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    db_url: str
    policy_path: Path | None  # None: the packaged default policy
    actor: str  # the caller's identity on stdio, where there is no transport auth
    tokens_file: Path | None = None
    sandbox: bool = False
    stripe: StripeSettings | None = None
    paypal: PayPalSettings | None = None
    adyen: AdyenSettings | None = None
    square: SquareSettings | None = None
    # Named accounts from the processors file (REFUND_MCP_PROCESSORS), beside the single accounts above.
    accounts: tuple[Any, ...] = ()
    # Retries of queued refunds: exponential backoff with jitter up to this deadline, after which a
    # human decides. A retry never re-sends a key the processor may have forgotten (service/resend.py).
    retry_deadline_seconds: float = 6 * 3600
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    worker_interval_seconds: float = 1.0
    # How long a submission may be in flight before another worker may take the refund over. Each attempt
    # is cut off at 75 % of it (service/attempts.py), above the adapters' request timeouts.
    claim_seconds: float = 120.0
    circuit_failure_threshold: int = 5
    circuit_open_seconds: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def configured_processors(self) -> list[str]:
        """Every account name: the single accounts from the environment, then the processors file's."""
        names = [name for name, _, _ in self.all_accounts()]
        if self.sandbox:
            names.append("sandbox")
        return names

    def all_accounts(self) -> list[tuple[str, str, Any]]:
        """(account name, processor, its settings) for every configured real account."""
        found = [(name, name, getattr(self, name)) for name in REAL_PROCESSORS if getattr(self, name) is not None]
        found += [(account.name, account.processor, account.settings) for account in self.accounts]
        return found

    def account_settings(self, name: str) -> tuple[str, Any] | None:
        """(processor, settings) of one account, or None when it is not configured."""
        for account, processor, settings in self.all_accounts():
            if account == name:
                return processor, settings
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        stripe = paypal = adyen = square = None
        if key := _secret(env, "STRIPE_API_KEY"):
            stripe = StripeSettings(
                api_key=key,
                api_base=env.get("STRIPE_API_BASE") or StripeSettings.api_base,
                webhook_secret=_secret(env, "STRIPE_WEBHOOK_SECRET"),
            )
        if (client_id := env.get("PAYPAL_CLIENT_ID")) and (secret := _secret(env, "PAYPAL_CLIENT_SECRET")):
            paypal = PayPalSettings(
                client_id=client_id,
                client_secret=secret,
                api_base=env.get("PAYPAL_API_BASE") or PayPalSettings.api_base,
                webhook_id=env.get("PAYPAL_WEBHOOK_ID") or None,
            )
        if (key := _secret(env, "ADYEN_API_KEY")) and (merchant := env.get("ADYEN_MERCHANT_ACCOUNT")):
            adyen = AdyenSettings(
                api_key=key,
                merchant_account=merchant,
                api_base=env.get("ADYEN_API_BASE") or AdyenSettings.api_base,
                hmac_key=_secret(env, "ADYEN_HMAC_KEY"),
            )
        if token := _secret(env, "SQUARE_ACCESS_TOKEN"):
            square = SquareSettings(
                access_token=token,
                api_base=env.get("SQUARE_API_BASE") or SquareSettings.api_base,
                webhook_signature_key=_secret(env, "SQUARE_WEBHOOK_SIGNATURE_KEY"),
                webhook_url=env.get("SQUARE_WEBHOOK_URL") or None,
            )
        accounts: tuple[Any, ...] = ()
        if processors_file := env.get("REFUND_MCP_PROCESSORS", "").strip():
            from refund_mcp.processors.accounts import load_accounts

            accounts = load_accounts(Path(processors_file).expanduser(), env)
        singles = {"stripe": stripe, "paypal": paypal, "adyen": adyen, "square": square}
        names = [name for name, group in singles.items() if group is not None] + [a.name for a in accounts]
        if len(set(names)) != len(names):
            raise ValueError("an account is configured twice (in the environment and in the processors file, or twice in the file)")
        any_real = bool(names)
        sandbox_flag = env.get("REFUND_MCP_SANDBOX", "").strip().lower()
        sandbox = sandbox_flag in ("1", "true", "yes") or (not any_real and sandbox_flag not in ("0", "false", "no"))
        policy = env.get("REFUND_MCP_POLICY")
        tokens = env.get("REFUND_MCP_TOKENS")
        return cls(
            db_url=env.get("REFUND_MCP_DB") or default_db_url(),
            policy_path=Path(policy).expanduser() if policy else None,
            actor=(env.get("REFUND_MCP_ACTOR") or "local-agent").strip(),
            tokens_file=Path(tokens).expanduser() if tokens else None,
            sandbox=sandbox,
            stripe=stripe,
            paypal=paypal,
            adyen=adyen,
            square=square,
            accounts=accounts,
            retry_deadline_seconds=_float(env, "REFUND_MCP_RETRY_DEADLINE_SECONDS", cls.retry_deadline_seconds),
            retry_base_seconds=_float(env, "REFUND_MCP_RETRY_BASE_SECONDS", cls.retry_base_seconds),
            retry_max_seconds=_float(env, "REFUND_MCP_RETRY_MAX_SECONDS", cls.retry_max_seconds),
            claim_seconds=_float(env, "REFUND_MCP_CLAIM_SECONDS", cls.claim_seconds),
            worker_interval_seconds=_float(env, "REFUND_MCP_WORKER_INTERVAL_SECONDS", cls.worker_interval_seconds),
        )

    def secrets(self) -> list[str]:
        """Every configured secret value, for redaction and for the leak-scanning tests."""
        found = []
        for _, _, group in self.all_accounts():
            for value in vars(group).values():
                if isinstance(value, SecretStr) and value.get_secret_value():
                    found.append(value.get_secret_value())
        return found

    def redacted_db_url(self) -> str:
        """The URL with its password shown as ***. Parsed the way SQLAlchemy's make_url does (the password
        ends at the first @ after the user), without importing SQLAlchemy: `serve` prints this at start."""
        return _URL_PASSWORD.sub(r"\g<head>***@", self.db_url, count=1)
