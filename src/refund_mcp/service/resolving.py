"""Which payment a caller means, and what its processor says about it now.

The contract's id rules (`processor:id`, account names such as `stripe@eu`, bare ids routed by prefix or
by our records), the payment's canonical id (service/identity.py), and the processor lookup with its
circuit-breaker fallback to our records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

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

T = TypeVar("T")


@dataclass(frozen=True)
class TransactionRef:
    processor: str
    bare_id: str

    @property
    def canonical(self) -> str:
        return f"{self.processor}:{self.bare_id}"


@dataclass(frozen=True)
class Fetched:
    """What the processor said about a payment, and under which name to record it."""

    ref: TransactionRef  # as the processor names the payment (else as resolved through our records)
    info: TransactionInfo | None  # None: the processor could not answer
    note: str | None
    # The name asked about, not yet resolved through our aliases (`confirm_name`); only ever with an answer:
    # without one the name is resolved before our records are read.
    unchecked: TransactionRef | None


class NamedByAlias(Exception):
    """The name asked about is a recorded alias of another payment than the processor's answer names."""

    def __init__(self, canonical: TransactionRef) -> None:
        super().__init__(canonical.canonical)
        self.canonical = canonical


async def _canonical_in(conn: AsyncConnection, ref: TransactionRef) -> TransactionRef:
    canonical = await identity.canonical_of(conn, ref.processor, ref.bare_id)
    return ref if canonical is None else TransactionRef(ref.processor, canonical.partition(":")[2])


class Resolver:
    """Routes a caller's transaction id to one account and canonical id, and looks the payment up there."""

    def __init__(self, db: Database, processors: ProcessorRegistry, breaker: CircuitBreaker, now: Callable[[], datetime]) -> None:
        self.db = db
        self.processors = processors
        self.breaker = breaker
        self.now = now

    async def resolve_transaction_id(self, transaction_id: str, processor: str | None = None) -> TransactionRef:
        """Apply the contract's id rules, find the one account a payment belongs to, then resolve the name
        to the payment's canonical id there (service/identity.py)."""
        ref, canonical = await self.route(transaction_id, processor)
        return ref if canonical else await self._canonical_ref(ref)

    async def route(self, transaction_id: str, processor: str | None = None) -> tuple[TransactionRef, bool]:
        """Apply the contract's id rules and find the one account a payment belongs to: (the name there,
        whether it is already the payment's canonical id, found through our records). A name given with
        its account is not yet resolved through the aliases (`resolve_transaction_id` does that).

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
            return await self._one_account(candidates, rest), False
        if processor is not None:
            return await self._one_account(self.candidates(processor), raw), False
        if raw.startswith(STRIPE_PREFIXES) and self.processors.accounts_of("stripe"):
            return await self._one_account(self.processors.accounts_of("stripe"), raw), False
        async with self.db.read() as conn:
            known = [row.id for row in await queries.find_transactions_by_bare_id(conn, raw) if row.processor in configured]
            known += [
                canonical for canonical in await identity.canonical_ids_of_bare(conn, raw)
                if canonical.partition(":")[0] in configured
            ]
        if len(known) == 1:
            account, _, canonical_bare = known[0].partition(":")
            return TransactionRef(account, canonical_bare), True
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
            return await _canonical_in(conn, ref)

    @staticmethod
    async def confirm_name(conn: AsyncConnection, unchecked: TransactionRef | None, ref: TransactionRef) -> None:
        """The alias check a `fetch_named` answer (`Fetched.unchecked`) left to the write that records it: its
        first statement, before the payment's row `ref` is written or locked. A name that is a recorded alias
        of another payment than `ref` raises NamedByAlias (roll back, then `on_canonical` starts again)."""
        if unchecked is None:
            return
        canonical = await _canonical_in(conn, unchecked)
        if canonical != unchecked and canonical != ref:
            raise NamedByAlias(canonical)

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
        """Ask the processor about a resolved name; fall back to our record when it cannot answer. Returns
        (fresh info, note).

        Raises:
            ProcessorUnavailable: the processor cannot answer and we have no record of the payment:
                that is an outage, never a payment that does not exist.
        """
        fetched = await self._ask(ref, resolved=True)
        return fetched.info, fetched.note

    async def fetch_named(self, ref: TransactionRef, *, resolved: bool = False, prefetched: Prefetched | None = None) -> Fetched:
        """The processor's answer about a payment by the name `route` gave, without first resolving that name
        through our aliases in a transaction of its own. When the processor answers, the check is left to
        the write that records the answer (`confirm_name`); when it does not, the name is resolved here,
        before our records stand in for the answer. The ref comes back as the processor names the payment."""
        # A confirmation preview of this same call looked the payment up moments ago: reuse that answer
        # instead of asking the processor twice for one tool call.
        if prefetched is not None and prefetched.usable_for(ref.canonical):
            if prefetched.info is None:  # our records stand in: resolve the name before they are read
                return Fetched(ref if resolved else await self._canonical_ref(ref), None, prefetched.note, None)
            named, info = self.as_named_by_processor(ref, prefetched.info)
            return Fetched(named, info, prefetched.note, None if resolved else ref)
        return await self._ask(ref, resolved=resolved)

    async def on_canonical(self, fetched: Fetched, write: Callable[[Fetched], Awaitable[T]]) -> T:
        """Run `write` (which calls `confirm_name` first); when the name asked about turned out to be an
        alias of another payment, ask the processor about that payment and run it again, as if the name had
        been resolved before asking."""
        try:
            return await write(fetched)
        except NamedByAlias as alias:
            return await write(await self._ask(alias.canonical, resolved=True))

    async def _ask(self, ref: TransactionRef, *, resolved: bool) -> Fetched:
        processor = self.processor(ref.processor)
        if self.breaker.is_open(ref.processor):
            ref = await self._require_record(ref, "is unavailable right now (too many recent failures)", resolve=not resolved)
            return Fetched(ref, None, f"{ref.processor} is unavailable right now; showing refund-mcp's records", None)
        try:
            info = await processor.lookup_transaction(ref.bare_id)
            info = replace(info, processor=ref.processor)  # recorded under the account, e.g. stripe@eu
        except ProcessorCallError as exc:
            if exc.retryable:
                self.breaker.record_failure(ref.processor)
                ref = await self._require_record(ref, f"could not be reached ({exc.code})", resolve=not resolved)
                return Fetched(ref, None, f"{ref.processor} could not be reached ({exc.code}); showing refund-mcp's records", None)
            raise
        except (TransactionNotFound, NotSupported):
            # Adyen cannot be queried: a transaction it told us about by webhook is still known.
            if not resolved:
                canonical = await self._canonical_ref(ref)
                if canonical != ref:  # an alias: ask about the payment's own id, as a resolved name would have
                    return await self._ask(canonical, resolved=True)
            return Fetched(ref, None, None, None)
        self.breaker.record_success(ref.processor)
        named, info = self.as_named_by_processor(ref, info)
        return Fetched(named, info, None, None if resolved else ref)

    async def _require_record(self, ref: TransactionRef, what: str, *, resolve: bool = False) -> TransactionRef:
        """The name our records know the payment by (`resolve`: through the aliases first); an outage error
        when they do not know it."""
        async with self.db.read() as conn:
            if resolve:
                ref = await _canonical_in(conn, ref)
            known = await queries.get_transaction(conn, ref.canonical)
        if known is None:
            raise ProcessorUnavailable(
                f"{ref.processor} {what} and {ref.canonical} is not in refund-mcp's records yet, so it cannot be "
                "checked now. This says nothing about whether the payment exists; try again later.",
                processor=ref.processor,
            )
        return ref

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
