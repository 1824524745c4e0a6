"""Reconciliation: refund-mcp's records against each processor's (see engine.py for the rules)."""

from refund_mcp.reconcile.engine import Finding, Kind, ProcessorResult, Report, reconcile

__all__ = ["Finding", "Kind", "ProcessorResult", "Report", "reconcile"]
