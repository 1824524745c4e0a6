"""Assembles the parts from Settings: database, processors, policy, service, MCP server.

`LazyApp` is how `serve` starts: what must be refused at start is checked at once (the policy file, the
accounts it names), the MCP server is built from its static tool definitions, and the database engine,
the store and the processor clients are imported and built on the first tool call, so `initialize` and
`tools/list` are answered without them; the background worker starts once that App exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from refund_mcp.policy import PolicyHolder, default_policy_path
from refund_mcp.server import RefundMCPServer, build_server
from refund_mcp.settings import Settings

if TYPE_CHECKING:
    from refund_mcp.domain.models import TransactionInfo
    from refund_mcp.notify.delivery import Notifier
    from refund_mcp.processors.registry import ProcessorRegistry
    from refund_mcp.service.refunds import RefundService
    from refund_mcp.store.database import Database


def stdio_actor(settings: Settings) -> Any:
    """On stdio there is no transport auth: the identity comes from configuration (REFUND_MCP_ACTOR)."""

    def actor_of(ctx: Any) -> str:
        from mcp.server.auth.middleware.auth_context import get_access_token

        token = get_access_token()
        return token.client_id if token is not None else settings.actor

    return actor_of


def configured_accounts(settings: Settings) -> list[str]:
    """The account names ProcessorRegistry.from_settings builds, in its order, without building any adapter."""
    names = [account for account, _processor, _config in settings.all_accounts()]
    return [*names, "sandbox"] if settings.sandbox else names


def check_policy_processors(policy: PolicyHolder, accounts: list[str]) -> None:
    """Refuse a policy naming an account that is neither configured nor a processor: account names are only
    checked by pattern when the policy is read, and a misspelt one would silently deny its refunds."""
    from refund_mcp.policy.schema import KNOWN_PROCESSORS

    loaded = policy.engine().loaded.policy
    named: set[str] = set()
    for source in (loaded, *loaded.rules, *loaded.actors.values()):
        named.update(getattr(source, "processors", None) or ())
    for rule in loaded.rules:
        named.update(rule.when.processor or () if rule.when is not None else ())
    known = {*KNOWN_PROCESSORS, "ucs", *accounts}
    unknown = sorted(name for name in named if name not in known)
    if unknown:
        raise ValueError(
            f"the policy names processors or accounts that are not configured: {', '.join(unknown)} "
            f"(configured: {', '.join(accounts)})"
        )


def _reload_policy_on_sighup(policy: PolicyHolder) -> None:
    import signal

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, policy.reload)


@dataclass
class App:
    settings: Settings
    db: Database
    processors: ProcessorRegistry
    policy: PolicyHolder
    service: RefundService
    server: RefundMCPServer
    notifier: Notifier | None = None  # set when REFUND_MCP_NOTIFY_URL or REFUND_MCP_SLACK_WEBHOOK_URL is

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        http: Any = None,
        migrate: bool = True,
        policy: PolicyHolder | None = None,
        server: RefundMCPServer | None = None,
    ) -> App:
        """Build the app; `http` (an httpx2.AsyncClient) is shared by all adapters when given (tests).

        `policy` and `server` are given by LazyApp, which made them before the rest existed."""
        from refund_mcp.domain.models import TransactionInfo
        from refund_mcp.observability.processors import metered
        from refund_mcp.observability.state import STATE
        from refund_mcp.processors.registry import ProcessorRegistry
        from refund_mcp.service.refunds import RefundService
        from refund_mcp.store import queries
        from refund_mcp.store.database import Database

        policy = policy or PolicyHolder(settings.policy_path or default_policy_path())
        db = Database(settings.db_url)
        if migrate:
            await db.migrate()

        async def known_adyen(bare_id: str, account: str = "adyen") -> TransactionInfo | None:
            async with db.read() as conn:
                row = await queries.get_transaction(conn, f"{account}:{bare_id}")
            if row is None:
                return None
            return TransactionInfo(
                processor=account,
                transaction_id=row.processor_transaction_id,
                amount_minor=row.amount_minor,
                currency=row.currency,
                captured_minor=row.captured_minor,
                refunded_minor=row.processor_refunded_minor,
                status=row.status,
                created_at=row.created_at,
                customer_ref=row.customer_ref,
                description=row.description,
                refundable=row.refundable,
            )

        processors = metered(ProcessorRegistry.from_settings(settings, http=http, known_adyen=known_adyen))
        try:
            check_policy_processors(policy, processors.names())
            service = RefundService(db, processors, policy, settings)
            if server is None:
                server = build_server(service, stdio_actor(settings))
            notifier = _notifier(db, service)
        except BaseException:
            # A refused start must not leave the database engine (and its worker thread) or clients open.
            await processors.aclose()
            await db.dispose()
            raise
        app = cls(settings, db, processors, policy, service, server, notifier)
        STATE.attach(app)
        return app

    def reload_policy_on_sighup(self) -> None:
        """SIGHUP re-reads the policy file now (it is also re-read when the file changes)."""
        _reload_policy_on_sighup(self.policy)

    async def aclose(self) -> None:
        if self.notifier is not None:
            await self.notifier.aclose()
        await self.processors.aclose()
        await self.db.dispose()


def _notifier(db: Database, service: RefundService) -> Notifier | None:
    """The notification deliverer, when REFUND_MCP_NOTIFY_URL or REFUND_MCP_SLACK_WEBHOOK_URL is set."""
    import os

    from refund_mcp.notify.delivery import Notifier
    from refund_mcp.notify.settings import NotifySettings

    notify_settings = NotifySettings.from_env(os.environ)
    return Notifier(db, notify_settings, clock=service.clock) if notify_settings.enabled else None


class LazyApp:
    """The MCP server at once, the App behind it on first need.

    Eager (refused at start, before serving): an unreadable or invalid policy (PolicyFileError names the
    file, line and reason) and a policy naming an unconfigured account. Lazy: the database (engine,
    migrations), the processor clients and the service. A database that cannot be opened therefore fails
    the first tool call, with the cause logged, and the next call tries again; nothing is half-built.
    """

    def __init__(self, settings: Settings, *, http: Any = None, migrate: bool = True) -> None:
        self.settings = settings
        self.policy = PolicyHolder(settings.policy_path or default_policy_path())
        self.accounts = configured_accounts(settings)
        check_policy_processors(self.policy, self.accounts)
        self.server = build_server(self.service, stdio_actor(settings))
        self._http = http
        self._migrate = migrate
        self._app: App | None = None
        self._building: asyncio.Lock | None = None
        self._built = asyncio.Event()  # bound to the running loop on first wait (Python >= 3.10)

    @property
    def built(self) -> App | None:
        return self._app

    async def get(self) -> App:
        """The App, built by the first caller; concurrent callers wait for that one build."""
        if self._app is not None:
            return self._app
        if self._building is None:
            self._building = asyncio.Lock()
        async with self._building:
            if self._app is None:
                self._app = await App.create(
                    self.settings, http=self._http, migrate=self._migrate, policy=self.policy, server=self.server
                )
                self._built.set()
        return self._app

    async def service(self) -> RefundService:
        return (await self.get()).service

    def reload_policy_on_sighup(self) -> None:
        """SIGHUP re-reads the policy file now (it is also re-read when the file changes)."""
        _reload_policy_on_sighup(self.policy)

    async def run_worker(self, run: Callable[[App], Awaitable[None]], stop: Any) -> None:
        """Run the worker (`run`) once the App exists, or return when `stop` is set first.

        The worker never builds the App itself: over HTTP it is built before listening, on stdio by the first
        tool call. An idle stdio session therefore holds no database engine, processor clients or service
        (its resident memory stays near a bare MCP server's), and refunds queued by an earlier session are
        retried once this one makes its first call, or by any HTTP `serve` or `refund-mcp worker` on the same
        database. A build that fails is tried again by the next tool call, and the worker waits for it."""
        import anyio

        async with anyio.create_task_group() as waiting:

            async def give_up_on_stop() -> None:
                await stop.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(give_up_on_stop)
            await self._built.wait()
            waiting.cancel_scope.cancel()
        if stop.is_set() or self._app is None:
            return
        await run(self._app)

    async def aclose(self) -> None:
        if self._app is not None:
            await self._app.aclose()
