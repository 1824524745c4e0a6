"""Loading policy files: what is accepted, and the file, line and key of what is not."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from refund_mcp.policy import PolicyFileError, default_policy_path, load_policy, parse_policy
from refund_mcp.policy.schema import Policy

SHIPPED = Path(default_policy_path()).parent


@pytest.mark.parametrize("name", ["default.yaml", "strict.yaml"])
def test_the_shipped_policies_load(name: str) -> None:
    loaded = load_policy(SHIPPED / name)

    assert isinstance(loaded.policy, Policy)
    assert loaded.policy.version == 1
    assert loaded.path == str(SHIPPED / name)


def test_the_default_policy_path_is_the_packaged_default_yaml() -> None:
    path = default_policy_path()

    assert path.name == "default.yaml"
    assert path.is_file()


def test_the_version_is_the_first_16_hex_digits_of_the_file_sha256(tmp_path: Path) -> None:
    content = b"version: 1\nreasons: [duplicate]\n"
    path = tmp_path / "p.yaml"
    path.write_bytes(content)

    loaded = load_policy(path)

    assert loaded.version == hashlib.sha256(content).hexdigest()[:16]
    assert loaded.text == content.decode()


def test_a_minimal_file_loads_with_everything_else_unset() -> None:
    loaded = parse_policy("version: 1\n")

    assert loaded.policy.reasons is None
    assert loaded.policy.limits is None
    assert loaded.policy.rules == []
    assert loaded.policy.actors == {}


def test_when_conditions_accept_one_value_or_a_list() -> None:
    loaded = parse_policy(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - when: {reason: fraudulent, currency: [USD, EUR]}
                deny: true
            """
        )
    )

    when = loaded.policy.rules[0].when
    assert when.reason == ["fraudulent"]
    assert when.currency == ["USD", "EUR"]


BAD_FILES = [
    pytest.param(
        """\
        version: 1
        reasons: [duplicate, fraudulent
        limits: {}
        """,
        3,
        "not valid YAML",
        id="yaml-syntax-error",
    ),
    pytest.param(
        """\
        version: 1
        reasons: [duplicate]
        limits:
          per_refunds:
            USD: 500
        """,
        4,
        "limits.per_refunds: unknown key (did you mean 'per_refund'?)",
        id="unknown-key",
    ),
    pytest.param(
        """\
        version: 1
        reason: [duplicate]
        """,
        2,
        "reason: unknown key (did you mean 'reasons'?)",
        id="misspelt-top-level-key",
    ),
    pytest.param(
        """\
        version: 1
        rules:
          - when: {amount: {below: {USD: 100}}}
            deny: true
        """,
        3,
        "rules[0].when.amount.below: unknown key; allowed here: above, at_most",
        id="unknown-key-lists-what-is-allowed",
    ),
    pytest.param(
        """\
        version: 1
        limits:
          per_refund:
            USD: 500
            EUR: -1
        """,
        5,
        "limits.per_refund.EUR: Input should be greater than or equal to 0",
        id="negative-amount",
    ),
    pytest.param(
        """\
        version: 1
        reasons:
          - duplicate
          - because_i_said_so
        """,
        4,
        "reasons[1]: Input should be 'duplicate'",
        id="unknown-reason",
    ),
    pytest.param(
        """\
        version: 1
        limits:
          per_refund:
            USD: 500
            XYZ: 100
        """,
        5,
        "limits.per_refund.XYZ: 'XYZ' is not an ISO 4217 currency code",
        id="bad-currency-code",
    ),
    pytest.param(
        """\
        version: 1
        confirmation:
          above: {usd: 500}
        """,
        3,
        "confirmation.above.usd: write currency codes in upper case",
        id="lower-case-currency-code",
    ),
    pytest.param(
        """\
        version: 1
        limits:
          max_refunds_per_transaction: three
        """,
        3,
        "limits.max_refunds_per_transaction: Input should be a valid integer",
        id="wrong-type",
    ),
    pytest.param(
        """\
        version: 1
        limits:
          per_refund:
            USD: 29.99
        """,
        4,
        "limits.per_refund.USD: Input should be a valid integer (amounts are whole numbers of minor units",
        id="decimal-amount",
    ),
    pytest.param(
        """\
        version: 1
        require_customer_match: "true"
        """,
        2,
        "require_customer_match: Input should be a valid boolean",
        id="quoted-boolean",
    ),
    pytest.param(
        """\
        reasons: [duplicate]
        """,
        1,
        "version: is required",
        id="missing-version",
    ),
    pytest.param(
        """\
        version: 2
        """,
        1,
        "version: Input should be 1",
        id="unsupported-version",
    ),
    pytest.param(
        """\
        version: 1
        reasons:
        """,
        2,
        "reasons: has no value",
        id="key-without-value",
    ),
    pytest.param(
        """\
        version: 1
        tools: [lookup_transaction, refund_everything]
        """,
        2,
        "tools[1]: Input should be 'lookup_transaction'",
        id="unknown-tool",
    ),
    pytest.param(
        """\
        version: 1
        rules:
          - when: {reason: fraudulent}
            approval: {above: {USD: 0}}
          - when:
              processor: [stripe, "Venmo Pay"]
            deny: true
        """,
        6,
        "rules[1].when.processor[1]: String should match pattern",
        id="unknown-processor-in-a-rule",
    ),
    pytest.param(
        """\
        version: 1
        rules:
          - when: {reason: fraudulent}
        """,
        3,
        "rules[0]: a rule needs `deny: true` or at least one setting to apply",
        id="rule-that-does-nothing",
    ),
    pytest.param(
        """\
        version: 1
        rules:
          - when: {reason: goodwill}
            message: no goodwill refunds
            reasons: [duplicate]
        """,
        4,
        "rules[0].message: is only shown by a rule with `deny: true`",
        id="message-without-deny",
    ),
    pytest.param(
        """\
        version: 1
        actors:
          tier1-bot:
            approval:
              above: {USD: 100}
              expires_after_hours: 2
        """,
        6,
        "actors.tier1-bot.approval.expires_after_hours: unknown key; allowed here: above",
        id="top-level-only-setting-under-an-actor",
    ),
    pytest.param(
        """\
        version: 1
        actors:
          1234:
            reasons: [duplicate]
        """,
        3,
        "actors.1234: Input should be a valid string; put the key in quotes",
        id="actor-name-read-as-a-number",
    ),
    pytest.param(
        """\
        version: 1
        limits:
          per_refund: {USD: 500}
        limits:
          per_refund: {USD: 900}
        """,
        4,
        "key 'limits' appears twice",
        id="duplicate-key",
    ),
    pytest.param("", 1, "the policy file is empty", id="empty-file"),
    pytest.param("- version: 1\n", 1, "must be a mapping", id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD_FILES)
def test_a_bad_file_is_refused_with_the_line_and_key_of_the_problem(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))

    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)

    error = caught.value
    assert error.path == str(path)
    assert error.line == line
    assert reason in error.reason
    assert str(error) == f"{path}:{line}: {error.reason}"


def test_several_problems_report_the_first_in_the_file_and_count_the_rest() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        reasons: [duplicate, nope]
        limits:
          per_refund: {USD: -1}
          max_refunds_per_transaction: -2
        """
    )

    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text)

    assert caught.value.line == 2
    assert caught.value.reason.endswith("(and 2 more problems)")


def test_a_missing_file_is_refused_without_a_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError) as caught:
        load_policy(tmp_path / "absent.yaml")

    assert caught.value.line is None
    assert "cannot read the policy file" in caught.value.reason


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(PolicyFileError, match="not UTF-8"):
        parse_policy(b"version: 1\nreasons: [\xff]\n")


def test_yaml_tags_that_build_objects_are_refused() -> None:
    with pytest.raises(PolicyFileError) as caught:
        parse_policy("version: 1\nreasons: !!python/object:os.system [ls]\n")

    assert caught.value.line == 2
