"""The resend rule (service/resend.py): when a queued refund may be sent, and under which key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from refund_mcp.service.resend import AttemptHistory, Step, idempotency_key, plan_attempt

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def history(*, reached: bool = True, age: timedelta | None = timedelta(minutes=5), lookup_first: bool = False, deadline: timedelta | None = timedelta(hours=6)) -> AttemptHistory:
    return AttemptHistory(
        may_have_reached=reached,
        key_first_sent_at=None if age is None else NOW - age,
        lookup_first=lookup_first,
        retry_deadline_at=None if deadline is None else NOW + deadline,
    )


def test_nothing_can_have_reached_the_processor_so_it_is_sent_whatever_the_age_or_the_processor():
    for retention, searchable in ((DAY, True), (None, False)):
        plan = plan_attempt(history(reached=False, age=timedelta(days=90)), now=NOW, retention=retention, searchable=searchable)
        assert plan.step is Step.SEND


def test_a_young_key_is_sent_again_as_it_is():
    assert plan_attempt(history(age=timedelta(hours=11)), now=NOW, retention=DAY, searchable=False).step is Step.SEND


@pytest.mark.parametrize("age", [timedelta(hours=12), timedelta(hours=30), timedelta(days=3)])
def test_a_key_past_half_its_retention_is_never_sent_again_without_a_search(age):
    assert plan_attempt(history(age=age), now=NOW, retention=DAY, searchable=True).step is Step.SEARCH
    handed = plan_attempt(history(age=age), now=NOW, retention=DAY, searchable=False)
    assert handed.step is Step.OPERATOR and "cannot be searched" in handed.why


def test_an_unpublished_retention_has_no_safe_age():
    assert plan_attempt(history(age=timedelta(seconds=1)), now=NOW, retention=None, searchable=True).step is Step.SEARCH
    assert plan_attempt(history(age=timedelta(seconds=1)), now=NOW, retention=None, searchable=False).step is Step.OPERATOR


def test_a_stored_answer_asks_for_a_search_even_for_a_fresh_key():
    plan = plan_attempt(history(age=timedelta(seconds=3), lookup_first=True), now=NOW, retention=DAY, searchable=True)
    assert plan.step is Step.SEARCH


def test_past_the_retry_deadline_nothing_is_sent_or_searched():
    for reached in (True, False):
        plan = plan_attempt(history(reached=reached, deadline=timedelta(0)), now=NOW, retention=DAY, searchable=True)
        assert plan.step is Step.OPERATOR and "deadline" in plan.why


def test_keys_are_derived_from_the_refund_id_and_fit_every_processor():
    refund_id = "rf_01JEXAMPLE00000000000000000"
    assert idempotency_key(refund_id, 0) == refund_id
    assert idempotency_key(refund_id, 3) == f"{refund_id}.3"
    assert len(idempotency_key(refund_id, 999)) <= 45  # Square's limit
