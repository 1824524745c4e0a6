"""The policy file's shape as pydantic models.

The same settings appear at three levels: the top of the file, inside a rule (applied when the rule's
`when` matches) and under an actor's name. `Overrides` holds them; `Policy` is the top level and `Rule`
adds a condition. Unknown keys and explicit nulls are errors, so a typo never silently loosens a limit.
Amounts are integers in minor units keyed by upper-case ISO 4217 codes; floats and quoted numbers
are refused rather than coerced.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from refund_mcp.domain.errors import ValidationFailed
from refund_mcp.domain.models import RefundReason
from refund_mcp.domain.money import MAX_AMOUNT_MINOR, normalize_currency

# The contract's six MCP tools and five processors. Listing them here makes a misspelt name in a
# `tools` or `processors` list a file error instead of a silent deny.
KNOWN_TOOLS = (
    "lookup_transaction",
    "create_refund",
    "get_refund_status",
    "cancel_refund",
    "list_refunds",
    "check_refund_policy",
)
KNOWN_PROCESSORS = ("stripe", "paypal", "adyen", "square", "sandbox")
KNOWN_REASONS = tuple(reason.value for reason in RefundReason)

ToolName = Literal[KNOWN_TOOLS]  # type: ignore[valid-type]
# A processor (`stripe`, covering all its accounts), one account of it (`stripe@eu`), or a UCS account
# (`checkout`). Account names depend on the deployment, so they are checked by pattern only.
PROCESSOR_NAME_PATTERN = (
    r"^(" + "|".join(KNOWN_PROCESSORS) + r"|ucs)(@[a-z0-9][a-z0-9_-]{0,31})?$|^[a-z][a-z0-9_-]{0,31}$"
)
_PROCESSOR_JSON = {"type": "string", "pattern": PROCESSOR_NAME_PATTERN}
ProcessorName = Annotated[str, Field(pattern=PROCESSOR_NAME_PATTERN), WithJsonSchema(_PROCESSOR_JSON)]

_CURRENCY_JSON = {"type": "string", "pattern": "^[A-Z]{3}$"}


def _iso_currency(code: str) -> str:
    try:
        normalized = normalize_currency(code)
    except ValidationFailed as exc:
        raise ValueError(f"{code!r} is not an ISO 4217 currency code") from exc
    if normalized != code:
        # Accepting "usd" next to "USD" would let two entries fight over one currency.
        raise ValueError(f"write currency codes in upper case: {normalized!r}, not {code!r}")
    return code


CurrencyCode = Annotated[str, AfterValidator(_iso_currency), WithJsonSchema(_CURRENCY_JSON)]
MinorAmount = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT_MINOR)]
Count = Annotated[int, Field(strict=True, ge=0)]
CurrencyAmounts = Annotated[
    dict[CurrencyCode, MinorAmount],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": _CURRENCY_JSON,
            "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT_MINOR},
        }
    ),
]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _one_or_many_json(item: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]})


def _enum_json(values: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


ReasonMatch = Annotated[
    list[RefundReason], BeforeValidator(_one_or_many), Field(min_length=1), _one_or_many_json(_enum_json(KNOWN_REASONS))
]
ProcessorMatch = Annotated[
    list[ProcessorName],
    BeforeValidator(_one_or_many),
    Field(min_length=1),
    _one_or_many_json(_PROCESSOR_JSON),
]
CurrencyMatch = Annotated[
    list[CurrencyCode], BeforeValidator(_one_or_many), Field(min_length=1), _one_or_many_json(_CURRENCY_JSON)
]
ActorName = Annotated[str, Field(min_length=1)]
ActorMatch = Annotated[
    list[ActorName], BeforeValidator(_one_or_many), Field(min_length=1), _one_or_many_json({"type": "string"})
]


class _PolicyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_null(cls, value: Any) -> Any:
        # `reasons:` with nothing after it parses as null; treating that as "unset" would turn an
        # intended empty list (nothing allowed) into no restriction at all.
        if value is None:
            raise ValueError("has no value; give one or remove the key")
        return value


class Limits(_PolicyModel):
    """Hard limits: a request outside any of them is denied."""

    per_refund: CurrencyAmounts | None = Field(
        default=None,
        description="Largest single refund per currency. At the top level it also lists the currencies "
        "that may be refunded at all; at every level a currency missing here is denied.",
    )
    per_actor_daily: CurrencyAmounts | None = Field(
        default=None,
        description="Cap on one actor's refunds per currency over the last 24 hours; a currency missing here is denied. "
        "Counted by the hour: the window starts at the top of the hour 24 hours ago (24 to 25 hours), so the cap "
        "is never exceeded but may refuse up to an hour's refunds early.",
    )
    global_daily: CurrencyAmounts | None = Field(
        default=None,
        description="Cap on all actors' refunds together per currency over the last 24 hours; a currency missing "
        "here is denied. Counted by the hour like per_actor_daily (a window of 24 to 25 hours).",
    )
    max_refunds_per_transaction: Count | None = Field(
        default=None, description="Most refunds (not failed or cancelled) one transaction may have."
    )
    max_transaction_age_days: Count | None = Field(
        default=None, description="Oldest payment, in days since it was created, that may be refunded."
    )


class Threshold(_PolicyModel):
    """Refunds above these amounts need an extra step (confirmation or approval)."""

    above: CurrencyAmounts = Field(
        description="Per currency: a refund strictly above this amount needs the step; 0 means every refund. "
        "A currency missing here always needs the step."
    )


class ApprovalThreshold(Threshold):
    """Refunds above these amounts wait for human approval, by one person or two different people."""

    approvers: Annotated[int, Field(strict=True, ge=1, le=2)] = Field(
        default=1,
        description="How many different humans must approve (2: two-person approval); the requester never counts.",
    )


class ApprovalSettings(ApprovalThreshold):
    """Top-level approval settings; only here may the approval lifetime be set."""

    expires_after_hours: Annotated[int, Field(strict=True, gt=0)] = Field(
        default=72, description="Hours a refund may wait for approval before it expires."
    )


class Overrides(_PolicyModel):
    """Settings that may appear at the top level, in a rule or under an actor. Strictest wins."""

    reasons: list[RefundReason] | None = Field(
        default=None, description="Refund reasons allowed. At the top level, a missing list allows none."
    )
    limits: Limits | None = None
    confirmation: Threshold | None = Field(
        default=None, description="Ask the human in the MCP client to confirm refunds above these amounts."
    )
    approval: ApprovalThreshold | None = Field(
        default=None, description="Park refunds above these amounts as pending_approval for a human approver."
    )
    duplicate_window_seconds: Count | None = Field(
        default=None,
        description="A repeat of an identical refund request within this many seconds returns the first refund.",
    )
    require_customer_match: StrictBool | None = Field(
        default=None,
        description="When true, create_refund must carry a customer_ref equal to the payment's customer.",
    )
    tools: list[ToolName] | None = Field(
        default=None, description="MCP tools that may be called. At the top level, a missing list allows all."
    )
    processors: list[ProcessorName] | None = Field(
        default=None, description="Processors refunds may go to. At the top level, a missing list allows all."
    )


class AmountMatch(_PolicyModel):
    """Amount conditions; a currency absent from a map makes that condition false."""

    above: CurrencyAmounts | None = Field(default=None, description="Matches amounts strictly above these.")
    at_most: CurrencyAmounts | None = Field(default=None, description="Matches amounts at or below these.")


class When(_PolicyModel):
    """Conditions of a rule; all given ones must hold. An empty `when` matches every request."""

    reason: ReasonMatch | None = None
    processor: ProcessorMatch | None = None
    currency: CurrencyMatch | None = None
    actor: ActorMatch | None = None
    amount: AmountMatch | None = None

    @property
    def actor_only(self) -> bool:
        """True when the rule can be decided from the actor alone (needed where no refund is known yet)."""
        return self.reason is None and self.processor is None and self.currency is None and self.amount is None


class Rule(Overrides):
    """Narrower settings for requests matching `when`; every matching rule applies."""

    when: When = Field(description="Conditions; all given ones must hold.")
    deny: StrictBool = Field(default=False, description="Deny every matching request.")
    message: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="Why a `deny: true` rule denies; shown to the caller."
    )

    @field_validator("message")
    @classmethod
    def _message_needs_deny(cls, value: str, info: Any) -> str:
        if not info.data.get("deny", False):
            raise ValueError("is only shown by a rule with `deny: true`")
        return value

    @model_validator(mode="after")
    def _does_something(self) -> Rule:
        if not self.deny and not self.model_fields_set - {"when", "deny", "message"}:
            raise ValueError("a rule needs `deny: true` or at least one setting to apply")
        return self


class Policy(Overrides):
    """The whole policy file."""

    version: Literal[1] = Field(description="Format version of this file; must be 1.")
    approval: ApprovalSettings | None = Field(  # narrower than Overrides.approval: adds the lifetime
        default=None, description="Park refunds above these amounts as pending_approval for a human approver."
    )
    rules: list[Rule] = Field(
        default_factory=list, description="Narrower settings for matching requests; all that match apply."
    )
    actors: dict[ActorName, Overrides] = Field(
        default_factory=dict, description="Settings per caller identity; strictest of these and the rest wins."
    )
