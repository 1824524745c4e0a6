"""The processors file: account names, secrets only by reference, errors that never quote a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from refund_mcp.processors.accounts import AccountsError, load_accounts
from refund_mcp.settings import Settings
from tests.conftest import make_app, sqlite_url

SECRET = "sk_test_never_printed_0123456789"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "processors.yaml"
    path.write_text("accounts:\n" + body)
    return path


def test_the_contract_example_loads(tmp_path):
    path = write(
        tmp_path,
        "  stripe@eu: {processor: stripe, api_key_env: STRIPE_EU_KEY, webhook_secret_env: STRIPE_EU_WHSEC}\n"
        "  stripe@us: {processor: stripe, api_key_env: STRIPE_US_KEY, stripe_account: acct_123}\n"
        "  adyen@nl:  {processor: adyen, api_key_env: ADYEN_NL_KEY, merchant_account: ShopNL, hmac_key_env: ADYEN_NL_HMAC}\n"
        '  checkout:  {processor: ucs, url: "http://127.0.0.1:50051", connector: checkout, connector_config_env: UCS_CHECKOUT_CONFIG}\n',
    )
    env = {"STRIPE_EU_KEY": SECRET, "STRIPE_EU_WHSEC": "whsec_x", "STRIPE_US_KEY": "sk_us", "ADYEN_NL_KEY": "k",
           "ADYEN_NL_HMAC": "AA", "UCS_CHECKOUT_CONFIG": '{"config": {"Checkout": {"api_key": "sk_sbox_1"}}}'}
    accounts = load_accounts(path, env)
    assert [(a.name, a.processor) for a in accounts] == [("stripe@eu", "stripe"), ("stripe@us", "stripe"), ("adyen@nl", "adyen"), ("checkout", "ucs")]
    assert accounts[1].settings.stripe_account == "acct_123" and accounts[2].settings.merchant_account == "ShopNL"
    settings = Settings.from_env({**env, "REFUND_MCP_PROCESSORS": str(path)})
    assert settings.configured_processors == ["stripe@eu", "stripe@us", "adyen@nl", "checkout"] and not settings.sandbox
    assert SECRET in settings.secrets() and '{"config": {"Checkout": {"api_key": "sk_sbox_1"}}}' in settings.secrets()
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        (f"  stripe@eu: {{processor: stripe, api_key: {SECRET}}}\n", "never written inline"),
        ("  stripe@eu: {processor: stripe, api_key_env: NOT_SET}\n", "NOT_SET, which is not set"),
        ("  stripe@eu: {processor: stripe, api_key_env: KEY, colour: blue}\n", "unknown keys colour"),
        ("  paypal@eu: {processor: stripe, api_key_env: KEY}\n", "named stripe or stripe@label"),
        ("  stripe: {processor: ucs, url: 'http://x:1', connector: c, connector_config_env: CONFIG}\n", "named by itself"),
        ("  Stripe@EU: {processor: stripe, api_key_env: KEY}\n", "lower-case"),
        ("  stripe@averyveryverylongname: {processor: stripe, api_key_env: KEY}\n", "20 characters"),
        ("  adyen@nl: {processor: adyen, api_key_env: KEY}\n", "merchant_account is required"),
        ("  checkout: {processor: ucs, url: '127.0.0.1:1', connector: c, connector_config_env: CONFIG}\n", "http://host:port"),
        ("  checkout: {processor: ucs, url: 'http://x:1', connector: c, connector_config_env: KEY}\n", "must be JSON"),
        ("  stripe@eu: {processor: stripe, api_key_env: KEY, api_key_file: k}\n", "not both"),
        ("  x: {processor: venmo}\n", "processor must be one of"),
    ],
)
def test_a_wrong_account_is_refused_without_quoting_a_secret(tmp_path, entry, complaint):
    path = write(tmp_path, entry)
    with pytest.raises(AccountsError) as caught:
        load_accounts(path, {"KEY": SECRET, "CONFIG": "{}"})
    assert complaint in str(caught.value)
    assert SECRET not in str(caught.value)


def test_an_account_in_the_file_and_in_the_environment_is_refused(tmp_path):
    path = write(tmp_path, "  stripe: {processor: stripe, api_key_env: KEY}\n")
    with pytest.raises(ValueError, match="configured twice"):
        Settings.from_env({"KEY": SECRET, "STRIPE_API_KEY": "sk_other", "REFUND_MCP_PROCESSORS": str(path)})


def test_secret_files_are_read_relative_to_the_processors_file(tmp_path):
    (tmp_path / "eu.key").write_text(SECRET + "\n")
    path = write(tmp_path, "  stripe@eu: {processor: stripe, api_key_file: eu.key}\n")
    (account,) = load_accounts(path, {})
    assert account.settings.api_key.get_secret_value() == SECRET


@pytest.mark.anyio
async def test_a_policy_naming_an_unconfigured_account_is_refused_at_start(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nprocessors: [stripe@eu, stripe@eux]\n")
    path = write(tmp_path, "  stripe@eu: {processor: stripe, api_key_env: KEY}\n")
    with pytest.raises(ValueError, match="stripe@eux"):
        async with make_app(sqlite_url(tmp_path), env={"KEY": SECRET, "REFUND_MCP_PROCESSORS": str(path), "REFUND_MCP_SANDBOX": "0"}, policy=policy):
            pass
