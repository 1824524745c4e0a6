"""A RefundService over given processors and a test clock, on a SQLite file (no MCP, no adapters)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from refund_mcp.policy import PolicyHolder
from refund_mcp.processors.base import Processor
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service.refunds import RefundService
from refund_mcp.settings import Settings
from refund_mcp.store.database import Database

POLICY = Path(__file__).resolve().parent / "policy.yaml"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    """The service's and the processors' time; tests move it, nothing sleeps."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def build_service(db: Database, processors: dict[str, Processor], clock: Callable[[], datetime], **overrides: Any) -> RefundService:
    settings = replace(
        Settings.from_env({"REFUND_MCP_SANDBOX": "0"}), db_url=db.url, policy_path=POLICY, actor="agent-a",
        circuit_failure_threshold=10**6, **overrides,
    )
    return RefundService(db, ProcessorRegistry(dict(processors)), PolicyHolder(POLICY), settings, clock=clock)
