"""`refund-mcp reconcile` through its CLI glue, against all four fakes."""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from refund_mcp.reconcile.cli import add_reconcile_parser, run_reconcile
from tests.webhooks import signing
from tests.webhooks.world import PAYMENT_IDS, World

pytestmark = pytest.mark.anyio


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="refund-mcp")
    add_reconcile_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["reconcile", *argv])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.out)


async def reconcile(world: World, *argv: str, err: io.StringIO | None = None) -> Run:
    out, err = io.StringIO(), err or io.StringIO()
    code = await run_reconcile(parse(*argv), app=world.app, out=out, err=err)
    return Run(code, out.getvalue(), err.getvalue())


@dataclass
class Mix:
    """What the seeded mix should produce."""

    fixed: dict[str, str] = field(default_factory=dict)  # refund id -> status after the run
    unknown: set[str] = field(default_factory=set)  # processor refund ids made behind our back
    matched: set[str] = field(default_factory=set)


async def seed_mix(world: World) -> Mix:
    """On each processor: a refund that matches, one whose status changed at the processor behind
    our back (drift), and one made directly at the processor (unknown to refund-mcp)."""
    mix = Mix()
    drift = {"stripe": ("succeeded", "succeeded"), "paypal": ("COMPLETED", "succeeded"), "square": ("REJECTED", "failed")}
    pending_words = {"stripe": "pending", "paypal": "PENDING", "square": None}
    for name, (word, ours_after) in drift.items():
        extra = {"refund_outcome": pending_words[name]} if pending_words[name] else {}
        transaction_id = await world.seed(name, **extra)
        matching = await world.refund(transaction_id, 1000)
        drifted = await world.refund(transaction_id, 2000)
        assert (matching["status"], drifted["status"]) == ("pending", "pending")
        world.fakes[name].set_refund_status(drifted["processor_refund_id"], word)
        mix.matched.add(matching["refund_id"])
        mix.fixed[drifted["refund_id"]] = ours_after
        behind_our_back = world.fakes[name].dashboard_refund(PAYMENT_IDS[name], 500, **({"status": "succeeded"} if name == "stripe" else {}))
        if name != "paypal":  # PayPal cannot list refunds: the report says so instead
            mix.unknown.add(behind_our_back["id"])
    transaction_id = await world.seed("adyen")
    await world.refund(transaction_id, 1000)  # Adyen cannot be queried at all: the report says so
    return mix


def _findings(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [finding for finding in report["findings"] if finding["kind"] == kind]


async def test_reconciliation_fixes_drift_and_reports_unknown_refunds_across_all_four_processors(world):
    mix = await seed_mix(world)
    run = await reconcile(world, "--format", "json")
    assert run.code == 1
    report = run.json()
    assert {f["refund_id"] for f in _findings(report, "fixed")} == set(mix.fixed)
    assert {f["processor_refund_id"] for f in _findings(report, "unknown")} == mix.unknown
    assert {f["kind"] for f in report["findings"]} == {"fixed", "unknown"}
    assert report["summary"] == {"matched": 3, "fixed": 3, "mismatched": 0, "unknown": 2, "missing": 0, "error": 0}
    assert report["needs_human"] is True
    for refund_id, status in mix.fixed.items():
        assert await world.status(refund_id) == status
        assert ("refund.reconciled", status, None) in await world.audit_actions(refund_id)
    notes = {p["processor"]: " ".join(p["notes"]) for p in report["processors"]}
    assert "cannot list refunds" in notes["paypal"]
    assert "1 refund(s) on record were not checked" in notes["adyen"]
    assert ("reconcile.run", "attention", None) in await world.audit_actions()


async def test_the_csv_report_lists_the_same_findings(world):
    mix = await seed_mix(world)
    run = await reconcile(world, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(run.out)))
    assert run.code == 1
    assert {row["refund_id"] for row in rows if row["kind"] == "fixed"} == set(mix.fixed)
    assert {row["processor_refund_id"] for row in rows if row["kind"] == "unknown"} == mix.unknown
    assert len(rows) == len(mix.fixed) + len(mix.unknown)
    assert all(row["our_amount_minor"].isdigit() for row in rows if row["kind"] == "fixed")


async def test_the_table_report_names_what_needs_a_human(world):
    await seed_mix(world)
    run = await reconcile(world)
    assert run.code == 1
    assert "Needs a human: 2 unknown" in run.out
    assert "note: paypal cannot list refunds" in run.out
    assert "pending -> succeeded" in run.out


async def test_a_second_run_has_nothing_left_to_fix_but_still_reports_the_unknown_refunds(world):
    mix = await seed_mix(world)
    await reconcile(world, "--format", "json")
    again = (await reconcile(world, "--format", "json")).json()
    assert again["summary"]["fixed"] == 0 and again["summary"]["matched"] == 6
    assert {f["processor_refund_id"] for f in _findings(again, "unknown")} == mix.unknown


async def test_everything_matching_or_fixed_exits_zero(world):
    transaction_id = await world.seed("paypal", refund_outcome="PENDING")
    matching = await world.refund(transaction_id, 1000)
    drifted = await world.refund(transaction_id, 2000)
    world.fakes["paypal"].set_refund_status(drifted["processor_refund_id"], "COMPLETED")
    run = await reconcile(world, "--processor", "paypal", "--format", "json")
    assert run.code == 0, run.out
    assert run.json()["summary"]["matched"] == 1 and run.json()["summary"]["fixed"] == 1
    assert await world.status(matching["refund_id"]) == "pending"
    table = await reconcile(world, "--processor", "paypal")
    assert table.code == 0 and "Everything matches or was fixed" in table.out


async def test_an_amount_that_differs_is_reported_as_mismatched_and_left_alone(world):
    transaction_id = await world.seed("stripe", refund_outcome="pending")
    refund = await world.refund(transaction_id, 1000)
    stripe_refund = world.fakes["stripe"].refunds[refund["processor_refund_id"]]
    stripe_refund.amount, stripe_refund.status = 1500, "succeeded"
    run = await reconcile(world, "--processor", "stripe", "--format", "json")
    [finding] = run.json()["findings"]
    assert (finding["kind"], finding["detail"]) == ("mismatched", "amount or currency differs")
    assert (finding["ours"]["amount_minor"], finding["theirs"]["amount_minor"]) == (1000, 1500)
    assert run.code == 1
    assert await world.status(refund["refund_id"]) == "pending"


async def test_a_refund_we_hold_as_failed_that_the_processor_says_succeeded_needs_a_human(world):
    transaction_id = await world.seed("stripe", refund_outcome="failed")
    refund = await world.refund(transaction_id, 1000)
    assert refund["status"] == "failed"
    world.fakes["stripe"].set_refund_status(refund["processor_refund_id"], "succeeded")
    run = await reconcile(world, "--processor", "stripe", "--format", "json")
    [finding] = run.json()["findings"]
    assert finding["kind"] == "mismatched" and "ours failed, processor succeeded" in finding["detail"]
    assert await world.status(refund["refund_id"]) == "failed"


async def test_a_refund_the_processor_does_not_know_is_reported_missing(world):
    transaction_id = await world.seed("square")
    refund = await world.refund(transaction_id, 1000)
    del world.fakes["square"].refunds[refund["processor_refund_id"]]
    run = await reconcile(world, "--processor", "square", "--format", "json")
    [finding] = run.json()["findings"]
    assert (finding["kind"], finding["refund_id"]) == ("missing", refund["refund_id"])
    assert run.code == 1


async def test_an_unknown_refund_names_our_refund_whose_answer_was_lost(world):
    transaction_id = await world.seed("square")
    world.fakes["square"].faults.next_timeout_after_commit = 1
    queued = await world.refund(transaction_id, 1000)
    assert queued["status"] == "queued"
    [finding] = (await reconcile(world, "--processor", "square", "--format", "json")).json()["findings"]
    assert finding["kind"] == "unknown" and queued["refund_id"] in finding["detail"]
    world.fakes["square"].release_stalled()


async def test_a_processor_that_cannot_be_reached_is_reported_as_an_error(world):
    transaction_id = await world.seed("stripe", refund_outcome="pending")
    refund = await world.refund(transaction_id, 1000)
    world.fakes["stripe"].faults.next_503 = 1  # the listing fails; the refund itself is still read
    run = await reconcile(world, "--processor", "stripe", "--format", "json")
    report = run.json()
    assert run.code == 1
    assert [f["kind"] for f in report["findings"]] == ["error"]
    assert report["summary"]["matched"] == 1
    assert await world.status(refund["refund_id"]) == "pending"


async def test_refunds_before_since_are_left_out(world):
    transaction_id = await world.seed("paypal", refund_outcome="PENDING")
    await world.refund(transaction_id, 1000)
    run = await reconcile(world, "--processor", "paypal", "--since", "2999-01-01", "--format", "json")
    assert run.json()["summary"]["matched"] == 0 and run.json()["since"] == "2999-01-01T00:00:00Z"


async def test_progress_goes_to_stderr_only_on_a_terminal(world):
    transaction_id = await world.seed("paypal", refund_outcome="PENDING")
    await world.refund(transaction_id, 1000)
    await world.refund(transaction_id, 2000)
    terminal = Terminal()
    await reconcile(world, "--processor", "paypal", err=terminal)
    assert "paypal: 1/2" in terminal.getvalue() and "paypal: 2/2" in terminal.getvalue()
    piped = await reconcile(world, "--processor", "paypal")
    assert piped.err == ""


async def test_an_unconfigured_processor_is_a_usage_error(world):
    run = await reconcile(world, "--processor", "sandbox")
    assert run.code == 2 and "not configured" in run.err and run.out == ""


@pytest.mark.parametrize("argv", [["--since", "last tuesday"], ["--format", "xml"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert "reconcile" in capsys.readouterr().err


def test_since_accepts_a_date_or_a_time_and_means_utc_without_an_offset():
    assert parse("--since", "2026-01-31").since.isoformat() == "2026-01-31T00:00:00+00:00"
    assert parse("--since", "2026-01-31T09:30:00+02:00").since.isoformat() == "2026-01-31T09:30:00+02:00"
    assert parse("--since", "2026-01-31T09:30:00Z").since.isoformat() == "2026-01-31T09:30:00+00:00"


async def test_an_external_refund_recorded_from_a_webhook_is_not_unknown(world):
    transaction_id = await world.seed("stripe")
    assert await world.refundable(transaction_id) == 10000
    obj = world.fakes["stripe"].dashboard_refund(PAYMENT_IDS["stripe"], 700, status="succeeded")
    assert (await world.send("stripe", world.stripe_delivery("refund.created", obj))).status_code == 200
    run = await reconcile(world, "--processor", "stripe", "--format", "json")
    assert run.code == 0 and run.json()["summary"]["matched"] == 1


async def test_adyen_refunds_are_reported_as_not_checkable(world):
    transaction_id = await world.seed("adyen")
    refund = await world.refund(transaction_id, 1000)
    await world.deliver_adyen(
        signing.adyen_item("REFUND", refund["processor_refund_id"], value=1000, original_reference=PAYMENT_IDS["adyen"],
                           merchant_reference=refund["refund_id"])
    )
    run = await reconcile(world, "--processor", "adyen", "--format", "json")
    assert run.code == 0
    [adyen_result] = run.json()["processors"]
    assert adyen_result["not_checked"] == 1 and adyen_result["listed"] is None


async def test_running_totals_that_differ_from_the_refunds_need_a_human(world):
    from sqlalchemy import text

    transaction_id = await world.seed("paypal", refund_outcome="PENDING")
    await world.refund(transaction_id, 1000)
    clean = await reconcile(world, "--processor", "paypal", "--format", "json")
    assert clean.code == 0 and _findings(clean.json(), "mismatched") == []
    async with world.app.db.write() as conn:  # what a write that bypassed the triggers would leave
        payment = (await conn.execute(text("SELECT transaction_id FROM refunds"))).scalar_one()
        await conn.execute(text("UPDATE transactions SET reserved_minor = reserved_minor + 5 WHERE id = :id"), {"id": payment})
    run = await reconcile(world, "--processor", "paypal", "--format", "json")
    assert run.code == 1
    [finding] = _findings(run.json(), "mismatched")
    assert finding["transaction_id"] == payment and "reserved_minor 1005 (its refunds sum to 1000)" in finding["detail"]
