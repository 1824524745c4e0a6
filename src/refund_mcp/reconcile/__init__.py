"""Reconciliation: refund-mcp's records against each processor's (see engine.py for the rules).

The engine (and with it the store) is imported on first use, not with the package: the command line
imports this package to build its parser, and `serve` must not pay for the store at start.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Finding", "Kind", "ProcessorResult", "Report", "reconcile"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from refund_mcp.reconcile import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
