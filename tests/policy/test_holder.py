"""Hot reload: a changed file is picked up, a broken one never replaces the last good policy."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from refund_mcp.policy import PolicyFileError, PolicyHolder

GOOD = "version: 1\nreasons: [duplicate]\nlimits: {per_refund: {USD: 1000}}\n"
BETTER = "version: 1\nreasons: [duplicate, goodwill]\nlimits: {per_refund: {USD: 2000}}\n"
BROKEN = "version: 1\nreasons: [duplicate]\nlimits: {per_refund: {USD: -5}}\n"


class FakeClock:
    """A monotonic clock the test moves by hand, so no test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class PolicyFile:
    """A policy file whose every write gets a new mtime, whatever the file system's granularity."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime_ns = 1_700_000_000 * 10**9

    def write(self, text: str) -> None:
        self.path.write_text(text)
        self._mtime_ns += 10**9
        os.utime(self.path, ns=(self._mtime_ns, self._mtime_ns))


@pytest.fixture
def policy_file(tmp_path: Path) -> PolicyFile:
    file = PolicyFile(tmp_path / "policy.yaml")
    file.write(GOOD)
    return file


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_an_edited_file_is_loaded_once_the_check_interval_has_passed(policy_file: PolicyFile, clock: FakeClock) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    first = holder.engine()

    policy_file.write(BETTER)
    clock.advance(0.1)
    assert holder.engine() is first  # not looked at yet: engine() stays cheap

    clock.advance(0.5)
    reloaded = holder.engine()
    assert reloaded.version != first.version
    assert reloaded.loaded.text == BETTER
    assert holder.last_error is None


def test_an_unchanged_file_keeps_the_same_engine(policy_file: PolicyFile, clock: FakeClock) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    first = holder.engine()

    clock.advance(10)

    assert holder.engine() is first


def test_a_touched_file_with_the_same_content_keeps_the_same_version(policy_file: PolicyFile, clock: FakeClock) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    first = holder.engine()

    policy_file.write(GOOD)
    clock.advance(1)

    assert holder.engine() is first


def test_a_broken_file_keeps_the_last_good_policy_and_logs_where_it_is_wrong(
    policy_file: PolicyFile, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    good = holder.engine()

    policy_file.write(BROKEN)
    clock.advance(1)
    with caplog.at_level(logging.ERROR, logger="refund_mcp.policy"):
        current = holder.engine()

    assert current is good
    assert (
        holder.last_error == f"{policy_file.path}:3: limits.per_refund.USD: Input should be greater than or equal to 0"
    )
    assert [record.levelno for record in caplog.records] == [logging.ERROR]
    assert holder.last_error in caplog.records[0].getMessage()


def test_a_broken_file_is_reported_once_not_on_every_check(
    policy_file: PolicyFile, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    policy_file.write(BROKEN)

    with caplog.at_level(logging.ERROR, logger="refund_mcp.policy"):
        for _ in range(5):
            clock.advance(1)
            holder.engine()

    assert len(caplog.records) == 1


def test_fixing_a_broken_file_loads_it_and_clears_the_error(policy_file: PolicyFile, clock: FakeClock) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    policy_file.write(BROKEN)
    clock.advance(1)
    holder.engine()

    policy_file.write(BETTER)
    clock.advance(1)

    assert holder.engine().loaded.text == BETTER
    assert holder.last_error is None


def test_a_deleted_file_keeps_the_last_good_policy(policy_file: PolicyFile, clock: FakeClock) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    good = holder.engine()

    policy_file.path.unlink()
    clock.advance(1)

    assert holder.engine() is good
    assert holder.last_error is not None
    assert "cannot read the policy file" in holder.last_error


def test_reload_reads_the_file_at_once_and_says_whether_the_version_changed(
    policy_file: PolicyFile, clock: FakeClock
) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    first = holder.engine()

    policy_file.write(BETTER)  # no clock advance: only a forced reload can see it

    assert holder.reload() is True
    assert holder.engine().version != first.version
    assert holder.reload() is False


def test_reload_of_a_broken_file_returns_false_and_keeps_the_policy(policy_file: PolicyFile, clock: FakeClock) -> None:
    holder = PolicyHolder(policy_file.path, clock=clock)
    good = holder.engine()
    policy_file.write(BROKEN)

    assert holder.reload() is False
    assert holder.engine() is good
    assert holder.last_error is not None


def test_reload_sees_a_change_that_kept_size_and_mtime(policy_file: PolicyFile, clock: FakeClock) -> None:
    # Editors and coarse file systems can leave (mtime, size) unchanged; SIGHUP must still work.
    holder = PolicyHolder(policy_file.path, clock=clock)
    stat = policy_file.path.stat()
    policy_file.path.write_text(GOOD.replace("1000", "1001"))
    os.utime(policy_file.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert holder.reload() is True


def test_a_bad_initial_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BROKEN)

    with pytest.raises(PolicyFileError) as caught:
        PolicyHolder(path)

    assert caught.value.line == 3
