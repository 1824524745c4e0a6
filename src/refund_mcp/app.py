"""Assembles the parts from Settings: database, processors, policy, service, MCP server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from refund_mcp.domain.models import TransactionInfo
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


@dataclass
class App:
    settings: Settings
    db: Database
    processors: ProcessorRegistry
    policy: PolicyHolder
    service: RefundService
    server: RefundMCPServer

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

        processors = ProcessorRegistry.from_settings(settings, http=http, known_adyen=known_adyen)
        service = RefundService(db, processors, policy, settings)
        server = build_server(service, stdio_actor(settings))
        return cls(settings, db, processors, policy, service, server)

    def reload_policy_on_sighup(self) -> None:
        """SIGHUP re-reads the policy file now (it is also re-read when the file changes)."""
        import asyncio
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.policy.reload)

    async def aclose(self) -> None:
        await self.processors.aclose()
        await self.db.dispose()
