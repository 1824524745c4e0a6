"""`refund-mcp policy check` warns about every map that leaves out a currency the policy allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from refund_mcp.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "refund_mcp" / "policies"

GAPPY = """\
version: 1
reasons: [service_issue, fraudulent]
limits:
  per_refund: {USD: 50000, EUR: 45000, JPY: 7000000}
  per_actor_daily: {USD: 200000, EUR: 180000, JPY: 9000000}
confirmation: {above: {USD: 5000}}
rules:
  - when: {reason: fraudulent}
    approval: {above: {USD: 0, EUR: 0}}
  - when: {currency: USD}
    limits: {global_daily: {USD: 1000000}}
actors:
  tier1-bot: {limits: {per_refund: {USD: 10000, EUR: 9000, JPY: 1000000}}}
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    code = main(["policy", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_map_that_omits_an_allowed_currency_is_warned_about_and_the_file_stays_valid(tmp_path, capsys) -> None:
    code, out, err = check(tmp_path, GAPPY, capsys)

    assert code == 0
    assert "valid" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, err
    assert "confirmation.above omits EUR, JPY" in warnings[0] and "always asked to be confirmed" in warnings[0]
    assert "rules[0].approval.above omits JPY" in warnings[1] and "always parked for approval" in warnings[1]
    # rules[1] applies to USD only, and the actor names every currency: nothing to say about them.
    assert "rules[1]" not in err and "tier1-bot" not in err


def test_caps_that_omit_a_currency_say_it_is_refused(tmp_path, capsys) -> None:
    text = GAPPY.replace("{USD: 10000, EUR: 9000, JPY: 1000000}", "{USD: 10000}")
    code, _, err = check(tmp_path, text, capsys)

    assert code == 0
    assert "actors.tier1-bot.limits.per_refund omits EUR, JPY" in err and "are refused" in err


@pytest.mark.parametrize("name", ["default.yaml", "strict.yaml"])
def test_the_shipped_policies_name_every_currency_they_allow_in_every_map(name, capsys) -> None:
    assert main(["policy", "check", str(SHIPPED / name)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_an_invalid_file_is_still_an_error(tmp_path, capsys) -> None:
    code, _, err = check(tmp_path, "version: 1\nlimits: {per_refund: {usd: 1}}\n", capsys)
    assert code == 1 and "invalid policy" in err
