"""`refund-mcp reconcile [--processor P] [--since DATE] [--format table|csv|json]`.

Exit codes: 0 everything matched or was fixed; 1 something needs a human (mismatched, unknown
at the processor, missing at the processor, or a processor that could not be read); 2 usage
errors (an unparseable date, a processor that is not configured). The report goes to stdout;
progress ("stripe: 120/500") goes to stderr, only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from refund_mcp.reconcile.formats import FORMATS

EXIT_OK = 0
EXIT_NEEDS_HUMAN = 1
EXIT_USAGE = 2
DEFAULT_DAYS = 30


def parse_since(text: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is UTC. Raises argparse.ArgumentTypeError."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2026-01-31 or 2026-01-31T09:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def add_reconcile_parser(subparsers: Any) -> None:
    """Add the `reconcile` subcommand to the refund-mcp parser's subparsers."""
    parser = subparsers.add_parser(
        "reconcile",
        help="compare refund states with the processors; fix safe drift, report the rest",
        description=(
            "Compare refund-mcp's refunds with each processor (status, amount, currency, existence). "
            "Status drift the status rules allow is fixed and audited; everything else is reported. "
            "Exit 0: all matched or fixed; 1: something needs a human; 2: usage error."
        ),
    )
    parser.add_argument("--processor", default=None, help="only this processor (default: every configured one)")
    parser.add_argument(
        "--since",
        type=parse_since,
        default=None,
        help=f"refunds created since this ISO date or time, UTC unless it says otherwise (default: {DEFAULT_DAYS} days ago)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="report format (default: table)")


class _Progress:
    """One self-overwriting status line on a terminal; nothing otherwise (pipes, CI logs)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False

    def __call__(self, message: str) -> None:
        self.stream.write(f"\r{message}\x1b[K")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


async def run_reconcile(args: argparse.Namespace, *, app: Any = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command; `app` (refund_mcp.app.App) is built from the environment unless given."""
    from refund_mcp.reconcile.engine import reconcile
    from refund_mcp.reconcile.report import render

    out = out or sys.stdout
    err = err or sys.stderr
    since = args.since or datetime.now(UTC) - timedelta(days=DEFAULT_DAYS)
    owned = app is None
    if owned:
        from refund_mcp.app import App
        from refund_mcp.settings import Settings

        app = await App.create(Settings.from_env())
    try:
        configured = app.processors.names()
        if args.processor is not None and args.processor not in configured:
            print(
                f"refund-mcp reconcile: processor {args.processor!r} is not configured; configured: {', '.join(configured) or 'none'}",
                file=err,
            )
            return EXIT_USAGE
        progress = _Progress(err) if err.isatty() else None
        report = await reconcile(
            app, since=since, processors=[args.processor] if args.processor else None, progress=progress
        )
        if progress is not None:
            progress.done()
        out.write(render(report, args.format))
        out.flush()
        return EXIT_NEEDS_HUMAN if report.needs_human else EXIT_OK
    finally:
        if owned:
            await app.aclose()
