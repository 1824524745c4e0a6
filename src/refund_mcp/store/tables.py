"""Table definitions (SQLAlchemy Core). Every change here needs an Alembic revision (store/alembic/README), never create_all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Always tz-aware UTC in Python; SQLite hands back naive values, PostgreSQL aware ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

transactions = Table(
    "transactions",
    metadata,
    Column("id", String(200), primary_key=True),  # "processor:id"
    Column("processor", String(20), nullable=False),
    Column("processor_transaction_id", String(180), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("captured_minor", BigInteger, nullable=False),
    # What the processor last said was refunded (ours included); refunds made elsewhere are derived from it.
    Column("processor_refunded_minor", BigInteger, nullable=False, default=0),
    Column("status", String(40), nullable=False),
    Column("refundable", Boolean, nullable=False, default=True),
    Column("customer_ref", String(320)),
    Column("description", Text),
    Column("created_at", UTCDateTime),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Running totals of this payment's refunds, kept by triggers on `refunds` (revision 0011) so that
    # queries.balance reads one row instead of summing the refunds. Never written by application code.
    Column("reserved_minor", BigInteger, nullable=False, server_default="0"),  # reserving statuses
    Column("succeeded_minor", BigInteger, nullable=False, server_default="0"),
    # pending/requires_action, or queued with maybe_sent: already inside processor_refunded_minor
    Column("at_processor_minor", BigInteger, nullable=False, server_default="0"),
    Column("active_refunds", BigInteger, nullable=False, server_default="0"),  # not failed/cancelled
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("transaction_id", String(200), ForeignKey("transactions.id"), nullable=False),
    Column("processor", String(20), nullable=False),
    Column("processor_refund_id", String(200)),
    Column("status", String(20), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", String(40), nullable=False),
    Column("note", Text),
    Column("actor", String(200), nullable=False),
    Column("customer_ref", String(320)),
    Column("origin", String(20), nullable=False, default="agent"),  # agent | external
    # sha256 of (actor, transaction, amount, currency, reason): finds repeated tool calls.
    Column("fingerprint", String(64), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    # For queued refunds: when the worker may take it next. Also a lease: whoever submits pushes it forward.
    Column("next_attempt_at", UTCDateTime),
    Column("retry_deadline_at", UTCDateTime),
    # In flight: a submission to the processor is under way until this time (a lease; a crash lets it lapse).
    Column("claimed_until", UTCDateTime),
    # True once an attempt ended with an unknown outcome: the processor may hold this refund already,
    # so it can no longer be cancelled locally, only completed by retrying with the same key.
    Column("maybe_sent", Boolean, nullable=False, default=False),
    # Fencing token: every claim (reservation, worker, approval, operator retry) increments it, and every
    # write after a processor call is conditional on the attempt's own token, so an attempt that lost its
    # claim (its lease lapsed and another worker took over) changes nothing.
    Column("claim_token", Integer, nullable=False, default=0, server_default="0"),
    # The idempotency key sent is the refund id for generation 0 and "<id>.<n>" after; a new generation is
    # started only after the processor was searched and holds no refund of ours (service/resend.py).
    Column("key_generation", Integer, nullable=False, default=0, server_default="0"),
    # When the current key was first (possibly) sent: its age decides whether it may be sent again.
    Column("key_first_sent_at", UTCDateTime),
    # The next attempt must search the processor before sending (after a complete 5xx answer, which
    # Stripe stores under the key, or a balance refusal of a resend, or an inconclusive search).
    Column("lookup_first", Boolean, nullable=False, default=False, server_default=false()),
    Column("processor_status", String(40)),
    Column("processor_request_id", String(200)),
    Column("failure_reason", Text),
    Column("approval_state", String(20)),  # pending | approved | denied | expired
    Column("approval_reason", Text),
    Column("approval_decided_by", String(200)),
    Column("approval_decided_at", UTCDateTime),
    Column("approval_note", Text),
    Column("approval_expires_at", UTCDateTime),
    # Two-person approval: how many different humans must approve, and the first one's vote while
    # the refund waits for the second (added in schema version 5).
    Column("approvals_required", Integer),
    Column("approval_first_by", String(200)),
    Column("approval_first_at", UTCDateTime),
    Column("approval_first_note", Text),
    Column("policy_version", String(40)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # The caller's metadata, a JSON object of strings (service/metadata.py bounds it); NULL when none.
    Column("refund_metadata", Text),
    UniqueConstraint("processor", "processor_refund_id", name="uq_refunds_processor_refund_id"),
)
Index("ix_refunds_transaction", refunds.c.transaction_id, refunds.c.status)
Index("ix_refunds_created", refunds.c.created_at, refunds.c.id)
Index("ix_refunds_fingerprint", refunds.c.fingerprint, refunds.c.created_at)
Index("ix_refunds_due", refunds.c.status, refunds.c.next_attempt_at)
Index("ix_refunds_actor_created", refunds.c.actor, refunds.c.created_at)
# Covering indexes of revision 0009, from when every refund re-summed its payment's refunds and the day's. Since
# revision 0011 those sums are running totals and hourly counters: ix_refunds_balance serves reconcile's check of
# the totals (queries.running_total_mismatches); ix_refunds_daily_totals is read by nothing and can go in a later
# revision.
Index("ix_refunds_balance", refunds.c.transaction_id, refunds.c.status, refunds.c.maybe_sent, refunds.c.amount_minor)
Index(
    "ix_refunds_daily_totals",
    refunds.c.currency,
    refunds.c.origin,
    refunds.c.status,
    refunds.c.created_at,
    refunds.c.actor,
    refunds.c.amount_minor,
)
# The console's filters: each is an equality on a leading column, then the keyset order.
Index("ix_refunds_status_created", refunds.c.status, refunds.c.created_at, refunds.c.id)
Index("ix_refunds_processor_created", refunds.c.processor, refunds.c.created_at, refunds.c.id)

# The daily caps' counters: agent refunds that count against a cap (reserving or succeeded), summed per
# scope ("*" for everyone, "actor:<name>"), currency and hour of creation. The reservation adds a new
# refund (queries.take_cap_usage, checked against the cap); triggers on `refunds` (revision 0011) move a
# refund's amount out of, or back into, its hour when it stops or starts counting. A window read sums
# about 25 rows per scope, a primary-key range (WITHOUT ROWID on SQLite: the rows are the index).
cap_usage = Table(
    "cap_usage",
    metadata,
    Column("scope", String(210), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("hour_start", UTCDateTime, primary_key=True),
    Column("amount_minor", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("actor", String(200), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("refund_id", String(32), ForeignKey("refunds.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

def _audit_record_columns() -> list[Column[Any]]:
    """The fields a record is looked up by, stored beside its body (sealed or pending alike)."""
    return [
        Column("at", UTCDateTime, nullable=False),
        Column("actor", String(200), nullable=False),
        Column("action", String(60), nullable=False),
        Column("target", String(200)),
        Column("outcome", String(40), nullable=False),
        Column("error_code", String(40)),
    ]


audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", AutoId, primary_key=True, autoincrement=True),
    *_audit_record_columns(),
    # The canonical JSON of the whole record (the columns above included); the hash covers it.
    Column("body", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_target", audit_log.c.target, audit_log.c.seq)

# PostgreSQL only: records appended but not yet sealed into `audit_log` (audit/sealing.py). Writers
# insert here in their own transaction without touching any shared row; the sealer gives them seq and
# hashes in id order. `body` is the record's canonical JSON without seq; `notification` the outbox row
# the record calls for (JSON, written when the record is sealed, so it can carry the record's seq).
audit_pending = Table(
    "audit_pending",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    *_audit_record_columns(),
    Column("body", Text, nullable=False),
    Column("notification", Text),
)
Index("ix_audit_pending_target", audit_pending.c.target, audit_pending.c.id)

# One row: the chain's head. Appending (SQLite) or sealing (PostgreSQL) locks it, so the chain never
# forks; on SQLite every write transaction is serialized anyway (BEGIN IMMEDIATE, store/database.py).
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Other names of a payment (Stripe: a charge's payment intent), each pointing at the one canonical
# "processor:id" its refunds, balance, limits and duplicates are counted under.
transaction_aliases = Table(
    "transaction_aliases",
    metadata,
    Column("alias", String(200), primary_key=True),  # "processor:id" as a caller or a processor may name it
    Column("bare_id", String(180), nullable=False),  # the alias without "processor:", for bare-id look-ups
    Column("transaction_id", String(200), nullable=False),  # the canonical "processor:id"
    Column("recorded_at", UTCDateTime, nullable=False),
)
Index("ix_transaction_aliases_bare", transaction_aliases.c.bare_id)
Index("ix_transaction_aliases_transaction", transaction_aliases.c.transaction_id)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("processor", String(20), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("received_at", UTCDateTime, nullable=False),
)

# Outbox of notifications to humans (webhook, Slack), written in the transaction of the state change
# it announces and delivered by the worker; `id` is the stable `webhook-id` receivers deduplicate on.
notifications = Table(
    "notifications",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(40), nullable=False),
    Column("refund_id", String(32)),
    Column("audit_seq", BigInteger),
    Column("body", Text, nullable=False),  # canonical JSON, no secrets
    Column("created_at", UTCDateTime, nullable=False),
    # Channels (webhook, slack) already delivered, comma-separated: a retry resends only the others.
    Column("delivered_channels", String(100), nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("next_attempt_at", UTCDateTime),  # null once delivered everywhere
    Column("claimed_until", UTCDateTime),
    Column("delivered_at", UTCDateTime),
)
Index("ix_notifications_due", notifications.c.next_attempt_at)

# Console sign-ins. Only a hash of the session id is stored: a leaked table opens no session.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("actor", String(200), nullable=False),
    Column("scopes", String(200), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("via", String(20), nullable=False),  # token | sso
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)
Index("ix_console_sessions_expires", console_sessions.c.expires_at)
