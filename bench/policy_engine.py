"""5. Policy engine: decisions per second, calling PolicyEngine.evaluate directly (no database, no MCP).

Requests vary actor, reason, processor, currency and amount so every rule is sometimes matched and
sometimes not; the packaged default policy (1 rule, 1 actor) is measured beside the realistic one.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import REALISTIC_POLICY, Config, Section, Spread, fmt, fmt_spread, log

# Weighted like real traffic: mostly allowed refunds by the bots, some needing a human, a few denied.
ACTORS = (("tier1-bot", 4), ("tier1-bot-eu", 2), ("tier2-agent", 3), ("fraud-desk", 1), ("unlisted-agent", 1))
REASONS = (("requested_by_customer", 5), ("product_not_received", 2), ("goodwill", 2), ("service_issue", 2), ("fraudulent", 1), ("duplicate", 1))
PROCESSORS = (("stripe", 5), ("adyen", 2), ("paypal", 2), ("square", 1), ("sandbox", 1))
CURRENCIES = (("USD", 5), ("EUR", 3), ("GBP", 2), ("JPY", 1), ("KWD", 1))
AMOUNTS = ((300, 8), (900, 8), (2500, 6), (4000, 4), (12000, 4), (25000, 2), (48000, 2), (90000, 1))


def _pick(rng: random.Random, weighted: tuple[tuple[Any, int], ...]) -> Any:
    values, weights = zip(*weighted)
    return rng.choices(values, weights)[0]


def requests(count: int = 512) -> list[Any]:
    from refund_mcp.policy import PolicyRequest

    rng = random.Random(7)  # the same mix on every run
    now = datetime.now(UTC)
    out = []
    for _ in range(count):
        processor = _pick(rng, PROCESSORS)
        out.append(
            PolicyRequest(
                tool="create_refund",
                actor=_pick(rng, ACTORS),
                processor=processor,
                transaction_id=f"{processor}:txn_{rng.randrange(10**6)}",
                reason=_pick(rng, REASONS),
                amount_minor=_pick(rng, AMOUNTS),
                currency=_pick(rng, CURRENCIES),
                customer_ref="c@example.com" if rng.random() < 0.8 else None,
                transaction_customer_ref="c@example.com",
                transaction_created_at=now - timedelta(days=rng.randrange(0, 150)),
                refunds_on_transaction=rng.choice((0, 0, 0, 1, 1, 2, 4)),
                actor_daily_minor=rng.randrange(0, 30000),
                global_daily_minor=rng.randrange(0, 400000),
                now=now,
            )
        )
    return out


def _load(path: Path) -> Any:
    from refund_mcp.policy import PolicyEngine, load_policy

    return PolicyEngine(load_policy(path))


def _rate(engine: Any, batch: list[Any], decisions: int) -> float:
    evaluate = engine.evaluate
    for request in batch[:50]:  # warm-up
        evaluate(request)
    cycle = itertools.islice(itertools.cycle(batch), decisions)
    start = time.perf_counter()
    for request in cycle:
        evaluate(request)
    return decisions / (time.perf_counter() - start)


async def run(cfg: Config) -> Section:
    from refund_mcp.policy import default_policy_path

    section = Section(
        name="policy",
        title="5. Policy engine: PolicyEngine.evaluate in a loop",
        columns=["policy", "rules", "actors", "decisions/s", "µs per decision", "settings evaluated per decision"],
    )
    batch = requests()
    policies = {"packaged default.yaml": Path(default_policy_path()), "bench realistic.yaml": REALISTIC_POLICY}
    raw: dict[str, Any] = {}
    for label, path in policies.items():
        engine = _load(path)
        rates = Spread()
        for repeat in range(cfg.repeats):
            log(f"policy: {label} repeat {repeat + 1}/{cfg.repeats}")
            rates.add(_rate(engine, batch, cfg.policy_decisions))
        decisions = [engine.evaluate(request) for request in batch]
        outcomes = Counter(decision.outcome.value for decision in decisions)
        per_decision = sum(len(decision.rules) for decision in decisions) / len(decisions)
        policy = engine.loaded.policy
        per_call = Spread([1e6 / rate for rate in rates.values])
        section.rows.append(
            [label, str(len(policy.rules)), str(len(policy.actors)), fmt_spread(rates, 0), fmt_spread(per_call, 1), fmt(per_decision, 1)]
        )
        raw[label] = {"decisions_per_second": rates.as_dict(), "outcomes": dict(outcomes), "settings_per_decision": per_decision}
    section.notes.append(
        f"{cfg.policy_decisions} decisions per repeat over {len(batch)} distinct requests (weighted mix of 5 actors, 6 reasons, "
        "5 processors, 5 currencies, 8 amounts, varied history); outcome mix on the realistic policy: "
        + ", ".join(f"{k} {v}" for k, v in sorted(raw["bench realistic.yaml"]["outcomes"].items()))
        + ". Every decision also builds its explanation (one sentence per evaluated setting), as create_refund uses it."
    )
    section.raw = raw
    return section
