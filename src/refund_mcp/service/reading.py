"""The read-only tools: lookups, policy checks and previews, refund status and lists, trails, the policy text.

Their reads run in `db.read()`; what they write (the payment as the processor just described it, the
audit record of the call) goes in one short `db.write()` apart, so a reader never holds the write
transaction while it computes. A preview is the exception: it evaluates the processor's fresh answer
inside a write transaction it then rolls back, so nothing of it is recorded.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import ProcessorCallError, RefundError, ValidationFailed
from refund_mcp.domain.models import RefundStatus
from refund_mcp.policy import PolicyHolder
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import identity, rendering, views
from refund_mcp.service.confirmation import Prefetched, Preview
from refund_mcp.service.gate import Gate
from refund_mcp.service.recording import Recorder
from refund_mcp.service.reserving import Evaluation, RefundInput, Reserver, policy_view, validate_input
from refund_mcp.service.resolving import Fetched, Resolver
from refund_mcp.service.rows import refund_row
from refund_mcp.service.untrusted import untrusted_tree
from refund_mcp.store import queries
from refund_mcp.store.database import Database

# What a caller wrote for themselves: shown in a trail only to that same actor.
PRIVATE_REQUEST_FIELDS = ("note", "customer_ref", "idempotency_key")


class Reads:
    """The tools that change no refund: each gated by the policy and audited."""

    def __init__(
        self,
        db: Database,
        processors: ProcessorRegistry,
        policy: PolicyHolder,
        gate: Gate,
        resolver: Resolver,
        reserver: Reserver,
        recorder: Recorder,
    ) -> None:
        self.db = db
        self.processors = processors
        self.policy = policy
        self.gate = gate
        self.resolver = resolver
        self.reserver = reserver
        self.recorder = recorder

    # ----------------------------------------------------------------- lookup

    async def lookup_transaction(self, actor: str, transaction_id: str, processor: str | None = None) -> views.TransactionView:
        request = {"transaction_id": transaction_id, "processor": processor}
        await self.gate.guard_tool("lookup_transaction", actor, request)
        try:
            named, resolved = await self.resolver.route(transaction_id, processor)

            async def record(fetched: Fetched) -> Fetched:
                async with self.db.write() as conn:
                    await self.resolver.confirm_name(conn, fetched.unchecked, fetched.ref)
                    await self.resolver.known_transaction(conn, fetched.ref, fetched.info)
                    await audit.append(
                        conn, AuditEntry(actor=actor, action="transaction.lookup", target=fetched.ref.canonical, outcome="ok", request=request)
                    )
                return fetched

            fetched = await self.resolver.on_canonical(await self.resolver.fetch_named(named, resolved=resolved), record)
            async with self.db.read() as conn:
                txn = await self.resolver.recorded_transaction(conn, fetched.ref)
                return await self._transaction_view(conn, txn, source="processor" if fetched.info else "records", message=fetched.note)
        except RefundError as exc:
            await self.gate.audit_error(actor, "transaction.lookup", transaction_id[:200], exc, request)
            raise

    async def _transaction_view(self, conn: AsyncConnection, txn: Row[Any], *, source: str, message: str | None = None) -> views.TransactionView:
        bal = await queries.balance(conn, txn)
        refunds = await queries.refunds_for_transaction(conn, txn.id)
        return rendering.transaction_view(txn, bal, refunds, processor_kind=self.processors.kind(txn.processor), source=source, message=message)

    # ----------------------------------------------------------------- check_refund_policy and the preview

    async def check_refund_policy(
        self, actor: str, transaction_id: str, reason: str, amount_minor: int | None = None, currency: str | None = None
    ) -> views.PolicyCheckView:
        request = {"transaction_id": transaction_id, "reason": reason, "amount_minor": amount_minor, "currency": currency}
        await self.gate.guard_tool("check_refund_policy", actor, request)
        req = RefundInput(transaction_id=transaction_id, reason=reason, amount_minor=amount_minor, currency=currency)
        try:
            cur, _ = validate_input(req)
            named, resolved = await self.resolver.route(transaction_id)

            async def record(fetched: Fetched) -> Fetched:
                if fetched.info is not None:  # without an answer, the name was resolved while fetching
                    async with self.db.write() as conn:
                        await self.resolver.confirm_name(conn, fetched.unchecked, fetched.ref)
                        await self.resolver.record_transaction(conn, fetched.ref, fetched.info)
                return fetched

            fetched = await self.resolver.on_canonical(await self.resolver.fetch_named(named, resolved=resolved), record)
            async with self.db.read() as conn:
                txn = await self.resolver.recorded_transaction(conn, fetched.ref)
                ev = await self.reserver.evaluate(conn, actor, "check_refund_policy", txn, req, cur)
            view = policy_view(ev, self.policy)
            async with self.db.write() as conn:
                await audit.append(
                    conn,
                    AuditEntry(
                        actor=actor,
                        action="policy.check",
                        target=ev.txn.id,
                        outcome=view.decision,
                        request=request,
                        decision={"outcome": view.decision, "rules": [r.name for r in view.rules if r.outcome == view.decision], "policy_version": view.policy_version},
                    ),
                )
            return view
        except RefundError as exc:
            await self.gate.audit_error(actor, "policy.check", transaction_id[:200], exc, request)
            raise

    def may_need_confirmation(self, amount_minor: int | None) -> bool:
        """Whether the policy could ask to confirm this refund; False lets create_refund skip the preview.

        Confirmation applies strictly above a threshold, so an amount at or below every threshold of every
        currency never needs one; an omitted amount (the whole balance) always has to be previewed, and so
        does any amount when a confirmation map leaves out a refundable currency (it asks for all of them)."""
        policy = self.policy.engine().loaded.policy
        maps = [
            source.confirmation.above
            for source in (policy, *policy.rules, *policy.actors.values())
            if source.confirmation is not None
        ]
        if not maps:
            return False
        refundable = set((policy.limits.per_refund if policy.limits else None) or {})
        if any(not refundable <= set(above) for above in maps):
            return True
        thresholds = [threshold for above in maps for threshold in above.values()]
        return amount_minor is None or amount_minor > min(thresholds)

    async def preview(self, actor: str, req: RefundInput) -> Preview | None:
        """The decision create_refund would reach now, without recording anything; None if it cannot be evaluated.

        Used to decide whether to ask the human to confirm before the call proceeds, and what to show them:
        the amount and payment come from our records here. The real decision is taken again under the lock,
        and a confirmation holds only for exactly the terms this preview showed (see service/confirmation.py).
        """
        try:
            cur, _ = validate_input(req)
            ref = await self.resolver.resolve_transaction_id(req.transaction_id, req.processor)
            requested = ref.canonical
            info, note = await self.resolver.fetch_transaction(ref)
            ref, info = self.resolver.as_named_by_processor(ref, info)
            prefetched = Prefetched(requested, info, note, time.monotonic())
            # A write transaction, because the processor's fresh answer is evaluated as if recorded.
            async with self.db.write() as conn:
                txn = await self.resolver.known_transaction(conn, ref, info)
                ev = await self.reserver.evaluate(conn, actor, "create_refund", txn, req, cur)
                # Nothing is recorded by a preview: rolling back undoes the transaction upsert too.
                raise _Rollback(ev)
        except _Rollback as done:
            return Preview(policy_view(done.evaluation, self.policy), prefetched)
        except RefundError:
            return None

    # ----------------------------------------------------------------- status, list, trails

    async def get_refund_status(self, actor: str, refund_id: str, refresh: bool = True) -> views.RefundView:
        request = {"refund_id": refund_id, "refresh": refresh}
        await self.gate.guard_tool("get_refund_status", actor, request)
        try:
            async with self.db.read() as conn:
                row = await refund_row(conn, refund_id)
            status = RefundStatus(row.status)
            processor = self.processors.get(row.processor)
            note: str | None = None
            if refresh and not status.is_final and row.processor_refund_id and processor is not None:
                if not processor.capabilities.status_api:
                    note = f"{row.processor} has no refund status API: this is refund-mcp's record, updated by its webhooks."
                else:
                    try:
                        answer = await processor.get_refund(row.processor_refund_id)
                    except ProcessorCallError as exc:
                        note = f"Could not refresh from {row.processor} ({exc.code}); showing refund-mcp's record."
                        # The processor call took time: show the record as it is now.
                        async with self.db.read() as conn:
                            row = await refund_row(conn, refund_id)
                    else:
                        async with self.db.write() as conn:
                            return await self.recorder.apply_processor_state(conn, refund_id, answer, actor=actor, action="refund.status")
            async with self.db.write() as conn:
                await audit.append(conn, AuditEntry(actor=actor, action="refund.status", target=refund_id, outcome=row.status, request=request))
            view = rendering.refund_view(row)
            view.message = note or rendering.status_message(view)
            return view
        except RefundError as exc:
            await self.gate.audit_error(actor, "refund.status", refund_id[:40], exc, request)
            raise

    async def list_refunds(
        self,
        actor: str,
        *,
        status: str | None = None,
        processor: str | None = None,
        transaction_id: str | None = None,
        since: datetime | None = None,
        limit: int = 25,
        cursor: str | None = None,
    ) -> views.RefundPage:
        request = {"status": status, "processor": processor, "transaction_id": transaction_id, "since": since, "limit": limit, "cursor": cursor}
        await self.gate.guard_tool("list_refunds", actor, request)
        try:
            after = decode_cursor(cursor) if cursor else None
            if since is not None and since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            async with self.db.read() as conn:
                txn_ids: list[str] | None = None
                if transaction_id is not None:
                    # Any name of a payment lists its refunds: they are recorded under its canonical id.
                    prefix, sep, rest = transaction_id.partition(":")
                    if sep and rest:
                        txn_ids = [await identity.canonical_of(conn, prefix, rest) or transaction_id]
                    else:
                        txn_ids = [row.id for row in await queries.find_transactions_by_bare_id(conn, transaction_id)]
                        txn_ids += await identity.canonical_ids_of_bare(conn, transaction_id)
                # A processor's name lists all its accounts; an account name, that account.
                accounts = self.resolver.candidates(processor) if processor is not None and processor not in self.processors else None
                rows = await queries.list_refunds(
                    conn, status=status, processor=accounts or processor, transaction_ids=txn_ids, since=since, after=after, limit=limit + 1
                )
            async with self.db.write() as conn:
                await audit.append(conn, AuditEntry(actor=actor, action="refund.list", target=None, outcome="ok", request=request))
            page = rows[:limit]
            next_cursor = encode_cursor(page[-1]) if len(rows) > limit and page else None
            return views.RefundPage(refunds=[rendering.refund_view(row) for row in page], next_cursor=next_cursor)
        except RefundError as exc:
            await self.gate.audit_error(actor, "refund.list", None, exc, request)
            raise

    async def refund_with_trail(self, refund_id: str) -> dict[str, Any]:
        """A refund with its whole audit trail, for operators (the CLI)."""
        async with self.db.read() as conn:
            row = await refund_row(conn, refund_id)
            trail = await audit.trail(conn, refund_id)
        return {"refund": rendering.refund_view(row).model_dump(mode="json"), "audit_trail": trail}

    async def refund_for_agent(self, actor: str, refund_id: str) -> dict[str, Any]:
        """The refunds://refund/{id} resource: gated and audited like get_refund_status, which it mirrors.

        The trail is shown without other actors' private request fields, and its text made safe."""
        request = {"refund_id": refund_id}
        await self.gate.guard_tool("get_refund_status", actor, request)
        try:
            async with self.db.read() as conn:
                row = await refund_row(conn, refund_id)
                trail = await audit.trail(conn, refund_id)
            async with self.db.write() as conn:
                await audit.append(conn, AuditEntry(actor=actor, action="refund.read", target=refund_id, outcome="ok", request=request))
        except RefundError as exc:
            await self.gate.audit_error(actor, "refund.read", refund_id[:40], exc, request)
            raise
        shown = [untrusted_tree(_without_private_fields(record, actor)) for record in trail]
        return {"refund": rendering.refund_view(row).model_dump(mode="json"), "audit_trail": shown}

    async def read_policy(self, actor: str) -> str:
        """The refunds://policy resource: gated and audited like check_refund_policy, which it mirrors."""
        request = {"resource": "refunds://policy"}
        await self.gate.guard_tool("check_refund_policy", actor, request)
        engine = self.policy.engine()
        async with self.db.write() as conn:
            await audit.append(conn, AuditEntry(actor=actor, action="policy.read", target=None, outcome="ok", request=request, detail={"policy_version": engine.version}))
        return f"# policy version {engine.version}\n{engine.loaded.text}"

    async def record_prompt(self, actor: str, name: str) -> None:
        """A prompt is gated by the first tool its procedure uses (lookup_transaction) and audited."""
        request = {"prompt": name}
        await self.gate.guard_tool("lookup_transaction", actor, request)
        async with self.db.write() as conn:
            await audit.append(conn, AuditEntry(actor=actor, action="prompt.get", target=None, outcome="ok", request=request))


def _without_private_fields(record: dict[str, Any], viewer: str) -> dict[str, Any]:
    request = record.get("request")
    if record.get("actor") == viewer or not isinstance(request, dict):
        return record
    return {**record, "request": {key: value for key, value in request.items() if key not in PRIVATE_REQUEST_FIELDS}}


class _Rollback(Exception):
    def __init__(self, evaluation: Evaluation) -> None:
        self.evaluation = evaluation


def encode_cursor(row: Row[Any]) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, refund_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when = datetime.fromisoformat(created)
        if not isinstance(refund_id, str) or when.tzinfo is None:
            raise ValueError
        return when, refund_id
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not one that list_refunds returned", fields=["cursor"]) from exc
