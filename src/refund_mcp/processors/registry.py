"""Builds the configured processors from Settings, one per account. Adapter modules are imported only when used.

An account is the unit everything else names: `stripe` (the single account from the environment),
`stripe@eu` (one of several), `checkout` (a UCS connector). Its processor is the backend behind it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from refund_mcp.domain.models import TransactionInfo
from refund_mcp.processors.base import Processor
from refund_mcp.settings import Settings

KnownTransactions = Callable[..., Awaitable[TransactionInfo | None]]


def build_processor(account: str, processor: str, config: Any, *, http: object | None, known_adyen: KnownTransactions | None) -> Processor:
    """The adapter for one account. `known_adyen(bare_id, account=…)` answers Adyen lookups from our records."""
    if processor == "stripe":
        from refund_mcp.processors.stripe import StripeProcessor

        return StripeProcessor(api_key=config.api_key, api_base=config.api_base, http=http, stripe_account=config.stripe_account)
    if processor == "paypal":
        from refund_mcp.processors.paypal import PayPalProcessor

        return PayPalProcessor(client_id=config.client_id, client_secret=config.client_secret, api_base=config.api_base, http=http)
    if processor == "adyen":
        from refund_mcp.processors.adyen import AdyenProcessor

        known = None
        if known_adyen is not None:

            async def known(bare_id: str) -> TransactionInfo | None:
                return await known_adyen(bare_id, account=account)

        return AdyenProcessor(
            api_key=config.api_key, merchant_account=config.merchant_account, api_base=config.api_base, http=http, known_transactions=known
        )
    if processor == "square":
        from refund_mcp.processors.square import SquareProcessor

        return SquareProcessor(access_token=config.access_token, api_base=config.api_base, http=http)
    if processor == "ucs":
        from refund_mcp.processors.ucs.adapter import UcsProcessor

        return UcsProcessor(
            account=account,
            url=config.url,
            connector=config.connector,
            connector_config=config.connector_config,
            webhook_secret=config.webhook_secret,
            merchant_id=config.merchant_id,
            tenant_id=config.tenant_id,
            root_certificates=Path(config.ca_file).read_bytes() if config.ca_file else None,
            deadline_seconds=config.deadline_seconds,
            connect_seconds=config.connect_seconds,
        )
    raise ValueError(f"unknown processor {processor!r}")


class ProcessorRegistry:
    def __init__(self, processors: dict[str, Processor], kinds: dict[str, str] | None = None) -> None:
        self._processors = processors
        self._kinds = kinds or {name: name for name in processors}

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http: object | None = None, known_adyen: KnownTransactions | None = None
    ) -> ProcessorRegistry:
        """`http` (an httpx2.AsyncClient) is shared by every HTTP adapter when given, e.g. in tests."""
        built: dict[str, Processor] = {}
        kinds: dict[str, str] = {}
        for account, processor, config in settings.all_accounts():
            built[account] = build_processor(account, processor, config, http=http, known_adyen=known_adyen)
            kinds[account] = processor
        if settings.sandbox:
            from refund_mcp.processors.sandbox import SandboxProcessor

            built["sandbox"] = SandboxProcessor()
            kinds["sandbox"] = "sandbox"
        return cls(built, kinds)

    def names(self) -> list[str]:
        """Every account name."""
        return list(self._processors)

    def get(self, name: str) -> Processor | None:
        return self._processors.get(name)

    def kind(self, account: str) -> str:
        """The processor behind an account (`stripe@eu` -> stripe, `checkout` -> ucs)."""
        return self._kinds.get(account, account.partition("@")[0])

    def accounts_of(self, processor: str) -> list[str]:
        """The accounts of one processor, in configuration order."""
        return [name for name, kind in self._kinds.items() if kind == processor]

    def __contains__(self, name: object) -> bool:
        return name in self._processors

    async def aclose(self) -> None:
        for processor in self._processors.values():
            await processor.aclose()
