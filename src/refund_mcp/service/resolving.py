"""Which payment a caller means, and what its processor says about it now.

The contract's id rules (`processor:id`, account names such as `stripe@eu`, bare ids routed by prefix or
by our records), the payment's canonical id (service/identity.py), and the processor lookup with its
circuit-breaker fallback to our records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.domain.errors import NotSupported, ProcessorCallError, ProcessorUnavailable, TransactionNotFound, ValidationFailed
from refund_mcp.domain.models import TransactionInfo
from refund_mcp.processors.base import Processor
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import identity
from refund_mcp.service.circuit import CircuitBreaker
from refund_mcp.service.confirmation import Prefetched
from refund_mcp.store import queries
from refund_mcp.store.database import Database

STRIPE_PREFIXES = ("ch_", "pi_", "py_")
# Names that are a processor even when not configured here, so "paypal:ID" is an error rather than a bare id.
KNOWN_PROCESSOR_NAMES = ("stripe", "paypal", "adyen", "square", "sandbox", "ucs")


@dataclass(frozen=True)
class TransactionRef:
    processor: str
    bare_id: str

    @property
    def canonical(self) -> str:
        return f"{self.processor}:{self.bare_id}"


class Resolver:
    """Routes a caller's transaction id to one account and canonical id, and looks the payment up there."""

    def __init__(self, db: Database, processors: ProcessorRegistry, breaker: CircuitBreaker, now: Callable[[], datetime]) -> None:
        self.db = db
        self.processors = processors
        self.breaker = breaker
        self.now = now

    async def resolve_transaction_id(self, transaction_id: str, processor: str | None = None) -> TransactionRef:
        """Apply the contract's id rules, find the one account a payment belongs to, then resolve the name
        to the payment's canonical id there (service/identity.py).

        `processor` (and a `prefix:` on the id) may name an account (`stripe@eu`, `checkout`) or a
        processor (`stripe`). A processor with several accounts is resolved through our records; when
        they cannot tell, the answer is a validation error listing the candidates, never a guess."""
        configured = self.processors.names()
        raw = transaction_id.strip()
        if not raw or len(raw) > 200 or any(ch.isspace() or ord(ch) < 32 for ch in raw):
            raise ValidationFailed("transaction_id must be a non-empty id without spaces", fields=["transaction_id"])
        if processor is not None and not self._names_accounts(processor):
            raise ValidationFailed(
                f"processor {processor[:40]!r} is not configured; configured: {', '.join(configured)}", fields=["processor"]
            )
        prefix, sep, rest = raw.partition(":")
        if sep and (self._names_accounts(prefix) or prefix in KNOWN_PROCESSOR_NAMES or "@" in prefix):
            if not self._names_accounts(prefix):
                raise ValidationFailed(
                    f"processor {prefix[:40]!r} is not configured; configured: {', '.join(configured)}", fields=["transaction_id"]
                )
            if processor is not None and not (set(self.candidates(prefix)) & set(self.candidates(processor))):
                raise ValidationFailed(
                    f"transaction_id names {prefix} but processor says {processor}", fields=["transaction_id", "processor"]
                )
            if not rest:
                raise ValidationFailed("transaction_id has no id after the processor name", fields=["transaction_id"])
            candidates = [name for name in self.candidates(prefix) if processor is None or name in self.candidates(processor)]
            return await self._canonical_ref(await self._one_account(candidates, rest))
        if processor is not None:
            return await self._canonical_ref(await self._one_account(self.candidates(processor), raw))
        if raw.startswith(STRIPE_PREFIXES) and self.processors.accounts_of("stripe"):
            return await self._canonical_ref(await self._one_account(self.processors.accounts_of("stripe"), raw))
        async with self.db.read() as conn:
            known = [row.id for row in await queries.find_transactions_by_bare_id(conn, raw) if row.processor in configured]
            known += [
                canonical for canonical in await identity.canonical_ids_of_bare(conn, raw)
                if canonical.partition(":")[0] in configured
            ]
        if len(known) == 1:
            account, _, canonical_bare = known[0].partition(":")
            return TransactionRef(account, canonical_bare)
        if len(known) > 1:
            raise self._ambiguous([canonical.partition(":")[0] for canonical in known], raw)
        raise ValidationFailed(
            f"cannot tell which processor {raw[:40]!r} belongs to; write it as processor:id or pass processor "
            f"(configured: {', '.join(configured)})",
            fields=["transaction_id"],
        )

    def _names_accounts(self, name: str) -> bool:
        return bool(self.candidates(name))

    def candidates(self, name: str) -> list[str]:
        """The accounts a name stands for: itself when it is an account, else every account of that processor."""
        if name in self.processors:
            return [name]
        return self.processors.accounts_of(name)

    async def _one_account(self, candidates: list[str], bare_id: str) -> TransactionRef:
        """The account among `candidates` that holds `bare_id`: the only one, or the only one our records know."""
        if len(candidates) == 1:
            return TransactionRef(candidates[0], bare_id)
        async with self.db.read() as conn:
            known = {row.processor for row in await queries.find_transactions_by_bare_id(conn, bare_id)}
            known |= {canonical.partition(":")[0] for canonical in await identity.canonical_ids_of_bare(conn, bare_id)}
        known &= set(candidates)
        if len(known) == 1:
            return TransactionRef(known.pop(), bare_id)
        raise self._ambiguous(candidates, bare_id)

    @staticmethod
    def _ambiguous(candidates: list[str], bare_id: str) -> ValidationFailed:
        listed = ", ".join(f"{name}:{bare_id[:40]}" for name in candidates)
        return ValidationFailed(
            f"{bare_id[:40]!r} could belong to several accounts; name the account: {listed}", fields=["transaction_id"]
        )

    async def _canonical_ref(self, ref: TransactionRef) -> TransactionRef:
        """The payment's canonical id when this name is a recorded alias of it; else the name as given."""
        async with self.db.read() as conn:
            canonical = await identity.canonical_of(conn, ref.processor, ref.bare_id)
        return ref if canonical is None else TransactionRef(ref.processor, canonical.partition(":")[2])

    @staticmethod
    def as_named_by_processor(ref: TransactionRef, info: TransactionInfo | None) -> tuple[TransactionRef, TransactionInfo | None]:
        """Re-key to the id the processor's answer calls canonical, keeping the name asked about as an alias."""
        if info is None or info.transaction_id == ref.bare_id:
            return ref, info
        return TransactionRef(ref.processor, info.transaction_id), identity.with_requested_name(info, ref.bare_id)

    def processor(self, name: str) -> Processor:
        processor = self.processors.get(name)
        if processor is None:
            raise ValidationFailed(f"processor {name!r} is not configured", fields=["processor"])
        return processor

    async def fetch_transaction(self, ref: TransactionRef) -> tuple[TransactionInfo | None, str | None]:
        """Ask the processor; fall back to our record when it cannot answer. Returns (fresh info, note).

        Raises:
            ProcessorUnavailable: the processor cannot answer and we have no record of the payment:
                that is an outage, never a payment that does not exist.
        """
        processor = self.processor(ref.processor)
        if self.breaker.is_open(ref.processor):
            await self._require_record(ref, "is unavailable right now (too many recent failures)")
            return None, f"{ref.processor} is unavailable right now; showing refund-mcp's records"
        try:
            info = await processor.lookup_transaction(ref.bare_id)
            info = replace(info, processor=ref.processor)  # recorded under the account, e.g. stripe@eu
        except ProcessorCallError as exc:
            if exc.retryable:
                self.breaker.record_failure(ref.processor)
                await self._require_record(ref, f"could not be reached ({exc.code})")
                return None, f"{ref.processor} could not be reached ({exc.code}); showing refund-mcp's records"
            raise
        except (TransactionNotFound, NotSupported):
            # Adyen cannot be queried: a transaction it told us about by webhook is still known.
            return None, None
        self.breaker.record_success(ref.processor)
        return info, None

    async def _require_record(self, ref: TransactionRef, what: str) -> None:
        async with self.db.read() as conn:
            known = await queries.get_transaction(conn, ref.canonical)
        if known is None:
            raise ProcessorUnavailable(
                f"{ref.processor} {what} and {ref.canonical} is not in refund-mcp's records yet, so it cannot be "
                "checked now. This says nothing about whether the payment exists; try again later.",
                processor=ref.processor,
            )

    async def fetch_transaction_once(self, ref: TransactionRef, prefetched: Prefetched | None) -> tuple[TransactionInfo | None, str | None]:
        # A confirmation preview of this same call looked the payment up moments ago: reuse that answer
        # instead of asking the processor twice for one tool call.
        if prefetched is not None and prefetched.usable_for(ref.canonical):
            return prefetched.info, prefetched.note
        return await self.fetch_transaction(ref)

    async def record_transaction(self, conn: AsyncConnection, ref: TransactionRef, info: TransactionInfo | None) -> Row[Any] | None:
        """Write what the processor just said about the payment, and the other names it gave (a write).

        Returns the payment's row as written (locked on PostgreSQL until commit), or None when there was
        no answer to write."""
        if info is None:
            return None
        txn = await queries.upsert_transaction(conn, ref.canonical, info, self.now())
        await identity.record_aliases(conn, ref.processor, info, self.now())
        return txn

    async def recorded_transaction(self, conn: AsyncConnection, ref: TransactionRef, *, lock: bool = False) -> Row[Any]:
        txn = await queries.get_transaction(conn, ref.canonical, lock=lock)
        if txn is None:
            hint = (
                " Adyen has no payment lookup API: its payments become known from AUTHORISATION/CAPTURE webhooks."
                if self.processors.kind(ref.processor) == "adyen"
                else ""
            )
            raise TransactionNotFound(f"{ref.canonical} was not found at {ref.processor}.{hint}")
        return txn

    async def known_transaction(self, conn: AsyncConnection, ref: TransactionRef, info: TransactionInfo | None, *, lock: bool = False) -> Row[Any]:
        """The payment's row after recording the processor's answer (`lock`: and locked for this transaction).

        With an answer, the upsert's own result is the row, and on PostgreSQL its lock the payment's lock;
        without one, our record is read (and locked when asked)."""
        recorded = await self.record_transaction(conn, ref, info)
        if recorded is not None:
            return recorded
        return await self.recorded_transaction(conn, ref, lock=lock)
