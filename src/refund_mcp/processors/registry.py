"""Builds the configured processors from Settings. Adapter modules are imported only when used."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from refund_mcp.domain.models import TransactionInfo
from refund_mcp.processors.base import Processor
from refund_mcp.settings import Settings

KnownTransactions = Callable[[str], Awaitable[TransactionInfo | None]]


class ProcessorRegistry:
    def __init__(self, processors: dict[str, Processor]) -> None:
        self._processors = processors

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http: object | None = None, known_adyen: KnownTransactions | None = None
    ) -> ProcessorRegistry:
        """`http` (an httpx2.AsyncClient) is shared by every adapter when given, e.g. in tests."""
        built: dict[str, Processor] = {}
        if settings.stripe is not None:
            from refund_mcp.processors.stripe import StripeProcessor

            built["stripe"] = StripeProcessor(api_key=settings.stripe.api_key, api_base=settings.stripe.api_base, http=http)
        if settings.paypal is not None:
            from refund_mcp.processors.paypal import PayPalProcessor

            built["paypal"] = PayPalProcessor(
                client_id=settings.paypal.client_id,
                client_secret=settings.paypal.client_secret,
                api_base=settings.paypal.api_base,
                http=http,
            )
        if settings.adyen is not None:
            from refund_mcp.processors.adyen import AdyenProcessor

            built["adyen"] = AdyenProcessor(
                api_key=settings.adyen.api_key,
                merchant_account=settings.adyen.merchant_account,
                api_base=settings.adyen.api_base,
                http=http,
                known_transactions=known_adyen,
            )
        if settings.square is not None:
            from refund_mcp.processors.square import SquareProcessor

            built["square"] = SquareProcessor(
                access_token=settings.square.access_token, api_base=settings.square.api_base, http=http
            )
        if settings.sandbox:
            from refund_mcp.processors.sandbox import SandboxProcessor

            built["sandbox"] = SandboxProcessor()
        return cls(built)

    def names(self) -> list[str]:
        return list(self._processors)

    def get(self, name: str) -> Processor | None:
        return self._processors.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._processors

    async def aclose(self) -> None:
        for processor in self._processors.values():
            await processor.aclose()
