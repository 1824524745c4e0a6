"""The money model's concurrent and overtaken-attempt rules, each run once directly on SQLite and on PostgreSQL,
so every default run exercises them whatever hypothesis draws (the invariants are checked after each)."""

from __future__ import annotations

import pytest

from tests.model.machine import MoneyMachine, PostgresMoneyMachine

MACHINES = [
    pytest.param(MoneyMachine, id="sqlite"),
    pytest.param(PostgresMoneyMachine, id="postgres", marks=pytest.mark.postgres),
]


def _step(machine: MoneyMachine, rule: str, **arguments: object) -> str:
    getattr(machine, rule)(**arguments)
    machine.money_is_right()
    return machine.notes[-1]


@pytest.mark.parametrize("machine_class", MACHINES)
def test_each_new_rule_reaches_what_it_is_for(machine_class: type[MoneyMachine], request: pytest.FixtureRequest) -> None:
    if machine_class is PostgresMoneyMachine:
        request.getfixturevalue("model_pg_database")
    machine = machine_class()
    try:
        # What each call reached; whether it was right is the rule's own check (and the invariants).
        assert _step(machine, "overtaken_attempt", processor="stripe", held_answer="hold", instance=0).startswith(
            "overtaken_attempt: hold overtaken"
        )
        assert _step(machine, "overtaken_attempt", processor="adyen", held_answer="held_429", instance=1).startswith(
            "overtaken_attempt: held_429 overtaken"
        )
        # The takeover is answered 429: the refund is still queued, under the takeover's claim, when the held
        # success arrives; only the fencing token keeps that answer out.
        assert _step(machine, "overtaken_attempt", processor="stripe", held_answer="hold", instance=1, takeover_meets="rate_limited").startswith(
            "overtaken_attempt: hold overtaken"
        )
        four = [(payment, "agent-a", 3000) for payment in ("stripe:ch_c1", "stripe:ch_c2", "stripe:ch_c3", "stripe:ch_c4")]
        machine.concurrent_refunds_under_daily_caps(picks=four, fault=None)
        machine.money_is_right()
        assert "concurrent_refunds_under_daily_caps: a cap refused" in machine.notes[-2:]
        calls = [("agent-a", 2500), ("agent-b", 2500), ("agent-a", 2500), ("agent-b", 2500)]
        _step(machine, "concurrent_refunds_of_one_payment", transaction="stripe:ch_1", calls=calls, keys="shared", fault=None)
        _step(machine, "concurrent_refunds_of_one_payment", transaction="adyen:psp_1", calls=calls, keys="none", fault="lost_answer")
    finally:
        machine.teardown()
