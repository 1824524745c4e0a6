"""Compare refund-mcp's refunds with each processor's, fix what is safe to fix, report the rest.

Per processor, for refunds created since a date:
1. Where the processor can list refunds (Stripe, Square), list them all: each one we hold is
   compared from the listing (no second call), each one we do not hold is **unknown** (made
   outside refund-mcp and not recorded by a webhook). Unknown refunds are reported, never
   recorded: a human decides whether they are the merchant's own, a duplicate, or worse.
2. Each of our refunds with a processor id that the listing did not show (or every one, where
   the processor cannot list: PayPal) is read with `get_refund`; not found is **missing**.
3. A comparison is **matched** when status, amount and currency agree. A different status that
   the status rules allow (domain/models.py `may_transition`: forward moves, and a late failure
   after success) is applied through the service's `apply_processor_state` and audited as
   `refund.reconciled`: **fixed**. Anything else (amount or currency differs, or a final status
   the processor contradicts, e.g. our `failed` against its `succeeded`) is **mismatched**.
4. Processors with no status API (Adyen) cannot be checked at all: the report says so.
5. Our books against themselves: each payment's running totals (kept by database triggers, read by
   every balance) against a fresh sum of its refunds; a difference is **mismatched**.

Queued refunds with no processor id are not compared (they have not reached the processor as
far as we know); an unknown refund of the same amount on the same payment names them as a
possible match, since a submission whose answer was lost looks exactly like that.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import NotSupported, ProcessorCallError, RefundError, RefundNotFound
from refund_mcp.domain.models import ProcessorRefund, RefundStatus, may_transition
from refund_mcp.processors.base import Processor
from refund_mcp.service import identity
from refund_mcp.store import queries, tables

ACTOR = "refund-mcp reconcile"
Progress = Callable[[str], None]


class Kind(enum.StrEnum):
    MATCHED = "matched"
    FIXED = "fixed"
    MISMATCHED = "mismatched"
    UNKNOWN = "unknown"  # at the processor, not in our records
    MISSING = "missing"  # in our records with a processor id the processor does not know
    ERROR = "error"  # could not be checked (the processor failed to answer)


NEEDS_HUMAN = frozenset({Kind.MISMATCHED, Kind.UNKNOWN, Kind.MISSING, Kind.ERROR})


@dataclass(frozen=True)
class Side:
    status: str
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class Finding:
    processor: str
    kind: Kind
    detail: str
    refund_id: str | None = None
    processor_refund_id: str | None = None
    transaction_id: str | None = None
    ours: Side | None = None
    theirs: Side | None = None
    processor_status: str | None = None  # the processor's own word


@dataclass
class ProcessorResult:
    processor: str
    checked: int = 0  # our refunds compared with the processor's answer
    listed: int | None = None  # refunds the processor listed; None when it cannot list
    not_checked: int = 0  # ours that could not be compared (no status API, or not sent yet)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    since: datetime
    generated_at: datetime
    processors: list[ProcessorResult]
    findings: list[Finding]  # every comparison, matched ones included

    def count(self, kind: Kind) -> int:
        return sum(1 for finding in self.findings if finding.kind is kind)

    @property
    def summary(self) -> dict[str, int]:
        return {kind.value: self.count(kind) for kind in Kind}

    @property
    def needs_human(self) -> bool:
        return any(finding.kind in NEEDS_HUMAN for finding in self.findings)

    @property
    def reported(self) -> list[Finding]:
        """What the report lists line by line: everything but the matches."""
        return [finding for finding in self.findings if finding.kind is not Kind.MATCHED]


def _side(answer: ProcessorRefund) -> Side:
    return Side(answer.status.value, answer.amount_minor, answer.currency)


def _our_side(row: Any) -> Side:
    return Side(row.status, row.amount_minor, row.currency)


async def _our_refunds(app: Any, processor: str, since: datetime) -> list[Any]:
    R = tables.refunds
    query = select(R).where(R.c.processor == processor, R.c.created_at >= since).order_by(R.c.created_at, R.c.id)
    async with app.db.read() as conn:
        return list((await conn.execute(query)).all())


async def _compare(app: Any, row: Any, answer: ProcessorRefund) -> Finding:
    base = {
        "processor": row.processor,
        "refund_id": row.id,
        "processor_refund_id": row.processor_refund_id,
        "transaction_id": row.transaction_id,
        "theirs": _side(answer),
        "processor_status": answer.processor_status,
    }
    if (answer.amount_minor, answer.currency) != (row.amount_minor, row.currency):
        return Finding(kind=Kind.MISMATCHED, ours=_our_side(row), detail="amount or currency differs", **base)
    if answer.status.value == row.status:
        return Finding(kind=Kind.MATCHED, ours=_our_side(row), detail="", **base)
    async with app.db.write() as conn:
        # Read again, locked (store/modes.py): a webhook may have moved it since the list was read.
        fresh = await queries.get_refund(conn, row.id)
        current = RefundStatus(fresh.status)
        if current is answer.status:
            return Finding(kind=Kind.MATCHED, ours=_our_side(fresh), detail="", **base)
        if not may_transition(current, answer.status):
            return Finding(
                kind=Kind.MISMATCHED,
                ours=_our_side(fresh),
                detail=f"status: ours {current.value}, processor {answer.status.value}; a final status is not changed automatically",
                **base,
            )
        await app.service.apply_processor_state(conn, row.id, answer, actor=ACTOR, action="refund.reconciled")
    return Finding(kind=Kind.FIXED, ours=_our_side(fresh), detail=f"{current.value} -> {answer.status.value}", **base)


async def _known_ids(app: Any, processor: str, processor_refund_ids: list[str], chunk: int = 500) -> set[str]:
    """Which of these processor refund ids are on record (ours or external), whatever their date."""
    R = tables.refunds
    known: set[str] = set()
    async with app.db.read() as conn:
        for start in range(0, len(processor_refund_ids), chunk):
            query = select(R.c.processor_refund_id).where(
                R.c.processor == processor, R.c.processor_refund_id.in_(processor_refund_ids[start : start + chunk])
            )
            known.update(row.processor_refund_id for row in (await conn.execute(query)).all())
    return known


async def _possible_twin(app: Any, processor: str, answer: ProcessorRefund) -> str | None:
    """One of our refunds that may be this one: queued with no processor id, same payment and amount."""
    if answer.transaction_id is None:
        return None
    R = tables.refunds
    async with app.db.read() as conn:
        # Our refunds are recorded under the payment's canonical id, whichever name the processor used here.
        payment = await identity.canonical_of(conn, processor, answer.transaction_id) or f"{processor}:{answer.transaction_id}"
        query = select(R.c.id).where(
            R.c.transaction_id == payment,
            R.c.processor_refund_id.is_(None),
            R.c.status == RefundStatus.QUEUED.value,
            R.c.amount_minor == answer.amount_minor,
            R.c.currency == answer.currency,
        )
        row = (await conn.execute(query.limit(1))).first()
    return row.id if row is not None else None


async def _listed(
    app: Any, processor: Processor, since: datetime, result: ProcessorResult, findings: list[Finding], progress: Progress
) -> dict[str, ProcessorRefund] | None:
    """The processor's refunds since `since` by id, or None when it cannot list them."""
    listed: dict[str, ProcessorRefund] = {}
    try:
        async for answer in processor.list_refunds(since):
            listed[answer.processor_refund_id] = answer
            progress(f"{processor.name}: listed {len(listed)}")
    except NotSupported:
        how = "only through its webhooks" if processor.capabilities.webhooks else "not at all"
        result.notes.append(f"{processor.name} cannot list refunds: refunds made outside refund-mcp are found {how}")
        return None
    except ProcessorCallError as exc:
        findings.append(Finding(processor.name, Kind.ERROR, f"listing refunds failed: {exc}"))
        result.notes.append(f"{processor.name}: the listing failed, so refunds made elsewhere were not looked for")
        return None
    result.listed = len(listed)
    return listed


async def _check_processor(app: Any, name: str, since: datetime, progress: Progress) -> tuple[ProcessorResult, list[Finding]]:
    processor = app.processors.get(name)
    result = ProcessorResult(name)
    findings: list[Finding] = []
    ours = await _our_refunds(app, name, since)
    if not processor.capabilities.status_api:
        result.not_checked = len(ours)
        result.notes.append(
            f"{name} has no API to read or list refunds: {len(ours)} refund(s) on record were not checked; "
            "their outcomes arrive only by webhook"
        )
        return result, findings
    listed = await _listed(app, processor, since, result, findings, progress)
    for index, row in enumerate(ours, start=1):
        progress(f"{name}: {index}/{len(ours)}")
        if row.processor_refund_id is None:
            result.not_checked += 1  # not at the processor as far as we know (queued, awaiting approval, …)
            continue
        answer = listed.get(row.processor_refund_id) if listed is not None else None
        if answer is None:
            try:
                answer = await processor.get_refund(row.processor_refund_id)
            except RefundNotFound:
                findings.append(
                    Finding(name, Kind.MISSING, f"{name} has no refund {row.processor_refund_id}", refund_id=row.id,
                            processor_refund_id=row.processor_refund_id, transaction_id=row.transaction_id, ours=_our_side(row))
                )
                continue
            except RefundError as exc:
                findings.append(
                    Finding(name, Kind.ERROR, f"could not read it: {exc}", refund_id=row.id,
                            processor_refund_id=row.processor_refund_id, transaction_id=row.transaction_id, ours=_our_side(row))
                )
                continue
        result.checked += 1
        findings.append(await _compare(app, row, answer))
    if listed is not None:
        known = await _known_ids(app, name, list(listed))
        for answer in listed.values():
            if answer.processor_refund_id in known:
                continue
            twin = await _possible_twin(app, name, answer)
            detail = "made outside refund-mcp and not recorded"
            if twin is not None:
                detail += f"; may be refund-mcp's {twin} (queued, its submission's answer was lost)"
            findings.append(
                Finding(name, Kind.UNKNOWN, detail, processor_refund_id=answer.processor_refund_id,
                        transaction_id=f"{name}:{answer.transaction_id}" if answer.transaction_id else None,
                        theirs=_side(answer), processor_status=answer.processor_status)
            )
    return result, findings


async def _running_totals_findings(app: Any) -> list[Finding]:
    """A payment whose running totals differ from its refunds: a trigger was bypassed or dropped, and its
    balance is wrong until a human looks."""
    async with app.db.read() as conn:
        rows = await queries.running_total_mismatches(conn)
    findings = []
    for row in rows:
        differences = ", ".join(
            f"{name} {getattr(row, name)} (its refunds sum to {getattr(row, f'summed_{name}')})"
            for name in queries.RUNNING_TOTALS
            if getattr(row, name) != getattr(row, f"summed_{name}")
        )
        detail = f"the payment's running totals differ from its refunds: {differences}"
        findings.append(Finding(row.id.split(":", 1)[0], Kind.MISMATCHED, detail, transaction_id=row.id))
    return findings


async def reconcile(
    app: Any, *, since: datetime, processors: list[str] | None = None, progress: Progress | None = None
) -> Report:
    """Reconcile `app`'s (refund_mcp.app.App) refunds since `since` with each processor in
    `processors` (default: every configured one). Fixes safe status drift; reports the rest.
    The run itself is audited as `reconcile.run` with its summary."""
    say = progress or (lambda _message: None)
    names = processors if processors is not None else app.processors.names()
    results: list[ProcessorResult] = []
    findings: list[Finding] = []
    for name in names:
        result, found = await _check_processor(app, name, since, say)
        results.append(result)
        findings.extend(found)
    findings.extend(await _running_totals_findings(app))
    report = Report(since=since, generated_at=app.service.clock(), processors=results, findings=findings)
    async with app.db.write() as conn:
        await audit.append(
            conn,
            AuditEntry(
                actor=ACTOR,
                action="reconcile.run",
                target=None,
                outcome="attention" if report.needs_human else "ok",
                detail={"since": since.isoformat(), "processors": names, "summary": report.summary},
            ),
        )
    return report
