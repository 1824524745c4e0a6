"""The one interface every processor adapter implements.

Adapters talk to processors and return values; they never touch the store (the service
persists). Every failure is raised as a `ProcessorCallError` subclass whose `delivery`
says whether the request may have been acted on.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from datetime import datetime

from refund_mcp.domain.models import Capabilities, ProcessorRefund, ProcessorRefundRequest, TransactionInfo


class Processor(abc.ABC):
    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        """The original payment. Raises TransactionNotFound, NotSupported (no lookup API) or ProcessorCallError."""

    @abc.abstractmethod
    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        """Create a refund; repeating it with the same idempotency key must return the same refund."""

    @abc.abstractmethod
    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        """Current state of a refund. Raises RefundNotFound, NotSupported (no status API) or ProcessorCallError."""

    async def find_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund | None:
        """Search the processor for the refund refund-mcp created for `request` (matched by our refund id,
        `request.refund_id`, never by amount alone) among the payment's refunds, whatever idempotency key
        it was sent under. None means the processor authoritatively holds no such refund. Raises
        NotSupported where the processor cannot be searched (capabilities.refund_search is False), and
        ProcessorCallError when the search could not be completed (then nothing may be concluded)."""
        from refund_mcp.domain.errors import NotSupported

        raise NotSupported(f"{self.name} cannot be searched for a refund")

    def check_amount(self, amount_minor: int, currency: str) -> None:
        """Raise ValidationFailed when this processor cannot take the amount exactly in its own decimals
        (e.g. Stripe KWD not in whole hundredths, PayPal TWD with cents). Callable before anything is
        reserved; create_refund checks the same again before sending."""

    async def cancel_refund(self, processor_refund_id: str) -> ProcessorRefund:
        """Cancel a refund the processor accepted. Raises NotSupported where the processor has no such call."""
        from refund_mcp.domain.errors import NotSupported

        raise NotSupported(f"{self.name} cannot cancel a refund once it has accepted it")

    async def list_refunds(self, since: datetime) -> AsyncIterator[ProcessorRefund]:
        """Every refund the processor holds that was created at or after `since`, including refunds
        made outside refund-mcp (used by reconciliation). Raises NotSupported where the processor
        cannot list refunds, ProcessorCallError when a page cannot be read."""
        from refund_mcp.domain.errors import NotSupported

        raise NotSupported(f"{self.name} cannot list refunds")
        yield  # pragma: no cover - makes this an async generator like the real implementations

    async def aclose(self) -> None:
        """Release network resources (the shared HTTP client)."""
