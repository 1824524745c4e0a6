"""transactions: running refund totals kept by triggers; cap_usage: hourly buckets for the daily caps

A payment's balance and the rolling daily caps were re-summed from its refunds on every refund
(O(refunds)). Now `transactions` carries the sums `queries.balance` needs, and `cap_usage` holds, per
scope (`*` for everyone, `actor:<name>`), currency and hour, the amount of agent refunds that count
against a daily cap. Triggers on `refunds` keep both right on every write path (service, webhooks,
reconcile, operators, bulk inserts): any change of status, amount, maybe_sent or payment moves the
payment's totals; a counted refund that stops (or starts again) counting moves its creation hour's
buckets. The one increment the triggers leave out is a new agent refund's: the reservation takes it
itself, as its last statement, checked against the cap (queries.take_cap_usage).

Existing rows are backfilled from the refunds. Triggers are not part of tables.py (autogenerate
ignores them); this revision is their only definition.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOTAL_COLUMNS = ("reserved_minor", "succeeded_minor", "at_processor_minor", "active_refunds")

# What one refund adds to its payment's totals, as SQL over a row alias (NEW, OLD, or a table).
# These are queries.balance's rules: reserving statuses reserve; pending/requires_action (and a queued
# refund that may have reached the processor) are inside the processor's "refunded so far".
_RESERVING = "('pending_approval', 'queued', 'pending', 'requires_action')"
_COUNTED = "('pending_approval', 'queued', 'pending', 'requires_action', 'succeeded')"


def _contributions(row: str, true: str) -> dict[str, str]:
    return {
        "reserved_minor": f"CASE WHEN {row}.status IN {_RESERVING} THEN {row}.amount_minor ELSE 0 END",
        "succeeded_minor": f"CASE WHEN {row}.status = 'succeeded' THEN {row}.amount_minor ELSE 0 END",
        "at_processor_minor": (
            f"CASE WHEN {row}.status IN ('pending', 'requires_action') OR ({row}.status = 'queued' AND {row}.maybe_sent = {true}) "
            f"THEN {row}.amount_minor ELSE 0 END"
        ),
        "active_refunds": f"CASE WHEN {row}.status IN ('failed', 'cancelled') THEN 0 ELSE 1 END",
    }


def _cap_counted(row: str) -> str:
    """Whether a refund counts against the daily caps (agent refunds reserving or succeeded)."""
    return f"{row}.origin = 'agent' AND {row}.status IN {_COUNTED}"


# --- SQLite: one trigger per event; each statement applies one row image (OLD subtracts, NEW adds).
# created_at is stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC), so its hour is a prefix.


def _sqlite_hour(row: str) -> str:
    return f"substr({row}.created_at, 1, 13) || ':00:00.000000'"


def _sqlite_totals(row: str, sign: str) -> str:
    sets = ", ".join(f"{column} = {column} {sign} ({expr})" for column, expr in _contributions(row, "1").items())
    return f"UPDATE transactions SET {sets} WHERE id = {row}.transaction_id;"


def _sqlite_caps(row: str, sign: str) -> str:
    statements = []
    for scope in ("'*'", f"'actor:' || {row}.actor"):
        statements.append(
            f"INSERT INTO cap_usage (scope, currency, hour_start, amount_minor) "
            f"SELECT {scope}, {row}.currency, {_sqlite_hour(row)}, {sign}{row}.amount_minor WHERE {_cap_counted(row)} "
            f"ON CONFLICT (scope, currency, hour_start) DO UPDATE SET amount_minor = cap_usage.amount_minor + excluded.amount_minor;"
        )
    return "\n".join(statements)


_WATCHED = "status, amount_minor, maybe_sent, transaction_id, origin, actor, currency, created_at"

SQLITE_TRIGGERS = {
    "refunds_totals_insert": f"""CREATE TRIGGER refunds_totals_insert AFTER INSERT ON refunds BEGIN
{_sqlite_totals("NEW", "+")}
END""",
    "refunds_totals_update": f"""CREATE TRIGGER refunds_totals_update AFTER UPDATE OF {_WATCHED} ON refunds BEGIN
{_sqlite_totals("OLD", "-")}
{_sqlite_totals("NEW", "+")}
{_sqlite_caps("OLD", "-")}
{_sqlite_caps("NEW", "")}
END""",
    "refunds_totals_delete": f"""CREATE TRIGGER refunds_totals_delete AFTER DELETE ON refunds BEGIN
{_sqlite_totals("OLD", "-")}
{_sqlite_caps("OLD", "-")}
END""",
}

# --- PostgreSQL: one plpgsql function. Lock order: the refund row (the statement's), then its payment,
# then the '*' bucket, then the actor's bucket, the same order the reservation takes them in.


def _pg_function() -> str:
    old, new = _contributions("OLD", "true"), _contributions("NEW", "true")
    declare = "\n".join(f"  o_{c} bigint := 0; n_{c} bigint := 0;" for c in TOTAL_COLUMNS)
    take_old = "\n".join(f"    o_{c} := {old[c]};" for c in TOTAL_COLUMNS)
    take_new = "\n".join(f"    n_{c} := {new[c]};" for c in TOTAL_COLUMNS)
    moved = " OR ".join(f"n_{c} <> o_{c}" for c in TOTAL_COLUMNS)
    delta = ", ".join(f"{c} = {c} + n_{c} - o_{c}" for c in TOTAL_COLUMNS)
    minus = ", ".join(f"{c} = {c} - o_{c}" for c in TOTAL_COLUMNS)
    plus = ", ".join(f"{c} = {c} + n_{c}" for c in TOTAL_COLUMNS)
    hour = "date_trunc('hour', {row}.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    return f"""CREATE OR REPLACE FUNCTION refunds_running_totals() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
{declare}
  o_cap bigint := 0; n_cap bigint := 0;
  bucket_scope text;
BEGIN
  IF TG_OP <> 'INSERT' THEN
{take_old}
    IF {_cap_counted("OLD")} THEN o_cap := OLD.amount_minor; END IF;
  END IF;
  IF TG_OP <> 'DELETE' THEN
{take_new}
    -- A new refund's cap usage is taken by the reservation itself (checked against the cap).
    IF TG_OP = 'UPDATE' AND {_cap_counted("NEW")} THEN n_cap := NEW.amount_minor; END IF;
  END IF;

  IF TG_OP = 'UPDATE' AND OLD.transaction_id = NEW.transaction_id THEN
    IF {moved} THEN
      UPDATE transactions SET {delta} WHERE id = NEW.transaction_id;
    END IF;
  ELSE
    IF TG_OP <> 'INSERT' THEN
      UPDATE transactions SET {minus} WHERE id = OLD.transaction_id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
      UPDATE transactions SET {plus} WHERE id = NEW.transaction_id;
    END IF;
  END IF;

  IF TG_OP = 'UPDATE' AND OLD.actor = NEW.actor AND OLD.currency = NEW.currency AND OLD.created_at = NEW.created_at THEN
    IF n_cap <> o_cap THEN
      FOREACH bucket_scope IN ARRAY ARRAY['*', 'actor:' || NEW.actor] LOOP
        INSERT INTO cap_usage (scope, currency, hour_start, amount_minor) VALUES (bucket_scope, NEW.currency, {hour.format(row="NEW")}, n_cap - o_cap)
        ON CONFLICT (scope, currency, hour_start) DO UPDATE SET amount_minor = cap_usage.amount_minor + excluded.amount_minor;
      END LOOP;
    END IF;
  ELSE
    IF o_cap <> 0 THEN
      FOREACH bucket_scope IN ARRAY ARRAY['*', 'actor:' || OLD.actor] LOOP
        INSERT INTO cap_usage (scope, currency, hour_start, amount_minor) VALUES (bucket_scope, OLD.currency, {hour.format(row="OLD")}, -o_cap)
        ON CONFLICT (scope, currency, hour_start) DO UPDATE SET amount_minor = cap_usage.amount_minor + excluded.amount_minor;
      END LOOP;
    END IF;
    IF n_cap <> 0 THEN
      FOREACH bucket_scope IN ARRAY ARRAY['*', 'actor:' || NEW.actor] LOOP
        INSERT INTO cap_usage (scope, currency, hour_start, amount_minor) VALUES (bucket_scope, NEW.currency, {hour.format(row="NEW")}, n_cap)
        ON CONFLICT (scope, currency, hour_start) DO UPDATE SET amount_minor = cap_usage.amount_minor + excluded.amount_minor;
      END LOOP;
    END IF;
  END IF;
  RETURN NULL;
END
$body$"""


PG_TRIGGER = (
    f"CREATE TRIGGER refunds_running_totals AFTER INSERT OR DELETE OR UPDATE OF {_WATCHED} ON refunds "
    "FOR EACH ROW EXECUTE FUNCTION refunds_running_totals()"
)


def _backfill(dialect: str) -> None:
    true = "true" if dialect == "postgresql" else "1"
    sets = ", ".join(
        f"{column} = (SELECT COALESCE(SUM({expr}), 0) FROM refunds r WHERE r.transaction_id = transactions.id)"
        for column, expr in _contributions("r", true).items()
    )
    op.execute(f"UPDATE transactions SET {sets}")
    hour = _sqlite_hour("r") if dialect == "sqlite" else "date_trunc('hour', r.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    for scope, by in (("'*'", ""), ("'actor:' || r.actor", "r.actor, ")):
        op.execute(
            f"INSERT INTO cap_usage (scope, currency, hour_start, amount_minor) "
            f"SELECT {scope}, r.currency, {hour}, SUM(r.amount_minor) FROM refunds r WHERE {_cap_counted('r')} "
            f"GROUP BY {by}r.currency, {hour}"
        )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for column in TOTAL_COLUMNS:
        op.add_column("transactions", sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "cap_usage",
        sa.Column("scope", sa.String(length=210), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("hour_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "currency", "hour_start"),
        sqlite_with_rowid=False,
    )
    _backfill(dialect)
    if dialect == "postgresql":
        op.execute(_pg_function())
        op.execute(PG_TRIGGER)
    else:
        for ddl in SQLITE_TRIGGERS.values():
            op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER refunds_running_totals ON refunds")
        op.execute("DROP FUNCTION refunds_running_totals()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("cap_usage")
    # Not a batch (copy-and-move) on SQLite: dropping the old table would break the refunds' foreign keys.
    # SQLite >= 3.35 drops a column in place, as PostgreSQL does.
    for column in reversed(TOTAL_COLUMNS):
        op.execute(f"ALTER TABLE transactions DROP COLUMN {column}")
