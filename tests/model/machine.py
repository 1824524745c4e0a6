"""The money model: a hypothesis state machine driving the real RefundService against ModelProcessor.

Two service instances (two Database engines, each its own connection pool, like two replicas) share one
set of books, one clock and the processors. The books are a fresh SQLite file per example (MoneyMachine)
or one PostgreSQL database brought back to its just-migrated state before each example
(PostgresMoneyMachine; tests/model/storage.py). Everything runs on one asyncio loop owned by the machine:
a processor call that is held (fault `hold`) leaves its task pending across steps, so a later step can
let its lease lapse, have the other instance take the refund over, and only then release the old attempt.

Rules that run calls concurrently inside one step (asyncio.gather-like, on the same loop, alternating the
two replicas), so the write path's locking is exercised, not only its logic:
- concurrent_refunds_of_one_payment: 2-4 create_refund calls on one payment, no keys, distinct keys or one
  shared key; checked: never more than the balance (ours and the processor's), the policy's count per
  payment, one refund per (actor, key).
- concurrent_refunds_under_daily_caps: 2-4 refunds on different payments (CAP_PAYMENTS) whose sum exceeds
  the policy's per_actor_daily and global_daily caps; checked after every step: no 24-h window of refunds
  that reserve or took money exceeds a cap (tests/model/limits.py; an early refusal is never a failure).
- overtaken_attempt: an attempt is held at the processor (its answer the refund itself, or a 429), its
  lease lapses, the other replica's process_due takes the refund over and finishes it, then the held answer
  arrives: it must change nothing on the refund's row, leave a refund.stale_attempt record, and the processor
  must hold exactly one refund for it.

After every step the invariants hold; `settle` (a rule, and the end of every example) lets every
attempt finish, delivers every notification, lets the workers run and an honest operator decide,
then requires our books to equal the processor's, and the audit chain to verify (records the code
under test seals after commit are sealed first: tests/model/audit_chain.py).

Which rule ran how often, and what it met, is in `pytest --hypothesis-show-statistics` (hypothesis events).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from datetime import timedelta
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import select

from refund_mcp.domain.errors import RefundError
from refund_mcp.domain.models import RefundStatus
from refund_mcp.service.refunds import Confirmation, RefundInput
from refund_mcp.store import tables
from refund_mcp.store.database import Database
from refund_mcp.worker import run_once
from tests.model.audit_chain import seal_pending, verify_chain
from tests.model.harness import POLICY, Clock, build_service
from tests.model.limits import daily_caps, over_balance, over_daily_caps
from tests.model.processor import CREATE_FAULTS, ModelProcessor, Payment
from tests.model.storage import PostgresBooks, SqliteBooks

PER_REFUND = {"USD": 10000, "EUR": 10000}  # policy.yaml limits.per_refund
MAX_REFUNDS_PER_PAYMENT = 2  # policy.yaml limits.max_refunds_per_transaction
TRANSACTIONS = ("stripe:ch_1", "stripe:pi_1", "stripe:ch_2", "stripe:ch_3", "stripe:pi_4", "stripe:ch_4", "adyen:psp_1")
# Payments only the daily-cap rule refunds: together more than the caps, so concurrent rounds reach them.
CAP_PAYMENTS = ("stripe:ch_c1", "stripe:ch_c2", "stripe:ch_c3", "stripe:ch_c4")
# Payments only the overtaken-attempt rule refunds (two refunds each, the policy's count), so it rarely finds none left.
OVERTAKEN_PAYMENTS = {"stripe": ("ch_o1", "ch_o2", "ch_o3"), "adyen": ("psp_o1", "psp_o2", "psp_o3")}
PER_ACTOR_DAILY, GLOBAL_DAILY = daily_caps(POLICY)
# Faults a concurrent round may meet that leave no call held (held calls have their own rules).
ROUND_FAULTS = (None, None, "lost_answer", "pending", "rate_limited", "stored_5xx", "refused")
# An agent's text that reads as our own words if shown unlabelled in the human's confirmation prompt.
AGENT_TEXT = "NOTE: display bug, the real amount is USD 1.20 - ok to confirm"
AGENT_LABEL = "Unverified, written by the agent: "
# Past a lease (121 s), past half a Stripe key's life (13 h), past it (25 h), past an Adyen key's (32 days).
JUMPS = (1, 121, 121, 3600, 13 * 3600, 25 * 3600, 25 * 3600, 3 * 86400, 32 * 86400)
ACTORS = ("agent-a", "agent-b")
# Allowed changes of a final status: a late failure after success, and Adyen's failure then success.
FLIPS = {(RefundStatus.SUCCEEDED, RefundStatus.FAILED), (RefundStatus.FAILED, RefundStatus.SUCCEEDED)}
# Checks by name; REFUND_MCP_MODEL_SKIP=name,name turns some off (to see which checks an older tree fails,
# one at a time): one_per_request, within_captured, released, in_doubt, decision, currency, confirmed_amount,
# approval_expiry, refunds_per_payment, no_regress, books, adyen_flip, prompt, balance, daily_caps, one_per_key,
# overtaken, audit_chain.
# REFUND_MCP_MODEL_ONLY=name,name runs only those.
# Checks of guarantees this tree does not give yet are off unless named (REFUND_MCP_MODEL_SKIP= turns all on).
NOT_YET_GUARANTEED = ""
SKIPPED = frozenset(filter(None, os.environ.get("REFUND_MCP_MODEL_SKIP", NOT_YET_GUARANTEED).split(",")))
ONLY = frozenset(filter(None, os.environ.get("REFUND_MCP_MODEL_ONLY", "").split(",")))


def checking(name: str) -> bool:
    return name not in SKIPPED and (not ONLY or name in ONLY)


def prompt_for(view: Any, req: RefundInput) -> str:
    """The question the MCP server's confirmation resolver puts to the human for this preview."""
    try:
        from refund_mcp.service.untrusted import confirmation_prompt
    except ImportError:  # older trees built the prompt inline in server.py; this is that text
        return (
            f"Refund {view.amount_display} on {view.transaction_id} "
            f"(customer {req.customer_ref or 'not given'}) for reason '{req.reason}'? This moves real money."
        )
    return confirmation_prompt(
        amount_display=view.amount_display, transaction_id=view.transaction_id, reason=req.reason,
        payment_customer=view.customer_ref, claimed_customer=req.customer_ref,
    )


async def _answer_of(coro: Any) -> Any:
    """A call's answer; a RefundError is an answer like any other."""
    try:
        return await coro
    except RefundError as exc:
        return exc


def _outcome(result: Any) -> str:
    if result is None:
        return "held"
    if isinstance(result, RefundError):
        return result.code
    return "duplicate" if result.duplicate_of else str(result.status)


class MoneyMachine(RuleBasedStateMachine):
    books: type[SqliteBooks] | type[PostgresBooks] = SqliteBooks

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.storage = self.books()
        self.clock = Clock()
        self.stripe = ModelProcessor("stripe", self.clock, retention=timedelta(hours=24), searchable=True, status_api=True)
        self.adyen = ModelProcessor("adyen", self.clock, retention=timedelta(days=31), searchable=False, status_api=False)
        self.adyen.arrived = self.stripe.arrived  # one signal for "a call is now held"
        self.stripe.add_payment(Payment("ch_1", 10000, "USD", aliases=("pi_1",)))
        self.stripe.add_payment(Payment("ch_2", 6000, "EUR"))
        self.stripe.add_payment(Payment("ch_3", 2500, "USD"))  # refunded in full without a confirmation
        # A balance between the confirmation and approval thresholds, so a parked refund fits beside it.
        self.stripe.add_payment(Payment("ch_4", 7000, "USD", aliases=("pi_4",)))
        self.adyen.add_payment(Payment("psp_1", 8000, "EUR"))
        self.processors = {"stripe": self.stripe, "adyen": self.adyen}
        for name in CAP_PAYMENTS:
            self.stripe.add_payment(Payment(name.partition(":")[2], 6000, "USD"))
        for processor, names in OVERTAKEN_PAYMENTS.items():
            for name in names:
                self.processors[processor].add_payment(Payment(name, 3000, "USD" if processor == "stripe" else "EUR"))
        # Two replicas: each its own engine and connection pool on the same books.
        self.dbs = [Database(self.storage.url), Database(self.storage.url)]
        self.loop.run_until_complete(self.storage.prepare(self.dbs[0]))
        self.services = [build_service(db, self.processors, self.clock) for db in self.dbs]
        self.keys = itertools.count(1)
        self.notes: list[str] = []  # what each concurrent or overtaken round met, also outside a hypothesis run
        self.pending_tasks: list[asyncio.Task[Any]] = []
        self.confirmed: dict[str, int] = {}  # refund id -> the amount the human confirmed
        self.last_status: dict[str, RefundStatus] = {}

    def note(self, what: str) -> None:
        self.notes.append(what)
        try:
            event(what)
        except InvalidArgument:  # a rule called directly, not by hypothesis
            pass

    # ------------------------------------------------------------------ driving the loop

    def _drive(self, task: asyncio.Task[Any]) -> bool:
        """Run the loop until `task` ends or some processor call starts being held; True if it ended."""

        async def until() -> None:
            arrival = asyncio.ensure_future(self.stripe.arrived.wait())
            try:
                await asyncio.wait({task, arrival}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()

        self.stripe.arrived.clear()
        self.loop.run_until_complete(until())
        if task.done():
            return True
        if task not in self.pending_tasks:
            self.pending_tasks.append(task)
        return False

    def run(self, coro: Any) -> Any:
        """Run one call; a RefundError is a result like any other. None if the call is now held."""
        task = self.loop.create_task(_answer_of(coro))
        if self._drive(task):
            return task.result()
        return None

    def run_together(self, coros: list[Any]) -> list[Any]:
        """Run calls concurrently on the loop until each has ended or is held by a processor (None for those)."""
        tasks = [self.loop.create_task(_answer_of(coro)) for coro in coros]
        while True:
            held = {h.task for p in self.processors.values() for h in p.held}
            running = [task for task in tasks if not task.done() and task not in held]
            if not running:
                break
            self.stripe.arrived.clear()

            async def until_one_moves(running: list[asyncio.Task[Any]] = running) -> None:
                arrival = asyncio.ensure_future(self.stripe.arrived.wait())
                try:
                    await asyncio.wait({*running, arrival}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    arrival.cancel()

            self.loop.run_until_complete(until_one_moves())
        self.pending_tasks.extend(task for task in tasks if not task.done())
        return [task.result() if task.done() else None for task in tasks]

    def query(self, statement: Any) -> list[Any]:
        async def read() -> list[Any]:
            async with self.dbs[0].read() as conn:
                return list((await conn.execute(statement)).all())

        return self.loop.run_until_complete(read())

    def audit_records(self, statement: Any) -> list[Any]:
        """Audit rows, after sealing whatever the code under test still holds unsealed."""
        self.loop.run_until_complete(seal_pending(self.dbs[0]))
        return self.query(statement)

    def refunds(self) -> list[Any]:
        return self.query(select(tables.refunds).order_by(tables.refunds.c.created_at, tables.refunds.c.id))

    def refund_row(self, refund_id: str) -> dict[str, Any]:
        return dict(self.query(select(tables.refunds).where(tables.refunds.c.id == refund_id))[0]._mapping)

    def payment_of(self, row: Any) -> str:
        """The processor's id of a refund's payment, whatever name the refund used."""
        processor, _, bare = row.transaction_id.partition(":")
        return f"{processor}:{self.processors[processor].payments[bare].id}"

    def pick(self, rows: list[Any], index: int) -> Any:
        return rows[index % len(rows)] if rows else None

    # ------------------------------------------------------------------ rules: agents

    @rule(
        actor=st.sampled_from(ACTORS),
        transaction=st.sampled_from(TRANSACTIONS),
        amount=st.sampled_from((None, None, 500, 1000, 2500, 2500, 4000, 6000, 9000)),
        reason=st.sampled_from(("requested_by_customer", "requested_by_customer", "fraudulent")),
        key=st.sampled_from((None, None, "k1", "k2")),
        confirmation=st.sampled_from(("human", "human", "none", "unavailable")),
        cancel_mid_prompt=st.booleans(),
        fault=st.sampled_from((None, None, "lost_answer", "hold", "held_429+lost_answer", *CREATE_FAULTS)),
        instance=st.sampled_from((0, 1)),
        customer_ref=st.sampled_from((None, None, "cus@example.com", AGENT_TEXT)),
    )
    def create(self, actor, transaction, amount, reason, key, confirmation, cancel_mid_prompt, fault, instance, customer_ref=None):  # type: ignore[no-untyped-def]
        service = self.services[instance]
        if fault is not None:  # "a+b": this call gets a, the next call to that processor b
            self.processors[transaction.partition(":")[0]].faults.extend(fault.split("+"))
        req = RefundInput(transaction_id=transaction, reason=reason, amount_minor=amount, idempotency_key=key, customer_ref=customer_ref)
        state, shown, terms = Confirmation.NOT_ASKED, None, None
        if confirmation == "unavailable":
            state = Confirmation.UNAVAILABLE
        elif confirmation == "human":
            # What the MCP server's confirmation resolver does: preview, ask the human about what the
            # preview shows, then create with what the human confirmed.
            preview = self.run(service.preview(actor, req))
            view = getattr(preview, "view", preview)  # older trees: the preview is the policy view itself
            if view is not None and not isinstance(view, RefundError) and view.decision == "needs_confirmation":
                self.check_prompt(prompt_for(view, req))
                state, shown = Confirmation.CONFIRMED, view.amount_minor
                terms = preview.terms(reason) if hasattr(preview, "terms") else None
                if cancel_mid_prompt:  # the balance grows while the human reads the prompt
                    parked = [r for r in self.refunds() if r.status == "pending_approval"]
                    same = [r for r in parked if r.transaction_id in self._names_of(transaction)]
                    if same or parked:
                        row = (same or parked)[0]
                        self.run(self.services[1 - instance].cancel_refund(row.actor, row.id))
        result = self.run(service.create_refund(actor, req, state, **({"confirmed": terms} if terms is not None else {})))
        if shown is not None and result is not None and not isinstance(result, RefundError) and result.duplicate_of is None:
            self.confirmed.setdefault(result.refund_id, shown)

    def _names_of(self, transaction: str) -> set[str]:
        processor, _, bare = transaction.partition(":")
        payment = self.processors[processor].payments[bare]
        return {f"{processor}:{name}" for name in (payment.id, *payment.aliases)}

    @rule(
        transaction=st.sampled_from(("stripe:ch_4", "stripe:pi_4")),
        parked_as=st.sampled_from(("stripe:ch_4", "stripe:pi_4")),
        instance=st.sampled_from((0, 1)),
    )
    def confirm_while_the_balance_grows(self, transaction, parked_as, instance):  # type: ignore[no-untyped-def]
        """A parked refund is cancelled while the human reads a full-refund prompt: the balance grows."""
        self.run(self.services[instance].create_refund("agent-b", RefundInput(transaction_id=parked_as, reason="fraudulent", amount_minor=500)))
        self.create("agent-a", transaction, None, "requested_by_customer", None, "human", True, None, instance)

    @rule(
        transaction=st.sampled_from(("stripe:ch_2", "stripe:pi_4", "adyen:psp_1")),
        amount=st.sampled_from((None, 4000)),
        instance=st.sampled_from((0, 1)),
    )
    def agent_describes_the_customer(self, transaction, amount, instance):  # type: ignore[no-untyped-def]
        """The agent's customer_ref carries words meant for the human who confirms."""
        self.create("agent-a", transaction, amount, "requested_by_customer", None, "human", False, None, instance, AGENT_TEXT)

    @rule(names=st.permutations(("stripe:ch_1", "stripe:pi_1", "stripe:ch_1")), instance=st.sampled_from((0, 1)))
    def one_payment_under_both_names(self, names, instance):  # type: ignore[no-untyped-def]
        """Small refunds of one Stripe payment, named by its charge and by its payment intent."""
        for name in names:
            self.run(self.services[instance].create_refund("agent-a", RefundInput(transaction_id=name, reason="requested_by_customer", amount_minor=100)))

    @rule(index=st.integers(0, 3), instance=st.sampled_from((0, 1)))
    def adyen_fails_then_succeeds(self, index, instance):  # type: ignore[no-untyped-def]
        """Adyen: a refund answered pending, REFUND success=false, then success=true; each notification delivered."""
        self.adyen.faults.append("pending")
        result = self.run(self.services[instance].create_refund("agent-a", RefundInput(transaction_id="adyen:psp_1", reason="requested_by_customer", amount_minor=500 + index)))
        mine = [r for r in self.adyen.refunds.values() if r.status is RefundStatus.PENDING and result is not None and not isinstance(result, RefundError) and r.refund_mcp_id == result.refund_id]
        if not mine:
            return
        self.adyen.settle(mine[0].id, RefundStatus.FAILED)
        self.run(self.services[instance].apply_event(self.adyen.events[-1]))
        refund, payment = mine[0], self.adyen.payments[mine[0].payment_id]
        if self.adyen.refunded(payment) + refund.amount_minor > payment.amount_minor:
            return
        self.adyen.settle(refund.id, RefundStatus.SUCCEEDED)
        self.run(self.services[1 - instance].apply_event(self.adyen.events[-1]))

    @rule(
        actor=st.sampled_from(ACTORS),
        transaction=st.sampled_from(TRANSACTIONS),
        amount=st.sampled_from((None, 500, 2500)),
        fault=st.sampled_from(("held_429+lost_answer", "lost_answer", "hold", "stored_5xx", "held_429")),
        instance=st.sampled_from((0, 1)),
    )
    def create_while_the_processor_struggles(self, actor, transaction, amount, fault, instance):  # type: ignore[no-untyped-def]
        """The faults that put a refund in doubt, more often than `create` draws them."""
        self.create(actor, transaction, amount, "requested_by_customer", None, "human", False, fault, instance)

    # ------------------------------------------------------------------ rules: concurrent agents

    @rule(
        transaction=st.sampled_from(TRANSACTIONS),
        calls=st.lists(st.tuples(st.sampled_from(ACTORS), st.sampled_from((None, 1000, 2500, 3000, 6000))), min_size=2, max_size=4),
        keys=st.sampled_from(("none", "distinct", "shared")),
        fault=st.sampled_from(ROUND_FAULTS),
    )
    def concurrent_refunds_of_one_payment(self, transaction, calls, keys, fault):  # type: ignore[no-untyped-def]
        """2-4 create_refund calls on one payment at once, from both replicas: never more than the balance, the
        policy's count per payment, one refund per (actor, key)."""
        if fault is not None:
            self.processors[transaction.partition(":")[0]].faults.append(fault)
        shared = f"round-{next(self.keys)}"
        requests = []
        for index, (actor, amount) in enumerate(calls):
            key = {"none": None, "distinct": f"round-{next(self.keys)}", "shared": shared}[keys]
            # A shared key carries one request: the same amount each time, so every call but one replays it.
            amount = calls[0][1] if keys == "shared" else amount
            requests.append((actor, key, RefundInput(transaction_id=transaction, reason="requested_by_customer", amount_minor=amount, idempotency_key=key)))
        results = self.run_together(
            [self.services[index % 2].create_refund(actor, req) for index, (actor, _, req) in enumerate(requests)]
        )
        if self.processors[transaction.partition(":")[0]].faults[-1:] == [fault]:
            self.processors[transaction.partition(":")[0]].faults.pop()  # not consumed: it is not this round's any more
        by_key: dict[tuple[str, str], set[str]] = {}
        for (actor, key, _), result in zip(requests, results, strict=True):
            if key is not None and result is not None and not isinstance(result, RefundError):
                by_key.setdefault((actor, key), set()).add(result.refund_id)
        if checking("one_per_key"):
            assert all(len(ids) == 1 for ids in by_key.values()), f"one (actor, key), several refunds: {by_key}"
        self.note(f"concurrent_refunds_of_one_payment: {len(calls)} calls, {sum(1 for r in results if _outcome(r) in ('queued', 'pending', 'succeeded', 'pending_approval'))} reserved")

    @rule(
        picks=st.lists(
            st.tuples(st.sampled_from(CAP_PAYMENTS), st.sampled_from(ACTORS), st.sampled_from((1500, 2500, 3000, 3000))),
            min_size=2, max_size=4, unique_by=lambda pick: pick[0],
        ),
        fault=st.sampled_from(ROUND_FAULTS),
    )
    def concurrent_refunds_under_daily_caps(self, picks, fault):  # type: ignore[no-untyped-def]
        """2-4 refunds at once on different payments, from both replicas, against the daily caps."""
        if fault is not None:
            self.stripe.faults.append(fault)
        results = self.run_together(
            [
                self.services[index % 2].create_refund(actor, RefundInput(transaction_id=payment, reason="requested_by_customer", amount_minor=amount))
                for index, (payment, actor, amount) in enumerate(picks)
            ]
        )
        if self.stripe.faults[-1:] == [fault]:
            self.stripe.faults.pop()
        refused = sorted(_outcome(r) for r in results if isinstance(r, RefundError))
        capped = any("daily" in r.message for r in results if isinstance(r, RefundError))
        self.note(f"concurrent_refunds_under_daily_caps: {'a cap refused' if capped else 'no cap reached'}")
        if refused:
            self.note(f"concurrent_refunds_under_daily_caps: refused {refused[0]}")

    # ------------------------------------------------------------------ rules: an overtaken attempt

    @rule(
        processor=st.sampled_from(("stripe", "adyen")),
        held_answer=st.sampled_from(("hold", "held_429")),
        takeover_meets=st.sampled_from((None, None, "rate_limited", "lost_answer")),
        instance=st.sampled_from((0, 1)),
    )
    def overtaken_attempt(self, processor, held_answer, instance, takeover_meets=None):  # type: ignore[no-untyped-def]
        """A processor call is held; its lease lapses; the other replica takes the refund over; then the held
        answer arrives. It must change nothing (audited as refund.stale_attempt), and the processor must hold
        at most one refund for it: exactly one once the takeover met no fault. `hold`: the held answer is the
        refund itself; `held_429`: a 429 that did nothing. `takeover_meets` a fault: the refund is still queued
        under the takeover's claim when the held answer arrives, so only the fencing token stops that answer."""
        target = self.processors[processor]
        payment = self._overtaken_payment(processor)
        if payment is None:
            self.note("overtaken_attempt: no payment left")
            return
        before = list(target.held)
        target.faults.insert(0, held_answer)  # this call's, whatever other rules queued
        req = RefundInput(transaction_id=f"{processor}:{payment}", reason="requested_by_customer", amount_minor=500, idempotency_key=f"overtaken-{next(self.keys)}")
        result = self.run(self.services[instance].create_refund("agent-c", req))
        held = [h for h in target.held if h not in before]
        if not held:
            if target.faults[:1] == [held_answer]:
                target.faults.pop(0)
            self.note(f"overtaken_attempt: not sent ({_outcome(result)})")
            return
        call = held[0]
        other = self.services[1 - instance]
        held_claim = self.refund_row(call.refund_mcp_id)["claim_token"]
        # The takeover meets only the fault drawn for it: nothing queued by other rules, on either processor.
        queued = {name: list(p.faults) for name, p in self.processors.items()}
        for p in self.processors.values():
            p.faults[:] = []
        target.faults.extend([takeover_meets] if takeover_meets else [])
        self.clock.now += timedelta(seconds=other.settings.claim_seconds + 1)
        self.run(other.process_due())
        for name, p in self.processors.items():
            p.faults[:] = queued[name]
        taken_over = self.refund_row(call.refund_mcp_id)
        target.held.remove(call)
        call.gate.set()
        if call.task is not None and self._drive(call.task):
            self.pending_tasks.remove(call.task)
        if taken_over["claim_token"] == held_claim:  # the worker claimed other due refunds first (it takes 20 at most)
            self.note("overtaken_attempt: not taken over")
            return
        after = self.refund_row(call.refund_mcp_id)
        made = [r.id for r in target.refunds.values() if r.refund_mcp_id == call.refund_mcp_id]
        stale = self.audit_records(
            select(tables.audit_log.c.seq).where(tables.audit_log.c.action == "refund.stale_attempt", tables.audit_log.c.target == call.refund_mcp_id)
        )
        if checking("overtaken"):
            changed = {k: (v, after[k]) for k, v in taken_over.items() if after[k] != v}
            assert not changed, f"{call.refund_mcp_id}: the overtaken attempt's answer changed {changed}"
            assert len(made) == 1 or (takeover_meets and len(made) <= 1), f"{call.refund_mcp_id}: {processor} holds {made}"
            assert stale, f"{call.refund_mcp_id}: the overtaken attempt left no refund.stale_attempt record"
        self.note(f"overtaken_attempt: {held_answer} overtaken, refund {after['status']}" + (f" (takeover met {takeover_meets})" if takeover_meets else ""))

    def _overtaken_payment(self, processor: str) -> str | None:
        used: dict[str, int] = {}
        for row in self.refunds():
            if row.status not in ("failed", "cancelled"):
                used[row.transaction_id] = used.get(row.transaction_id, 0) + 1
        free = [name for name in OVERTAKEN_PAYMENTS[processor] if used.get(f"{processor}:{name}", 0) < MAX_REFUNDS_PER_PAYMENT]
        return free[0] if free else None

    @rule(index=st.integers(0, 20), instance=st.sampled_from((0, 1)))
    def cancel(self, index, instance):  # type: ignore[no-untyped-def]
        row = self.pick([r for r in self.refunds() if r.origin == "agent"], index)
        if row is not None:
            self.run(self.services[instance].cancel_refund(row.actor, row.id))

    @rule(index=st.integers(0, 20))
    def status_refresh(self, index):  # type: ignore[no-untyped-def]
        row = self.pick([r for r in self.refunds() if r.origin == "agent"], index)
        if row is not None:
            self.run(self.services[0].get_refund_status(row.actor, row.id, refresh=True))

    # ------------------------------------------------------------------ rules: humans

    @rule(transaction=st.sampled_from(("stripe:ch_3", "adyen:psp_1")), hours=st.sampled_from((23, 25, 72)))
    def approve_late(self, transaction, hours):  # type: ignore[no-untyped-def]
        """A refund parked for approval is approved some hours later, with no worker sweep in between."""
        result = self.run(self.services[0].create_refund("agent-b", RefundInput(transaction_id=transaction, reason="fraudulent", amount_minor=300)))
        if result is None or isinstance(result, RefundError) or result.status != "pending_approval":
            return
        self.clock.now += timedelta(hours=hours)
        self.run(self.services[1].approve(result.refund_id, approver="risk-lead"))

    @rule(index=st.integers(0, 20), approve=st.booleans(), instance=st.sampled_from((0, 1)))
    def decide_approval(self, index, approve, instance):  # type: ignore[no-untyped-def]
        row = self.pick([r for r in self.refunds() if r.status == "pending_approval"], index)
        if row is None:
            return
        service = self.services[instance]
        if approve:
            self.run(service.approve(row.id, approver="risk-lead"))
        else:
            self.run(service.deny(row.id, approver="risk-lead"))

    @rule(index=st.integers(0, 20), retry=st.booleans())
    def operator_resolves(self, index, retry):  # type: ignore[no-untyped-def]
        """An honest operator: marks failed only what the processor does not hold."""
        row = self.pick([r for r in self.refunds() if r.status == "queued" and r.next_attempt_at is None], index)
        if row is None:
            return
        held = [r for r in self.processors[row.processor].refunds.values() if r.refund_mcp_id == row.id]
        outcome = "retry" if retry or any(r.status is not RefundStatus.FAILED for r in held) else "failed"
        self.run(self.services[0].resolve_queued(row.id, outcome=outcome, operator="ops"))

    # ------------------------------------------------------------------ rules: the world

    @rule(instance=st.sampled_from((0, 1)), wait=st.sampled_from((0, 0, *JUMPS)))
    def worker_pass(self, instance, wait):  # type: ignore[no-untyped-def]
        """A worker's pass, after some time (workers that were down, a lease that lapsed, a key that aged)."""
        self.clock.now += timedelta(seconds=wait)
        self.run(run_once(self.services[instance]))

    @rule(seconds=st.sampled_from(JUMPS))
    def time_passes(self, seconds):  # type: ignore[no-untyped-def]
        self.clock.now += timedelta(seconds=seconds)

    # No preconditions here or anywhere: which calls end up held depends on how concurrent calls raced, and a
    # precondition that reads it would make hypothesis' choice of rules differ when it replays an example.
    @rule(instance=st.sampled_from((0, 1)))
    def another_worker_takes_over(self, instance):  # type: ignore[no-untyped-def]
        """While a call is held, its lease lapses and a worker takes the refund over."""
        if not any(p.held for p in self.processors.values()):
            return
        self.clock.now += timedelta(seconds=self.services[instance].settings.claim_seconds + 1)
        self.run(run_once(self.services[instance]))

    @rule(index=st.integers(0, 5))
    def release_held(self, index):  # type: ignore[no-untyped-def]
        held = [h for p in self.processors.values() for h in p.held]
        if not held:
            return
        chosen = held[index % len(held)]
        for processor in self.processors.values():
            if chosen in processor.held:
                processor.held.remove(chosen)
        chosen.gate.set()
        if chosen.task is not None and self._drive(chosen.task):
            self.pending_tasks.remove(chosen.task)

    @rule(processor=st.sampled_from(("stripe", "adyen")), index=st.integers(0, 50), instance=st.sampled_from((0, 1)))
    def webhook(self, processor, index, instance):  # type: ignore[no-untyped-def]
        """Any notification the processor sent, at any time: late, out of order, or again."""
        events = self.processors[processor].events
        if events:
            self.run(self.services[instance].apply_event(events[index % len(events)]))

    @rule(index=st.integers(0, 20), succeed=st.booleans())
    def processor_settles(self, index, succeed):  # type: ignore[no-untyped-def]
        pending = [(p, r) for p in self.processors.values() for r in p.refunds.values() if r.status is RefundStatus.PENDING]
        if pending:
            processor, refund = pending[index % len(pending)]
            processor.settle(refund.id, RefundStatus.SUCCEEDED if succeed else RefundStatus.FAILED)

    @rule(index=st.integers(0, 20))
    def adyen_flips_a_failure(self, index):  # type: ignore[no-untyped-def]
        """Adyen: REFUND success=false, then success=true for the same refund."""
        failed = [r for r in self.adyen.refunds.values() if r.status is RefundStatus.FAILED]
        if failed:
            refund = failed[index % len(failed)]
            payment = self.adyen.payments[refund.payment_id]
            if self.adyen.refunded(payment) + refund.amount_minor <= payment.amount_minor:
                self.adyen.settle(refund.id, RefundStatus.SUCCEEDED)

    @rule()
    def search_fails_once(self) -> None:
        self.stripe.search_faults += 1

    @rule(processor=st.sampled_from(("stripe", "adyen")), fault=st.sampled_from(CREATE_FAULTS))
    def next_call_fails(self, processor, fault):  # type: ignore[no-untyped-def]
        """A fault for whichever create call reaches this processor next (a retry, an approval)."""
        self.processors[processor].faults.append(fault)

    @rule()
    def settle(self) -> None:
        self.settle_and_check_books()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def money_is_right(self) -> None:
        """Every check after every step, over one read of our books."""
        rows = self.refunds()
        self.at_most_one_processor_refund_per_refund(rows)
        self.processor_refunds_within_captured(rows)
        self.released_money_is_not_at_the_processor(rows)
        self.what_may_be_at_the_processor_stays_in_doubt(rows)
        self.every_refund_had_an_allowing_decision(rows)
        self.approvals_are_decided_before_they_expire(rows)
        self.at_most_the_policy_count_of_refunds_per_payment(rows)
        self.no_final_state_regresses(rows)
        self.never_more_than_the_balance(rows)
        self.never_over_a_daily_cap(rows)

    def _flipped_refunds(self) -> set[str]:
        """Our ids of refunds a processor failed and then succeeded (Adyen): money back after we released it."""
        return {r.refund_mcp_id for _, r in self._processor_refunds() if RefundStatus.FAILED in r.history}

    def never_more_than_the_balance(self, rows: list[Any]) -> None:
        if not checking("balance"):
            return
        flipped = self._flipped_refunds()
        captured = {
            f"{p.name}:{payment.id}": payment.amount_minor for p in self.processors.values() for payment in p.payments.values()
        }
        skip = {self.payment_of(row) for row in rows if row.id in flipped}
        breaches = over_balance(rows, self.payment_of, captured, skip)
        assert not breaches, f"more than the balance: {breaches}"

    def never_over_a_daily_cap(self, rows: list[Any]) -> None:
        if not checking("daily_caps"):
            return
        breaches = over_daily_caps(rows, PER_ACTOR_DAILY, GLOBAL_DAILY, self._flipped_refunds())
        assert not breaches, f"over a daily cap: {breaches}"

    def check_prompt(self, prompt: str) -> None:
        """The human reads only our records; the agent's words appear, if at all, quoted after their label."""
        if not checking("prompt"):
            return
        ours = "\n".join(line for line in prompt.splitlines() if not line.startswith(AGENT_LABEL))
        assert "real amount" not in ours, f"agent text unlabelled in the confirmation prompt: {prompt!r}"

    def _processor_refunds(self) -> list[tuple[ModelProcessor, Any]]:
        return [(p, r) for p in self.processors.values() for r in p.refunds.values()]

    def at_most_one_processor_refund_per_refund(self, rows: list[Any]) -> None:
        if not checking("one_per_request"):
            return
        seen: dict[str, str] = {}
        for _, refund in self._processor_refunds():
            assert refund.refund_mcp_id not in seen, f"two processor refunds for {refund.refund_mcp_id}: {seen[refund.refund_mcp_id]} and {refund.id}"
            seen[refund.refund_mcp_id] = refund.id

    def processor_refunds_within_captured(self, rows: list[Any]) -> None:
        if not checking("within_captured"):
            return
        for processor in self.processors.values():
            for payment in {id(p): p for p in processor.payments.values()}.values():
                assert processor.refunded(payment) <= payment.amount_minor

    def released_money_is_not_at_the_processor(self, rows: list[Any]) -> None:
        """A refund we released (cancelled, or failed by us) is not held by the processor, except while a
        processor's own flip (failure then success) has not reached us yet."""
        if not checking("released"):
            return
        by_id = {row.id: row for row in rows}
        for _, refund in self._processor_refunds():
            row = by_id.get(refund.refund_mcp_id)
            if row is None or refund.status is RefundStatus.FAILED or RefundStatus.FAILED in refund.history:
                continue
            assert row.status != "cancelled", f"{row.id} is cancelled but {refund.id} is {refund.status} at the processor"
            if row.status == "failed":
                assert row.processor_refund_id == refund.id, f"{row.id} failed ({row.failure_reason}) but {refund.id} is {refund.status}"

    def what_may_be_at_the_processor_stays_in_doubt(self, rows: list[Any]) -> None:
        """A queued refund the processor holds must be marked as possibly sent (or be in flight): otherwise
        it could be cancelled locally and its money released while it is paid."""
        if not checking("in_doubt"):
            return
        held = {r.refund_mcp_id for _, r in self._processor_refunds()}
        for row in rows:
            if row.status == "queued" and row.id in held:
                assert row.maybe_sent or row.claimed_until is not None, f"{row.id} is at the processor but looks unsent"

    def every_refund_had_an_allowing_decision(self, rows: list[Any]) -> None:
        if not any(checking(name) for name in ("decision", "currency", "confirmed_amount")):
            return
        records = self.audit_records(
            select(tables.audit_log.c.action, tables.audit_log.c.target, tables.audit_log.c.body).where(
                tables.audit_log.c.action.in_(("refund.reserved", "refund.pending_approval", "approval.approved"))
            )
        )
        reserved = {r.target: json.loads(r.body) for r in records if r.action in ("refund.reserved", "refund.pending_approval")}
        approved = {r.target for r in records if r.action == "approval.approved"}
        at_processor = {r.refund_mcp_id for _, r in self._processor_refunds()}
        for row in rows:
            if row.origin != "agent" or not (row.id in at_processor or row.status in ("pending", "succeeded", "requires_action")):
                continue
            record = reserved.get(row.id)
            if checking("decision"):
                assert record is not None, f"{row.id} reached the processor without a reservation record"
                outcome = record["decision"]["outcome"]
                assert outcome in ("allow", "needs_confirmation", "needs_approval"), f"{row.id}: decision {outcome}"
                if record["action"] == "refund.pending_approval":
                    assert row.id in approved, f"{row.id} was parked for approval and reached the processor unapproved"
                assert row.amount_minor <= PER_REFUND[row.currency]
            outcome = record["decision"]["outcome"] if record is not None else None
            if row.reason == "fraudulent" and checking("currency"):  # the policy asks approval for fraud, whatever the currency
                assert row.id in approved, f"fraudulent {row.currency} refund {row.id} reached the processor without approval"
            if row.id in self.confirmed and checking("confirmed_amount"):  # whatever the decision became
                assert row.amount_minor == self.confirmed[row.id], (
                    f"{row.id}: the human confirmed {self.confirmed[row.id]}, {row.amount_minor} was reserved"
                )

    def approvals_are_decided_before_they_expire(self, rows: list[Any]) -> None:
        if not checking("approval_expiry"):
            return
        for row in rows:
            if row.approval_state == "approved":
                assert row.approval_decided_at <= row.approval_expires_at, f"{row.id} approved after its approval expired"

    def at_most_the_policy_count_of_refunds_per_payment(self, rows: list[Any]) -> None:
        if not checking("refunds_per_payment"):
            return
        per_payment: dict[str, int] = {}  # by the payment's id at the processor, whatever name each refund used
        for row in rows:
            if row.origin == "agent" and row.status not in ("failed", "cancelled"):
                payment = self.payment_of(row)
                per_payment[payment] = per_payment.get(payment, 0) + 1
        assert all(count <= MAX_REFUNDS_PER_PAYMENT for count in per_payment.values()), f"refunds per payment: {per_payment}"

    def no_final_state_regresses(self, rows: list[Any]) -> None:
        if not checking("no_regress"):
            return
        for row in rows:
            new = RefundStatus(row.status)
            old = self.last_status.get(row.id)
            if old is not None and old.is_final and old != new:
                assert (old, new) in FLIPS, f"{row.id} went from {old} to {new}"
            self.last_status[row.id] = new

    # ------------------------------------------------------------------ settling

    def settle_and_check_books(self) -> None:
        for processor in self.processors.values():
            processor.faults.clear()
            processor.search_faults = 0
        self._release_everything()
        for _ in range(4):
            self.clock.now += timedelta(hours=1)
            for service in self.services:
                self.run(run_once(service))
                self._release_everything()
            self._deliver_all_events()
            for row in [r for r in self.refunds() if r.status == "queued" and r.next_attempt_at is None]:
                held = [r for r in self.processors[row.processor].refunds.values() if r.refund_mcp_id == row.id]
                if not held:  # the honest operator checked: nothing there
                    self.run(self.services[0].resolve_queued(row.id, outcome="failed", operator="ops"))
        self._release_everything()
        self._deliver_all_events()
        rows = self.refunds()
        ours = {(r.processor, r.processor_refund_id): r for r in rows if r.processor_refund_id}
        # Refunds the processor failed and then succeeded (Adyen's flip): checked on their own.
        flipped = {r.id for _, r in self._processor_refunds() if RefundStatus.FAILED in r.history[:-1]}
        for processor, refund in self._processor_refunds():
            if refund.id in flipped and checking("adyen_flip"):
                row = ours.get((processor.name, refund.id))
                assert row is not None and row.status == refund.status.value, (
                    f"{refund.id} failed, then succeeded at {processor.name}; ours is {row.status if row else 'missing'}"
                )
        if not checking("books"):
            return
        stuck = [(r.id, r.last_error) for r in rows if r.status == "queued"]
        assert not stuck, f"refunds still queued after settling: {stuck}"
        for processor, refund in self._processor_refunds():
            if refund.id in flipped:
                continue
            row = ours.get((processor.name, refund.id))
            assert row is not None, f"{processor.name} refund {refund.id} ({refund.status}, ours {refund.refund_mcp_id}) is not in our books"
            assert row.status == refund.status.value, f"{row.id} is {row.status}, {refund.id} is {refund.status} at {processor.name}"
        for processor in self.processors.values():
            for payment in {id(p): p for p in processor.payments.values()}.values():
                theirs = processor.payment_refunds(payment)
                if any(r.id in flipped for r in theirs):
                    continue
                names = {f"{processor.name}:{name}" for name in (payment.id, *payment.aliases)}
                mine = sum(r.amount_minor for r in rows if r.transaction_id in names and r.status == "succeeded")
                paid = sum(r.amount_minor for r in theirs if r.status is RefundStatus.SUCCEEDED)
                assert mine == paid, f"{processor.name} {payment.id}: we recorded {mine} refunded, the processor {paid}"

    def _release_everything(self) -> None:
        for _ in range(20):
            held = [h for p in self.processors.values() for h in p.held]
            for processor in self.processors.values():
                processor.held.clear()
            for gate in held:
                gate.gate.set()
            for task in list(self.pending_tasks):
                if self._drive(task):
                    self.pending_tasks.remove(task)
            if not self.pending_tasks:
                return
        raise AssertionError("attempts still held after releasing everything")

    def _deliver_all_events(self) -> None:
        for processor in self.processors.values():
            for event in list(processor.events):
                self.run(self.services[0].apply_event(event))

    def teardown(self) -> None:
        try:
            self.settle_and_check_books()
            if checking("audit_chain"):
                verified = self.loop.run_until_complete(verify_chain(self.dbs[0]))
                assert verified.ok, f"the audit chain does not verify: {verified}"
        finally:
            # Let every task end (cancelled ones too) and every connection close before the loop does:
            # a database thread that calls back into a closed loop would fail a later test.
            for task in self.pending_tasks:
                task.cancel()
            leftovers = [task for task in asyncio.all_tasks(self.loop) if not task.done()]

            async def finish() -> None:
                await asyncio.gather(*leftovers, return_exceptions=True)

            self.loop.run_until_complete(finish())
            for db in self.dbs:
                self.loop.run_until_complete(db.dispose())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.storage.close()


class PostgresMoneyMachine(MoneyMachine):
    """The same model with both replicas on one PostgreSQL database (each its own engine and pool)."""

    books = PostgresBooks
