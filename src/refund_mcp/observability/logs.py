"""Log output: the usual text lines, or one JSON object per line with REFUND_MCP_LOG_FORMAT=json.

JSON lines carry the time, level, logger, message and, when known, the refund id, the actor, the tool
and the trace id (when tracing is on), so a log search joins a trace and an audit record. The actor,
tool and refund id come from the tool call being served (`bind`, set by the MCP server per call) or
from a record's `extra`. What goes into a line is what the text format would print too: the same
messages, which never contain secrets (tests/security/test_secrets.py scans both formats).
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from refund_mcp.observability import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("refund_id", "actor", "tool")

_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("refund_mcp_log_context", default={})


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Attach fields (refund_id, actor, tool) to every log line written inside the block."""
    merged = {**_context.get(), **{key: value for key, value in fields.items() if value}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_refund(refund_id: str | None) -> None:
    """Add the refund id once it is known (e.g. create_refund made it); lasts until the block ends."""
    if refund_id:
        _context.set({**_context.get(), "refund_id": refund_id})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value:
                line[name] = str(value)
        for name in ("outcome", "duration_ms"):
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        trace_id = tracing.current_trace_id()
        if trace_id:
            line["trace_id"] = trace_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(env: Mapping[str, str]) -> logging.Formatter:
    if env.get("REFUND_MCP_LOG_FORMAT", "text").strip().lower() == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)
