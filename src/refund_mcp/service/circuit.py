"""Per-processor circuit breaker: after repeated unreachable/unknown outcomes, stop calling for a while.

New refunds for an open processor are still accepted (reserved as `queued`) and retried later by
the worker; nobody keeps hammering a processor that is down. State is per process on purpose:
each replica learns on its own, and the only cost of a closed breaker is one more failed call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _State:
    failures: int = 0
    open_until: float = 0.0


class CircuitBreaker:
    def __init__(self, threshold: int, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._states: dict[str, _State] = {}

    def is_open(self, processor: str) -> bool:
        state = self._states.get(processor)
        return state is not None and state.open_until > self._clock()

    def record_failure(self, processor: str) -> None:
        state = self._states.setdefault(processor, _State())
        state.failures += 1
        if state.failures >= self.threshold:
            state.open_until = self._clock() + self.open_seconds

    def record_success(self, processor: str) -> None:
        self._states.pop(processor, None)
