"""Named processor accounts from the processors file (`REFUND_MCP_PROCESSORS=processors.yaml`).

    accounts:
      stripe@eu: {processor: stripe, api_key_env: STRIPE_EU_KEY, webhook_secret_env: STRIPE_EU_WHSEC}
      stripe@us: {processor: stripe, api_key_env: STRIPE_US_KEY, stripe_account: acct_123}
      adyen@nl:  {processor: adyen, api_key_env: ADYEN_NL_KEY, merchant_account: ShopNL, hmac_key_env: ADYEN_NL_HMAC}
      checkout:  {processor: ucs, url: "http://127.0.0.1:50051", connector: checkout, connector_config_env: UCS_CHECKOUT_CONFIG}

Names: a native account is `<processor>` or `<processor>@<label>`; a UCS account is a bare name of
its own (its transaction prefix: `checkout:pay_…`), never one of the processor names. Secrets are
referenced, never written inline: `<secret>_env: VARIABLE` or `<secret>_file: PATH`. Any error
names the account and the key, never a value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from refund_mcp.settings import (
    AdyenSettings,
    PayPalSettings,
    SquareSettings,
    StripeSettings,
    UcsSettings,
)

NATIVE = ("stripe", "paypal", "adyen", "square")
RESERVED = (*NATIVE, "sandbox", "ucs")
# Shared with the MCP tools' `processor` argument and the policy's processor names.
# At most ACCOUNT_NAME_MAX characters in all: the name is stored in the `processor` columns.
ACCOUNT_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,19}(@[a-z0-9][a-z0-9_-]{0,18})?$"
ACCOUNT_NAME_MAX = 20
_ACCOUNT_NAME = re.compile(ACCOUNT_NAME_PATTERN)

AccountSettings = StripeSettings | PayPalSettings | AdyenSettings | SquareSettings | UcsSettings


@dataclass(frozen=True)
class Account:
    name: str  # "stripe", "stripe@eu", "checkout"
    processor: str  # the backend: stripe, paypal, adyen, square or ucs
    settings: AccountSettings


def processor_of(account: str) -> str:
    """The backend a native account name says (`stripe@eu` -> stripe); a bare UCS name says nothing more."""
    return account.partition("@")[0]


# Per backend: (required secrets, optional secrets, required plain keys, optional plain keys).
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "stripe": (("api_key",), ("webhook_secret",), (), ("stripe_account", "api_base")),
    "paypal": (("client_secret",), (), ("client_id",), ("webhook_id", "api_base")),
    "adyen": (("api_key",), ("hmac_key",), ("merchant_account",), ("api_base",)),
    "square": (("access_token",), ("webhook_signature_key",), (), ("webhook_url", "api_base")),
    "ucs": (
        ("connector_config",),
        ("webhook_secret",),
        ("url", "connector"),
        ("merchant_id", "tenant_id", "ca_file", "deadline_seconds", "connect_seconds"),
    ),
}


class AccountsError(ValueError):
    """The processors file is wrong; the message names the account and key, never a secret."""


def load_accounts(path: Path, env: Mapping[str, str]) -> tuple[Account, ...]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise AccountsError(f"cannot read the processors file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise AccountsError(f"the processors file {path} is not valid YAML") from exc
    if not isinstance(document, dict) or set(document) != {"accounts"} or not isinstance(document["accounts"], dict):
        raise AccountsError(f"the processors file {path} must be a mapping with one key, `accounts`")
    return tuple(parse_account(str(name), entry, env, base=path.parent) for name, entry in document["accounts"].items())


def parse_account(name: str, entry: Any, env: Mapping[str, str], *, base: Path = Path(".")) -> Account:
    where = f"account {name!r}"
    if not isinstance(entry, dict):
        raise AccountsError(f"{where} must be a mapping")
    processor = entry.get("processor")
    if processor not in _KEYS:
        raise AccountsError(f"{where}: processor must be one of {', '.join(_KEYS)}")
    if not _ACCOUNT_NAME.match(name) or len(name) > ACCOUNT_NAME_MAX:
        raise AccountsError(f"{where}: names are lower-case letters, digits, - and _, optionally @label (e.g. stripe@eu), 20 characters at most")
    if processor == "ucs":
        if "@" in name or name in RESERVED:
            raise AccountsError(f"{where}: a UCS account is named by itself (e.g. checkout), not after a processor")
    elif processor_of(name) != processor:
        raise AccountsError(f"{where}: a {processor} account is named {processor} or {processor}@label")
    secrets_required, secrets_optional, plain_required, plain_optional = _KEYS[processor]
    allowed = {"processor", *plain_required, *plain_optional}
    for secret in (*secrets_required, *secrets_optional):
        allowed |= {f"{secret}_env", f"{secret}_file"}
        if secret in entry:
            raise AccountsError(f"{where}: {secret} must be referenced with {secret}_env or {secret}_file, never written inline")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise AccountsError(f"{where}: unknown keys {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    values: dict[str, Any] = {}
    for key in plain_required:
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise AccountsError(f"{where}: {key} is required")
    for key in (*plain_required, *plain_optional):
        if key in entry:
            values[key] = entry[key]
    for secret in secrets_required:
        values[secret] = _secret(where, secret, entry, env, base, required=True)
    for secret in secrets_optional:
        found = _secret(where, secret, entry, env, base, required=False)
        if found is not None:
            values[secret] = found
    try:
        return Account(name, processor, _BUILDERS[processor](values, base))
    except (TypeError, ValueError) as exc:
        raise AccountsError(f"{where}: {exc}") from None


def _secret(where: str, secret: str, entry: Mapping[str, Any], env: Mapping[str, str], base: Path, *, required: bool) -> SecretStr | None:
    by_env, by_file = entry.get(f"{secret}_env"), entry.get(f"{secret}_file")
    if by_env is not None and by_file is not None:
        raise AccountsError(f"{where}: give {secret}_env or {secret}_file, not both")
    value: str | None = None
    if by_env is not None:
        value = env.get(str(by_env), "").strip() or None
        if value is None and required:
            raise AccountsError(f"{where}: {secret}_env names {by_env}, which is not set")
    elif by_file is not None:
        path = Path(str(by_file)).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            value = path.read_text().strip() or None
        except OSError as exc:
            raise AccountsError(f"{where}: cannot read {secret}_file ({exc.strerror})") from None
        if value is None and required:
            raise AccountsError(f"{where}: {secret}_file is empty")
    elif required:
        raise AccountsError(f"{where}: {secret}_env or {secret}_file is required")
    return SecretStr(value) if value is not None else None


def _stripe(values: dict[str, Any], base: Path) -> StripeSettings:
    return StripeSettings(**values)


def _paypal(values: dict[str, Any], base: Path) -> PayPalSettings:
    return PayPalSettings(**values)


def _adyen(values: dict[str, Any], base: Path) -> AdyenSettings:
    return AdyenSettings(**values)


def _square(values: dict[str, Any], base: Path) -> SquareSettings:
    return SquareSettings(**values)


def _ucs(values: dict[str, Any], base: Path) -> UcsSettings:
    from refund_mcp.processors.ucs.config import check_ucs_settings

    if "ca_file" in values:
        ca = Path(str(values["ca_file"])).expanduser()
        values["ca_file"] = str(ca if ca.is_absolute() else base / ca)
    for key in ("deadline_seconds", "connect_seconds"):
        if key in values:
            values[key] = float(values[key])
    settings = UcsSettings(**values)
    check_ucs_settings(settings)
    return settings


_BUILDERS: dict[str, Callable[[dict[str, Any], Path], AccountSettings]] = {
    "stripe": _stripe,
    "paypal": _paypal,
    "adyen": _adyen,
    "square": _square,
    "ucs": _ucs,
}
