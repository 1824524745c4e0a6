"""Assembles the parts from Settings: database, processors, policy, service, MCP server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from refund_mcp.domain.models import TransactionInfo
from refund_mcp.notify.delivery import Notifier
from refund_mcp.notify.settings import NotifySettings
from refund_mcp.observability.processors import metered
from refund_mcp.observability.state import STATE
from refund_mcp.policy import PolicyHolder, default_policy_path
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.server import RefundMCPServer, build_server
from refund_mcp.service.refunds import RefundService
from refund_mcp.settings import Settings
from refund_mcp.store import queries
from refund_mcp.store.database import Database


def stdio_actor(settings: Settings) -> Any:
    """On stdio there is no transport auth: the identity comes from configuration (REFUND_MCP_ACTOR)."""

    def actor_of(ctx: Any) -> str:
        from mcp.server.auth.middleware.auth_context import get_access_token

        token = get_access_token()
        return token.client_id if token is not None else settings.actor

    return actor_of


def check_policy_processors(policy: PolicyHolder, processors: ProcessorRegistry) -> None:
    """Refuse a policy naming an account that is neither configured nor a processor: account names are only
    checked by pattern when the policy is read, and a misspelt one would silently deny its refunds."""
    from refund_mcp.policy.schema import KNOWN_PROCESSORS

    loaded = policy.engine().loaded.policy
    named: set[str] = set()
    for source in (loaded, *loaded.rules, *loaded.actors.values()):
        named.update(getattr(source, "processors", None) or ())
    for rule in loaded.rules:
        named.update(rule.when.processor or () if rule.when is not None else ())
    known = {*KNOWN_PROCESSORS, "ucs", *processors.names()}
    unknown = sorted(name for name in named if name not in known)
    if unknown:
        raise ValueError(
            f"the policy names processors or accounts that are not configured: {', '.join(unknown)} "
            f"(configured: {', '.join(processors.names())})"
        )


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
    async def create(cls, settings: Settings, *, http: Any = None, migrate: bool = True) -> App:
        """Build the app; `http` (an httpx2.AsyncClient) is shared by all adapters when given (tests)."""
        policy = PolicyHolder(settings.policy_path or default_policy_path())
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
        check_policy_processors(policy, processors)
        service = RefundService(db, processors, policy, settings)
        server = build_server(service, stdio_actor(settings))
        notify_settings = NotifySettings.from_env(os.environ)
        notifier = Notifier(db, notify_settings, clock=service.clock) if notify_settings.enabled else None
        app = cls(settings, db, processors, policy, service, server, notifier)
        STATE.attach(app)
        return app

    def reload_policy_on_sighup(self) -> None:
        """SIGHUP re-reads the policy file now (it is also re-read when the file changes)."""
        import asyncio
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.policy.reload)

    async def aclose(self) -> None:
        if self.notifier is not None:
            await self.notifier.aclose()
        await self.processors.aclose()
        await self.db.dispose()
