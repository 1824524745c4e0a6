"""The refund-mcp command. Subcommands are thin: they parse, call the service or a store helper, print.

On stdio the MCP protocol owns stdout, so everything human-readable goes to stderr there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _settings() -> Any:
    from refund_mcp.settings import Settings

    return Settings.from_env()


def _configure_logging(verbose: bool = False) -> None:
    from refund_mcp.observability.logs import formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(os.environ))  # REFUND_MCP_LOG_FORMAT=json: one JSON object per line
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # The SDK logs every tool refusal at INFO; ours are audited already.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def _startup_summary(settings: Any, policy: Any, accounts: list[str], transport: str, where: str) -> None:
    from refund_mcp.processors.sandbox import demo_transaction_ids

    lines = [
        f"refund-mcp serving on {transport} {where}".rstrip(),
        f"  database:   {settings.redacted_db_url()}",
        f"  policy:     {policy.path} (version {policy.engine().version})",
        f"  processors: {', '.join(accounts) or 'none'}",
    ]
    if "sandbox" in accounts:
        lines.append(f"  demo transactions (sandbox): {', '.join(demo_transaction_ids())}")
    print("\n".join(lines), file=sys.stderr, flush=True)


# ------------------------------------------------------------------ serve / worker


async def _serve(args: argparse.Namespace) -> int:
    import anyio

    from refund_mcp.app import LazyApp
    from refund_mcp.worker import checkpoint_schedule, run_app_worker

    settings = _settings()
    try:
        checkpoints = checkpoint_schedule(os.environ)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    http_auth = None
    if args.transport == "http":
        from refund_mcp.auth import AuthConfigError, load_auth_config, refuse_open_exposure

        from refund_mcp.console.oidc import OidcConfig, OidcConfigError

        try:
            http_auth = load_auth_config(os.environ, host=args.host, port=args.port)
            refuse_open_exposure(args.host, http_auth)
            OidcConfig.from_env(os.environ)  # the console's SSO: refuse a half-configured one before serving
        except (AuthConfigError, OidcConfigError) as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_USAGE
    # The policy and the accounts it names are checked now; the database and the processors on the first
    # tool call (stdio answers initialize and tools/list without them) or, over HTTP, before serving.
    app = LazyApp(settings)
    app.reload_policy_on_sighup()
    stop_worker = anyio.Event()
    try:
        if args.transport == "http":
            await app.get()
        async with anyio.create_task_group() as tg:
            if not args.no_worker:
                # Starts when the App is built: here already over HTTP, at the first tool call on stdio (so an
                # idle stdio session holds neither the database engine nor the processor clients).
                tg.start_soon(app.run_worker, lambda built: run_app_worker(built, checkpoints, stop_worker), stop_worker)
            if args.transport == "stdio":
                _startup_summary(settings, app.policy, app.accounts, "stdio", "")
                await app.server.run_stdio_async()
            else:
                from refund_mcp.http_app import serve_http

                _startup_summary(settings, app.policy, app.accounts, "http", f"http://{args.host}:{args.port}/mcp")
                await serve_http(await app.get(), args.host, args.port, auth=http_auth)
            # The client went away (stdin closed) or the HTTP server stopped: let the worker finish its pass.
            stop_worker.set()
    finally:
        await app.aclose()
    return EXIT_OK


async def _worker(args: argparse.Namespace) -> int:
    import anyio

    from refund_mcp.app import App
    from refund_mcp.audit.sealing import seal_all
    from refund_mcp.worker import checkpoint_schedule, run_app_worker, run_once

    try:
        checkpoints = checkpoint_schedule(os.environ)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    app = await App.create(_settings())
    try:
        if args.once:
            handled = await run_once(app.service, app.notifier)
            await seal_all(app.db.engine)  # a worker run from cron still seals what is pending
            print(f"handled {handled} item(s)", file=sys.stderr)
        else:
            print(f"refund-mcp worker running (processors: {', '.join(app.processors.names())})", file=sys.stderr)
            await run_app_worker(app, checkpoints, anyio.Event())
    finally:
        await app.aclose()
    return EXIT_OK


async def _console(args: argparse.Namespace) -> int:
    from refund_mcp.app import App
    from refund_mcp.auth import AuthConfigError
    from refund_mcp.console.standalone import build_console_app, serve_console

    app = await App.create(_settings())
    try:
        try:
            build_console_app(app, args.host, args.port)  # refuse a bad address or auth setting before serving
        except AuthConfigError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_USAGE
        print(f"refund-mcp console on http://{args.host}:{args.port}/console", file=sys.stderr, flush=True)
        await serve_console(app, args.host, args.port)
    finally:
        await app.aclose()
    return EXIT_OK


# ------------------------------------------------------------------ policy


def _policy(args: argparse.Namespace) -> int:
    from refund_mcp.policy import PolicyFileError, load_policy, policy_json_schema
    from refund_mcp.policy.coverage import uncovered_currency_warnings

    if args.policy_command == "schema":
        print(json.dumps(policy_json_schema(), indent=2, sort_keys=True))
        return EXIT_OK
    try:
        loaded = load_policy(args.file)
    except PolicyFileError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.file}: valid (version {loaded.version})")
    # Gaps are safe (deny by default) but likely unintended: warned about, not refused.
    for warning in uncovered_currency_warnings(loaded.policy):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ audit


WITHOUT_CHECKPOINTS = (
    "Without signed checkpoints this finds records edited, deleted or reordered in place, but not a chain "
    "rewritten consistently by someone with write access to the database (every later hash recomputed, or the "
    "newest records removed and audit_head moved back). Give --checkpoints FILE --public-key KEY to detect those."
)


async def _audit(args: argparse.Namespace) -> int:
    from refund_mcp.audit import checkpoints as signed
    from refund_mcp.audit import log as audit
    from refund_mcp.store.database import Database

    if args.audit_command == "keygen":
        try:
            kid = signed.generate_key_pair(Path(args.private), Path(args.public))
        except signed.CheckpointError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAILURE
        print(f"wrote {args.private} (keep it off the database host's backups; set REFUND_MCP_AUDIT_KEY to it) "
              f"and {args.public} (give it to whoever verifies); key id {kid}")
        return EXIT_OK
    settings = _settings()
    db = Database(settings.db_url)
    try:
        await db.migrate()
        if args.audit_command == "checkpoint":
            return await _audit_checkpoint(args, db)
        if args.audit_command == "verify":
            return await _audit_verify(args, db)
        out = open(args.output, "w", encoding="utf-8") if args.output not in (None, "-") else sys.stdout
        try:
            count = 0
            async for record in audit.export(db.engine):
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
        print(f"exported {count} record(s)", file=sys.stderr)
        return EXIT_OK
    except signed.CheckpointError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await db.dispose()


async def _audit_checkpoint(args: argparse.Namespace, db: Any) -> int:
    from datetime import UTC, datetime

    from refund_mcp.audit import checkpoints as signed

    key_path = args.key or os.environ.get("REFUND_MCP_AUDIT_KEY")
    if not key_path:
        print("no signing key: give --key FILE or set REFUND_MCP_AUDIT_KEY (make one with `refund-mcp audit keygen`)", file=sys.stderr)
        return EXIT_USAGE
    key = signed.load_private_key(Path(key_path))
    output = args.output or os.environ.get("REFUND_MCP_AUDIT_CHECKPOINTS")
    now = datetime.now(UTC)
    if output in (None, "-"):
        print((await signed.make_checkpoint(db.engine, key, prev=None, now=now)).line())
        return EXIT_OK
    made = await signed.append_checkpoint(db.engine, Path(output), key, now=now)
    print(f"checkpoint at record {made.seq} appended to {output}", file=sys.stderr)
    return EXIT_OK


async def _audit_verify(args: argparse.Namespace, db: Any) -> int:
    from refund_mcp.audit import checkpoints as signed
    from refund_mcp.audit import log as audit

    anchors = None
    if args.checkpoints or args.public_key:
        if not (args.checkpoints and args.public_key):
            print("give both --checkpoints FILE and --public-key KEY", file=sys.stderr)
            return EXIT_USAGE
        found = signed.read_file(Path(args.checkpoints))
        if not found:
            print(f"no checkpoints in {args.checkpoints}", file=sys.stderr)
            return EXIT_FAILURE
        anchors = signed.verify_file(found, signed.load_public_key(Path(args.public_key)))
    result = await audit.verify(db.engine, anchors=anchors)
    if not result.ok:
        print(f"audit chain BROKEN at record {result.bad_seq}: {result.problem}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"audit chain OK: {result.records} record(s)")
    for finding in audit.unsealed_findings(result):
        print(finding)
    if anchors is None:
        print(WITHOUT_CHECKPOINTS)
    else:
        newest = found[-1]
        print(
            f"{len(found)} signed checkpoint(s) hold: records 1-{newest.seq} are as signed (newest checkpoint {newest.at}); "
            f"records after {newest.seq} are covered by the hash chain only."
        )
    return EXIT_OK


# ------------------------------------------------------------------ approvals


async def _with_app(handler: Any) -> int:
    """Run an operator command against a fully built app; a refused decision prints its [code] and exits 1."""
    from refund_mcp.app import App
    from refund_mcp.domain.errors import RefundError

    app = await App.create(_settings())
    try:
        return await handler(app)
    except RefundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await app.aclose()


def _print_decision(view: Any) -> int:
    print(f"{view.refund_id}: {view.status} ({view.message})")
    return EXIT_OK


async def _approvals(args: argparse.Namespace) -> int:
    from refund_mcp.service.views import ApprovalInfo

    async def handle(app: Any) -> int:
        service = app.service
        if args.approvals_command == "list":
            rows = await service.pending_approvals()
            if not rows:
                print("no refunds are waiting for approval")
            for view in rows:
                # Until the worker's sweep runs, an expired one is still listed: say so, it can no longer be approved.
                when = "EXPIRED" if service.approval_is_expired(view.approval) else "expires"
                print(
                    f"{view.refund_id}  {view.amount_display:>14}  {view.transaction_id}  reason={view.reason}  "
                    f"by={view.actor}  {when}={view.approval.expires_at:%Y-%m-%d %H:%M}Z  "
                    f"approvals={len(view.approval.approved_by)}/{view.approval.approvals_required}  ({view.approval.reason})"
                )
            return EXIT_OK
        if args.approvals_command == "show":
            shown = await service.refund_with_trail(args.refund_id)
            approval = shown["refund"].get("approval")
            if approval is not None:
                approval["expired"] = service.approval_is_expired(ApprovalInfo.model_validate(approval))
            print(json.dumps(shown, indent=2, default=str))
            return EXIT_OK
        decide = service.approve if args.approvals_command == "approve" else service.deny
        return _print_decision(await decide(args.refund_id, approver=args.by, note=args.note))

    return await _with_app(handle)


# ------------------------------------------------------------------ refunds (operator decisions)


async def _refunds(args: argparse.Namespace) -> int:
    async def handle(app: Any) -> int:
        if args.refunds_command == "stuck":
            stuck = await app.service.stuck_refunds()
            if not stuck:
                print("no refunds are waiting for an operator")
            for view in stuck:
                print(f"{view.refund_id}  {view.amount_display:>14}  {view.transaction_id}  attempts={view.retry.attempts}  {view.retry.last_error}")
            return EXIT_OK
        outcome = "failed" if args.failed else "retry"
        return _print_decision(await app.service.resolve_queued(args.refund_id, outcome=outcome, operator=args.by, note=args.note))

    return await _with_app(handle)


# ------------------------------------------------------------------ db


async def _db(args: argparse.Namespace) -> int:
    from refund_mcp.store import migrations
    from refund_mcp.store.database import Database

    if args.db_command == "revision":
        path = migrations.write_revision(args.message, args.scratch_db or _scratch_sqlite_url())
        print(f"wrote {path}: review it, then run the tests in tests/store")
        return EXIT_OK
    db = Database(_settings().db_url)
    try:
        if args.db_command == "upgrade":
            for step in await db.migrate():
                print(f"applied {step.revision}: {step.description}")
        elif args.db_command == "downgrade":
            await migrations.downgrade(db.engine, args.to)
            print(f"downgraded to {args.to}")
        legacy = await migrations.legacy_version(db.engine)
        if legacy is not None:
            print(f"schema version {legacy} (refund-mcp 0.1.0 migrations): `refund-mcp db upgrade` adopts it, keeping every row")
        else:
            print(f"schema revision {await migrations.current_revision(db.engine) or 'none'} (head {migrations.head_revision()})")
        return EXIT_OK
    except migrations.SchemaTooNew as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await db.dispose()


def _scratch_sqlite_url() -> str:
    import tempfile

    return f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix='refund-mcp-revision-')) / 'scratch.sqlite3'}"


# ------------------------------------------------------------------ demo


def _demo(args: argparse.Namespace) -> int:
    from refund_mcp.demo import run_demo

    return asyncio.run(run_demo())


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refund-mcp", description="Refunds for LLM support agents, over MCP.")
    from refund_mcp import __version__

    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (to stderr)")
    parser.add_argument("--version", action="version", version=f"refund-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run the retry/status worker in this process (on stdio it starts with the first tool call, so refunds "
        "queued by an earlier session are retried then, or by any HTTP serve or `refund-mcp worker` on the same database)",
    )

    worker = sub.add_parser("worker", help="run the retry and status-sync loop alone")
    worker.add_argument("--once", action="store_true", help="one pass, then exit")

    console = sub.add_parser("console", help="serve the approvers' web console alone, on loopback")
    console.add_argument("--host", default="127.0.0.1")
    console.add_argument("--port", type=int, default=8766)

    sub.add_parser("demo", help="a scripted walk through every tool against the sandbox processor")

    policy = sub.add_parser("policy", help="validate a policy file or print its JSON Schema")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    policy_sub.add_parser("schema", help="print the policy JSON Schema")

    audit = sub.add_parser("audit", help="verify or export the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain (and signed checkpoints); non-zero exit if broken")
    verify.add_argument("--checkpoints", default=None, help="checkpoint file (JSON Lines) written by `audit checkpoint`")
    verify.add_argument("--public-key", default=None, help="the Ed25519 public key (PEM) the checkpoints are signed with")
    export = audit_sub.add_parser("export", help="write the log as JSON Lines")
    export.add_argument("-o", "--output", default="-", help="file (default: stdout)")
    checkpoint = audit_sub.add_parser("checkpoint", help="sign the chain's head with a key kept outside the database")
    checkpoint.add_argument("--key", default=None, help="Ed25519 private key (PEM); default $REFUND_MCP_AUDIT_KEY")
    checkpoint.add_argument(
        "-o", "--output", default=None, help="checkpoint file to append to; default $REFUND_MCP_AUDIT_CHECKPOINTS, else print it"
    )
    keygen = audit_sub.add_parser("keygen", help="make an Ed25519 key pair for audit checkpoints")
    keygen.add_argument("--private", required=True, help="where to write the private key (created 0600)")
    keygen.add_argument("--public", required=True, help="where to write the public key")

    approvals = sub.add_parser("approvals", help="decide refunds waiting for a human approver")
    approvals_sub = approvals.add_subparsers(dest="approvals_command", required=True)
    approvals_sub.add_parser("list")
    show = approvals_sub.add_parser("show")
    show.add_argument("refund_id")
    for verb in ("approve", "deny"):
        decide = approvals_sub.add_parser(verb)
        decide.add_argument("refund_id")
        decide.add_argument("--by", required=True, help="the approver's name (recorded in the audit log)")
        decide.add_argument("--note", default=None)

    refunds = sub.add_parser("refunds", help="operator decisions on refunds the worker could not complete")
    refunds_sub = refunds.add_subparsers(dest="refunds_command", required=True)
    refunds_sub.add_parser("stuck", help="queued refunds waiting for an operator (retry deadline passed, or in doubt on a processor that cannot be searched)")
    resolve = refunds_sub.add_parser("resolve", help="decide a stuck queued refund")
    resolve.add_argument("refund_id")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--failed", action="store_true", help="you checked the processor: nothing was refunded; release the amount")
    outcome.add_argument("--retry", action="store_true", help="retry under the resend rule: a refund whose key may have expired is searched for first; refused where the processor cannot be searched")
    resolve.add_argument("--by", required=True, help="the operator's name (recorded in the audit log)")
    resolve.add_argument("--note", default=None)

    from refund_mcp.reconcile.cli import add_reconcile_parser

    add_reconcile_parser(sub)

    from refund_mcp.auth.cli import add_tokens_parser

    add_tokens_parser(sub)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply pending schema migrations (serve and worker also do on start)")
    db_sub.add_parser("version", help="show the schema revision and the newest this refund-mcp knows")
    down = db_sub.add_parser("downgrade", help="undo revisions down to --to (take a backup first)")
    down.add_argument("--to", required=True, help="revision to stay at, or 'base' for an empty database")
    revision = db_sub.add_parser("revision", help="(development) write a revision for the changes in store/tables.py")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--scratch-db", default=None, help="database to compare against (default: a new SQLite file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.command in ("serve", "worker"):
        from refund_mcp.observability import tracing

        tracing.configure_from_env()  # off unless OTEL_EXPORTER_OTLP_ENDPOINT or REFUND_MCP_OTEL=1
    from refund_mcp.policy import PolicyFileError

    try:
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "worker":
            return asyncio.run(_worker(args))
        if args.command == "console":
            return asyncio.run(_console(args))
        if args.command == "demo":
            return _demo(args)
        if args.command == "policy":
            return _policy(args)
        if args.command == "audit":
            return asyncio.run(_audit(args))
        if args.command == "approvals":
            return asyncio.run(_approvals(args))
        if args.command == "db":
            return asyncio.run(_db(args))
        if args.command == "refunds":
            return asyncio.run(_refunds(args))
        if args.command == "reconcile":
            from refund_mcp.reconcile.cli import run_reconcile

            return asyncio.run(run_reconcile(args))
        if args.command == "tokens":
            from refund_mcp.auth.cli import run_tokens

            return run_tokens(args)
    except PolicyFileError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:
        from refund_mcp.console.oidc import OidcConfigError
        from refund_mcp.notify.settings import NotifyConfigError

        if not isinstance(exc, (NotifyConfigError, OidcConfigError)):
            raise
        print(str(exc), file=sys.stderr)  # names the variable, never its value
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The migrations module imports SQLAlchemy: only when something failed, not on serve's start path.
        from refund_mcp.store.migrations import SchemaTooNew

        if not isinstance(exc, SchemaTooNew):
            raise
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
