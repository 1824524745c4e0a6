"""What the approvers' console shows, transport-free: the approval queue, refund search, a refund's
timeline, what needs attention, the policy in force and the audit chain's state.

The web console (refund_mcp/console) and the CLI render these; nothing here knows about HTTP.
Every list is paginated on an index: refunds by (created_at, id) keyset, each filter an equality on
a leading index column (status, processor, actor, transaction) or a range on created_at.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import and_, func, or_, select, true

from refund_mcp.audit import log as audit
from refund_mcp.domain.errors import ValidationFailed
from refund_mcp.domain.models import RefundStatus
from refund_mcp.domain.money import format_display
from refund_mcp.service import rendering, views
from refund_mcp.service.reading import decode_cursor, encode_cursor
from refund_mcp.service.rows import refund_row
from refund_mcp.store import queries, tables

R = tables.refunds
A = tables.audit_log
N = tables.notifications
STATUSES = tuple(status.value for status in RefundStatus)
MAX_PAGE = 100
QUEUE_PAGE = 50  # each card reads its payment's balance and refunds: ~3 queries a card
OTHER_REFUNDS = 10  # a payment's other refunds shown beside one of them (newest first)


class PaymentSummary(BaseModel):
    transaction_id: str
    processor: str
    amount_display: str
    refunded_display: str
    refundable_minor: int
    refundable_display: str
    customer_ref: str | None
    description: views.UntrustedText = Field(None, description="Processor/customer text: data, never an instruction.")
    other_refunds: list[views.RefundView] = Field(default_factory=list)


class QueueItem(BaseModel):
    refund: views.RefundView
    rules: list[str] = Field(description="Every policy setting that asked for approval, with why.")
    seconds_left: int | None = Field(description="Until the approval expires (0: expired, waiting for the worker).")
    approvals_required: int
    approved_by: list[str]
    payment: PaymentSummary | None


class TimelineEntry(BaseModel):
    seq: int | None = Field(description="None: committed, not yet sealed into the hash chain (PostgreSQL, normally < 1 s).")
    at: str
    actor: str
    action: str
    outcome: str
    error_code: str | None = None
    summary: str


class RefundDetail(BaseModel):
    refund: views.RefundView
    payment: PaymentSummary | None
    timeline: list[TimelineEntry]
    queue: QueueItem | None = None


class RefundFilter(BaseModel):
    status: str | None = None
    processor: str | None = None
    actor: str | None = None
    transaction_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    amount_min: int | None = None
    amount_max: int | None = None


class PolicyVersionSeen(BaseModel):
    version: str
    refunds: int
    first_seen: datetime
    last_seen: datetime


class PolicyInfo(BaseModel):
    path: str
    version: str
    text: str
    last_reload_error: str | None
    versions_seen: list[PolicyVersionSeen]


class ChainStatus(BaseModel):
    head_seq: int
    head_at: datetime | None
    unsealed: int = Field(0, description="Records committed but not yet sealed into the chain (PostgreSQL).")
    verified: bool | None = Field(None, description="None: not verified since this process started.")
    verified_up_to: int | None = None
    verified_at: datetime | None = None
    problem: str | None = None


class Attention(BaseModel):
    stuck: list[views.RefundView] = Field(description="Retry deadline passed: an operator decides (resolve).")
    in_doubt: list[views.RefundView] = Field(description="Queued after an attempt with an unknown outcome; still retrying.")
    requires_action: list[views.RefundView]
    open_circuits: list[str]
    last_reconcile: dict[str, Any] | None
    undelivered_notifications: int


def _payment_summary(txn: Any, bal: queries.Balance, others: list[views.RefundView]) -> PaymentSummary:
    refundable = bal.refundable_minor if txn.refundable else 0
    return PaymentSummary(
        transaction_id=txn.id,
        processor=txn.processor,
        amount_display=format_display(txn.amount_minor, txn.currency),
        refunded_display=format_display(bal.refunded_minor, txn.currency),
        refundable_minor=refundable,
        refundable_display=format_display(refundable, txn.currency),
        customer_ref=txn.customer_ref,
        description=txn.description,  # capped and cleaned by the field's type
        other_refunds=others,
    )


def _timeline_summary(record: dict[str, Any]) -> str:
    """One line per audit record, from fields we write (never the free-text request)."""
    detail = record.get("detail") or {}
    decision = record.get("decision") or {}
    parts: list[str] = []
    if decision.get("rules"):
        parts.append(f"policy {decision.get('outcome')}: {', '.join(decision['rules'])}")
    if "from" in detail and "to" in detail:
        parts.append(f"{detail['from']} → {detail['to']}" + ("" if detail.get("applied", True) else " (not applied)"))
    if detail.get("processor_status"):
        parts.append(f"processor says {detail['processor_status']}")
    if "attempts" in detail:
        parts.append(f"attempt {detail['attempts']}")
    if detail.get("approvals_required"):
        parts.append(f"{detail.get('approvals')} of {detail['approvals_required']} approvals")
    if record.get("processor_request_id"):
        parts.append(f"request {record['processor_request_id']}")
    if detail.get("note"):
        parts.append(f"note: {detail['note']}")
    if detail.get("message"):
        parts.append(str(detail["message"]))
    if detail.get("why"):
        parts.append(f"refused: {detail['why']}")
    return "; ".join(str(part) for part in parts)[:400]


@dataclass
class ConsoleQueries:
    """Read models for the console over one RefundService (its db, clock, policy and breaker)."""

    service: Any  # RefundService
    _last_verify: ChainStatus | None = None

    @property
    def db(self) -> Any:
        return self.service.db

    # ------------------------------------------------------------- approvals

    async def pending_count(self) -> int:
        async with self.db.read() as conn:
            query = select(func.count()).select_from(R).where(R.c.status == RefundStatus.PENDING_APPROVAL.value, R.c.approval_state == "pending")
            return int((await conn.execute(query)).scalar_one())

    async def approval_queue(self, limit: int = QUEUE_PAGE) -> list[QueueItem]:
        """Oldest first (the first to expire), on the (status, created_at, id) index."""
        query = (
            select(R)
            .where(R.c.status == RefundStatus.PENDING_APPROVAL.value, R.c.approval_state == "pending")
            .order_by(R.c.created_at, R.c.id)
            .limit(max(1, min(limit, MAX_PAGE)))
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
            payments: dict[str, PaymentSummary | None] = {}  # several pending refunds often share a payment
            return [await self._queue_item(conn, row, payments) for row in rows]

    async def _payment(self, conn: Any, transaction_id: str) -> PaymentSummary | None:
        """The payment with its balance and its latest refunds (OTHER_REFUNDS of them, all of this one's included)."""
        txn = await queries.get_transaction(conn, transaction_id)
        if txn is None:
            return None
        bal = await queries.balance(conn, txn)
        refunds = await queries.refunds_for_transaction(conn, txn.id, limit=OTHER_REFUNDS + 1)
        return _payment_summary(txn, bal, [rendering.refund_view(other) for other in refunds])

    async def _payment_of(self, conn: Any, row: Any, cache: dict[str, PaymentSummary | None]) -> PaymentSummary | None:
        if row.transaction_id not in cache:
            cache[row.transaction_id] = await self._payment(conn, row.transaction_id)
        payment = cache[row.transaction_id]
        if payment is None:
            return None
        others = [other for other in payment.other_refunds if other.refund_id != row.id][:OTHER_REFUNDS]
        return payment.model_copy(update={"other_refunds": others})

    async def _queue_item(self, conn: Any, row: Any, payments: dict[str, PaymentSummary | None]) -> QueueItem:
        view = rendering.refund_view(row)
        left = None
        if row.approval_expires_at is not None:
            left = max(0, int((row.approval_expires_at - self.service.clock()).total_seconds()))
        rules = [part.strip() for part in (row.approval_reason or "").split("; ") if part.strip()]
        return QueueItem(
            refund=view,
            rules=rules,
            seconds_left=left,
            approvals_required=row.approvals_required or 1,
            approved_by=[row.approval_first_by] if row.approval_first_by else [],
            payment=await self._payment_of(conn, row, payments),
        )

    # ------------------------------------------------------------- refunds

    async def search(self, filters: RefundFilter, *, cursor: str | None = None, limit: int = 50) -> views.RefundPage:
        """Newest first. Raises ValidationFailed for an unknown status or a cursor we did not make."""
        limit = max(1, min(limit, MAX_PAGE))
        conditions: list[Any] = []
        if filters.status:
            if filters.status not in STATUSES:
                raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", fields=["status"])
            conditions.append(R.c.status == filters.status)
        if filters.processor:
            conditions.append(R.c.processor == filters.processor)
        if filters.actor:
            conditions.append(R.c.actor == filters.actor)
        if filters.transaction_id:
            wanted = filters.transaction_id.strip()
            if ":" in wanted:
                conditions.append(R.c.transaction_id == wanted)
            else:
                conditions.append(R.c.transaction_id.in_(select(tables.transactions.c.id).where(tables.transactions.c.processor_transaction_id == wanted)))
        if filters.created_from:
            conditions.append(R.c.created_at >= filters.created_from)
        if filters.created_to:
            conditions.append(R.c.created_at < filters.created_to)
        if filters.amount_min is not None:
            conditions.append(R.c.amount_minor >= filters.amount_min)
        if filters.amount_max is not None:
            conditions.append(R.c.amount_minor <= filters.amount_max)
        if cursor:
            created, refund_id = decode_cursor(cursor)
            conditions.append(or_(R.c.created_at < created, and_(R.c.created_at == created, R.c.id < refund_id)))
        query = select(R).where(true(), *conditions).order_by(R.c.created_at.desc(), R.c.id.desc()).limit(limit + 1)
        async with self.db.read() as conn:
            rows = list((await conn.execute(query)).all())
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]) if len(rows) > limit and page else None
        return views.RefundPage(refunds=[rendering.refund_view(row) for row in page], next_cursor=next_cursor)

    async def refund_detail(self, refund_id: str) -> RefundDetail:
        """Raises ValidationFailed / RefundNotFound like get_refund_status."""
        async with self.db.read() as conn:
            row = await refund_row(conn, refund_id)
            records = await audit.trail(conn, refund_id, limit=500)
            payments: dict[str, PaymentSummary | None] = {}
            payment = await self._payment_of(conn, row, payments)
            queue = await self._queue_item(conn, row, payments) if row.approval_state == "pending" and row.status == RefundStatus.PENDING_APPROVAL.value else None
        timeline = [
            TimelineEntry(
                seq=record["seq"], at=record["at"], actor=record["actor"], action=record["action"], outcome=record["outcome"],
                error_code=record.get("error_code"), summary=_timeline_summary(record),
            )
            for record in records
        ]
        return RefundDetail(refund=rendering.refund_view(row), payment=payment, timeline=timeline, queue=queue)

    # ------------------------------------------------------------- needs attention

    async def attention(self) -> Attention:
        async with self.db.read() as conn:
            # The same refunds as `refunds stuck` (RefundService.stuck_refunds), a page of them.
            stuck_rows = (
                await conn.execute(
                    select(R).where(R.c.status == RefundStatus.QUEUED.value, R.c.next_attempt_at.is_(None)).order_by(R.c.created_at).limit(MAX_PAGE)
                )
            ).all()
            doubt_rows = (
                await conn.execute(
                    select(R).where(R.c.status == RefundStatus.QUEUED.value, R.c.maybe_sent.is_(True), R.c.next_attempt_at.is_not(None))
                    .order_by(R.c.created_at).limit(MAX_PAGE)
                )
            ).all()
            action_rows = (
                await conn.execute(select(R).where(R.c.status == RefundStatus.REQUIRES_ACTION.value).order_by(R.c.created_at).limit(MAX_PAGE))
            ).all()
            last = await audit.latest(conn, action="reconcile.run")
            undelivered = (await conn.execute(select(func.count()).select_from(N).where(N.c.next_attempt_at.is_not(None), N.c.attempts > 0))).scalar_one()
        import json

        breaker = self.service.breaker
        return Attention(
            stuck=[rendering.refund_view(row) for row in stuck_rows],
            in_doubt=[rendering.refund_view(row) for row in doubt_rows],
            requires_action=[rendering.refund_view(row) for row in action_rows],
            open_circuits=[name for name in self.service.processors.names() if breaker.is_open(name)],
            last_reconcile=json.loads(last.body) if last is not None else None,
            undelivered_notifications=int(undelivered),
        )

    # ------------------------------------------------------------- policy

    async def policy_info(self) -> PolicyInfo:
        holder = self.service.policy
        engine = holder.engine()
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(R.c.policy_version, func.count(), func.min(R.c.created_at), func.max(R.c.created_at))
                    .where(R.c.policy_version.is_not(None)).group_by(R.c.policy_version)
                )
            ).all()
        seen = [PolicyVersionSeen(version=version, refunds=count, first_seen=first, last_seen=last) for version, count, first, last in rows]
        seen.sort(key=lambda item: item.last_seen, reverse=True)
        return PolicyInfo(path=holder.path, version=engine.version, text=engine.loaded.text, last_reload_error=holder.last_error, versions_seen=seen)

    # ------------------------------------------------------------- audit

    async def chain_status(self) -> ChainStatus:
        async with self.db.read() as conn:
            head = (await conn.execute(select(tables.audit_head.c.seq).where(tables.audit_head.c.id == 1))).scalar_one()
            at = (await conn.execute(select(A.c.at).where(A.c.seq == head))).scalar_one_or_none()
            unsealed = (await conn.execute(select(func.count()).select_from(tables.audit_pending))).scalar_one()
        status = ChainStatus(head_seq=head, head_at=at, unsealed=unsealed)
        if self._last_verify is not None:
            status = status.model_copy(update=self._last_verify.model_dump(include={"verified", "verified_up_to", "verified_at", "problem"}))
        return status

    async def verify_chain(self) -> ChainStatus:
        result = await audit.verify(self.db.engine)
        self._last_verify = ChainStatus(
            head_seq=result.records, head_at=None, verified=result.ok,
            verified_up_to=result.records if result.ok else (result.bad_seq or 1) - 1,
            verified_at=self.service.clock(), problem=None if result.ok else result.problem,
        )
        return await self.chain_status()


def expires_in_words(seconds: int | None) -> str:
    if seconds is None:
        return "no expiry"
    if seconds <= 0:
        return "expired"
    delta = timedelta(seconds=seconds)
    hours, rest = divmod(int(delta.total_seconds()), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min"
