"""The reconciliation report as a table (people), CSV (spreadsheets) or JSON (programs).

All three list the same lines: every finding except the matches, which only appear in the
counts. Amounts are minor units in CSV and JSON, and display strings in the table.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from refund_mcp.domain.money import format_display
from refund_mcp.reconcile.engine import Finding, Kind, Report, Side
from refund_mcp.reconcile.formats import FORMATS

CSV_COLUMNS = (
    "processor",
    "kind",
    "refund_id",
    "processor_refund_id",
    "transaction_id",
    "our_status",
    "our_amount_minor",
    "our_currency",
    "processor_status",
    "processor_amount_minor",
    "processor_currency",
    "processor_word",
    "detail",
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _side_json(side: Side | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {"status": side.status, "amount_minor": side.amount_minor, "currency": side.currency}


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "processor": finding.processor,
        "kind": finding.kind.value,
        "refund_id": finding.refund_id,
        "processor_refund_id": finding.processor_refund_id,
        "transaction_id": finding.transaction_id,
        "ours": _side_json(finding.ours),
        "theirs": _side_json(finding.theirs),
        "processor_status": finding.processor_status,
        "detail": finding.detail,
    }


def as_json(report: Report) -> str:
    return json.dumps(
        {
            "since": _iso(report.since),
            "generated_at": _iso(report.generated_at),
            "needs_human": report.needs_human,
            "summary": report.summary,
            "processors": [
                {
                    "processor": result.processor,
                    "checked": result.checked,
                    "listed": result.listed,
                    "not_checked": result.not_checked,
                    "notes": result.notes,
                }
                for result in report.processors
            ],
            "findings": [_finding_json(finding) for finding in report.reported],
        },
        indent=2,
    )


def as_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for finding in report.reported:
        ours, theirs = finding.ours, finding.theirs
        writer.writerow(
            [
                finding.processor,
                finding.kind.value,
                finding.refund_id or "",
                finding.processor_refund_id or "",
                finding.transaction_id or "",
                ours.status if ours else "",
                ours.amount_minor if ours else "",
                ours.currency if ours else "",
                theirs.status if theirs else "",
                theirs.amount_minor if theirs else "",
                theirs.currency if theirs else "",
                finding.processor_status or "",
                finding.detail,
            ]
        )
    return out.getvalue()


def _cell(side: Side | None) -> str:
    if side is None:
        return "-"
    return f"{format_display(side.amount_minor, side.currency)} {side.status}"


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)


def as_table(report: Report) -> str:
    lines = [f"Refunds since {_iso(report.since)} (report of {_iso(report.generated_at)})", ""]
    per_processor = [["PROCESSOR", "CHECKED", "LISTED", "NOT CHECKED", *(kind.value.upper() for kind in Kind)]]
    for result in report.processors:
        mine = [finding for finding in report.findings if finding.processor == result.processor]
        per_processor.append(
            [
                result.processor,
                str(result.checked),
                "-" if result.listed is None else str(result.listed),
                str(result.not_checked),
                *(str(sum(1 for finding in mine if finding.kind is kind)) for kind in Kind),
            ]
        )
    lines.append(_columns(per_processor))
    notes = [note for result in report.processors for note in result.notes]
    if notes:
        lines += ["", *(f"note: {note}" for note in notes)]
    if report.reported:
        rows = [["KIND", "PROCESSOR", "REFUND", "PROCESSOR REFUND", "TRANSACTION", "OURS", "PROCESSOR SAYS", "DETAIL"]]
        for finding in report.reported:
            rows.append(
                [
                    finding.kind.value,
                    finding.processor,
                    finding.refund_id or "-",
                    finding.processor_refund_id or "-",
                    finding.transaction_id or "-",
                    _cell(finding.ours),
                    _cell(finding.theirs),
                    finding.detail,
                ]
            )
        lines += ["", _columns(rows)]
    lines.append("")
    if report.needs_human:
        attention = {kind: report.count(kind) for kind in (Kind.MISMATCHED, Kind.UNKNOWN, Kind.MISSING, Kind.ERROR)}
        lines.append(
            "Needs a human: " + ", ".join(f"{count} {kind.value}" for kind, count in attention.items() if count)
        )
    else:
        lines.append(f"Everything matches or was fixed ({report.count(Kind.FIXED)} fixed).")
    return "\n".join(lines) + "\n"


def render(report: Report, fmt: str) -> str:
    """The report in one of FORMATS. Raises ValueError for another format."""
    if fmt == "json":
        return as_json(report) + "\n"
    if fmt == "csv":
        return as_csv(report)
    if fmt == "table":
        return as_table(report)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
