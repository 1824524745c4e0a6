"""Text that did not come from refund-mcp's own code, made safe to show a model or a human.

Customers, agents and processors write free text that reaches a model (tool results, resources,
prompts) and a human (the confirmation prompt). `untrusted_text` is the one place that makes such
text harmless to display: card-shaped numbers removed, control and format characters (newlines,
bidi overrides, zero-width characters) turned into spaces so the text stays on one line, runs of
whitespace collapsed, the data fence our prompts use (`<<<` … `>>>`) broken up so the text cannot
close it, and the length capped. With `label`, the result is quoted and says whose words it is.

It does not make the text true: descriptions in the output schema say these fields are data.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from refund_mcp.audit.redact import redact_text

# The default cap for free text in tool results.
UNTRUSTED_TEXT_LIMIT = 200
FENCE_OPEN = "<<<"
FENCE_CLOSE = ">>>"
_FENCE_RUNS = re.compile(r"<{3,}|>{3,}")


def _printable(ch: str) -> str:
    # C*: controls, format characters (bidi overrides, zero-width), surrogates, private use;
    # Zl/Zp: line and paragraph separators. All become a space, so nothing starts a new line.
    category = unicodedata.category(ch)
    return " " if category[0] == "C" or category in ("Zl", "Zp") else ch


def untrusted_text(value: str | None, limit: int = UNTRUSTED_TEXT_LIMIT, *, label: str | None = None) -> str | None:
    """`value` made safe to display: one line, no control characters, no fence, at most `limit` characters.

    With `label` (e.g. "the agent's claim"), the text comes back quoted after the label, so a reader
    can tell it from our own words: `the agent's claim: "…"`. None stays None.
    """
    if value is None:
        return None
    cleaned = "".join(_printable(ch) for ch in redact_text(str(value)))
    cleaned = " ".join(_FENCE_RUNS.sub(lambda run: run.group(0)[:2], cleaned).split())
    if len(cleaned) > limit:
        cleaned = cleaned[: max(limit - 1, 0)].rstrip() + "…"
    if label is None:
        return cleaned
    return f'{label}: "{cleaned.replace(chr(34), chr(39))}"'


def untrusted_tree(value: Any, limit: int = 500) -> Any:
    """Every string inside a JSON-like structure (an audit record) made safe; keys included."""
    if isinstance(value, Mapping):
        return {untrusted_text(str(key), 100): untrusted_tree(item, limit) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [untrusted_tree(item, limit) for item in value]
    if isinstance(value, str):
        return untrusted_text(value, limit)
    return value


def fenced(value: str, limit: int) -> str:
    """Caller-supplied text inside our data fence; the fence cannot occur inside it."""
    return f"{FENCE_OPEN}\n{untrusted_text(value, limit)}\n{FENCE_CLOSE}"


# How much of the agent's own description of the customer the human sees.
CLAIM_LIMIT = 80


def confirmation_prompt(
    *,
    amount_display: str,
    transaction_id: str,
    reason: str,
    payment_customer: str | None,
    claimed_customer: str | None,
) -> str:
    """The question the human in the MCP client is asked before a refund moves money.

    Built from our records only: the amount and currency we are about to reserve, the payment, the
    reason (one of our enum values) and the payment's customer as the processor reported it. What
    the agent said about the customer is shown, if at all, on its own line, quoted, capped and
    labelled as the agent's unverified claim; it can never read as part of our sentence.
    """
    customer = untrusted_text(payment_customer, CLAIM_LIMIT) or "not recorded"
    lines = [
        f"Refund {amount_display} on {untrusted_text(transaction_id, 200)} for reason '{untrusted_text(reason, 40)}'?",
        f"Payment's customer (as the processor reported it): {customer}.",
        "This moves real money.",
    ]
    if claimed_customer is not None and claimed_customer.strip().lower() != (payment_customer or "").strip().lower():
        lines.append(untrusted_text(claimed_customer, CLAIM_LIMIT, label="Unverified, written by the agent") or "")
    return "\n".join(lines)
