"""What a human confirmed, carried from the question to the reservation.

A confirmation is asked before create_refund takes its lock, so the refund it describes is a preview:
the balance at that moment. Between the question and the reservation the balance can change (a
parked refund cancelled, another refund made), and with the amount omitted the reservation would
then be for an amount nobody confirmed. So the terms shown to the human (the canonical payment, the
amount, the currency, the reason; all from refund-mcp's records, never from the caller's words) travel
with the answer as `ConfirmedTerms`, and the locked reservation must be exactly those terms or nothing
moves.

A `Preview` belongs to one tool call: it is handed from the confirmation resolver to the same call's
create_refund, never kept in a shared cache where another call could pick it up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from refund_mcp.domain.errors import ConfirmationDeclined
from refund_mcp.domain.models import TransactionInfo
from refund_mcp.domain.money import format_display
from refund_mcp.service.views import PolicyCheckView

# A preview's processor answer may stand in for create_refund's own lookup only this soon after it was
# taken (one tool call without a human in between); anything older is asked again.
PREFETCH_FRESH_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ConfirmedTerms:
    """The refund the human said yes to: canonical payment id, amount in minor units, currency, reason."""

    transaction_id: str
    amount_minor: int
    currency: str
    reason: str

    def differs_from(self, transaction_id: str, amount_minor: int, currency: str, reason: str) -> bool:
        return (self.transaction_id, self.amount_minor, self.currency, self.reason) != (
            transaction_id,
            amount_minor,
            currency,
            reason,
        )

    def refusal(self, transaction_id: str, amount_minor: int, currency: str) -> ConfirmationDeclined:
        """The error for a reservation that would not be what was confirmed: nothing moved, ask again."""
        return ConfirmationDeclined(
            f"the human confirmed {format_display(self.amount_minor, self.currency)} on {self.transaction_id}, but the "
            f"refund would now be {format_display(amount_minor, currency)} on {transaction_id} (the balance changed while "
            "they were asked); nothing was refunded. Call create_refund again and the human will be asked about the new amount."
        )


@dataclass(frozen=True, slots=True)
class Prefetched:
    """A processor's answer about a payment, taken by a preview during the same tool call."""

    canonical_id: str
    info: TransactionInfo | None
    note: str | None
    taken_at: float  # time.monotonic()

    def usable_for(self, canonical_id: str) -> bool:
        return canonical_id == self.canonical_id and time.monotonic() - self.taken_at < PREFETCH_FRESH_SECONDS


@dataclass(frozen=True, slots=True)
class Preview:
    """The decision create_refund would reach now, and the lookup it was based on."""

    view: PolicyCheckView
    prefetched: Prefetched

    def terms(self, reason: str) -> ConfirmedTerms:
        """The terms a confirmation question built from this preview shows."""
        return ConfirmedTerms(self.view.transaction_id, self.view.amount_minor, self.view.currency, reason)
