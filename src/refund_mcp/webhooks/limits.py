"""Bounds on what unauthenticated webhook traffic can make the server do before a signature is verified.

    TokenBucket        `rate` per second, bursts of `burst`, on an injectable clock (never sleeps)
    VerificationGate   PayPal verification is an outbound call made for an unverified delivery:
                       at most `per_source` buckets' worth per sender address, `overall` for all,
                       and `concurrent` calls in flight (so it holds only that many connections of
                       the adapter's pool and the rest stay free for refunds)
    LogSampler         one log line per (processor, verdict) per interval, with a count of the rest

All state is in memory and bounded: the per-source table keeps the most recent MAX_SOURCES senders.
Behind a proxy every delivery comes from the proxy's address, so per-source limits become the
overall limit; rate limits belong at the proxy too, but the server is safe without one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from refund_mcp.webhooks.errors import WebhookRateLimited

MAX_SOURCES = 10_000


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def available(self) -> bool:
        self._refill()
        return self.tokens >= 1.0

    def take(self) -> None:
        self._refill()
        self.tokens -= 1.0


class VerificationGate:
    def __init__(
        self,
        *,
        per_source_rate: float = 0.5,
        per_source_burst: float = 10,
        overall_rate: float = 5.0,
        overall_burst: float = 30,
        concurrent: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._per_source = (per_source_rate, per_source_burst)
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._overall = TokenBucket(overall_rate, overall_burst, clock)
        self._concurrent = concurrent
        self._in_flight = 0

    def _source(self, source: str) -> TokenBucket:
        bucket = self._sources.pop(source, None)
        if bucket is None:
            bucket = TokenBucket(*self._per_source, self._clock)
            while len(self._sources) >= MAX_SOURCES:
                self._sources.popitem(last=False)
        self._sources[source] = bucket
        return bucket

    @asynccontextmanager
    async def admit(self, source: str) -> AsyncIterator[None]:
        """Hold one verification slot for `source`. Raises WebhookRateLimited without waiting."""
        bucket = self._source(source)
        if self._in_flight >= self._concurrent:
            raise WebhookRateLimited("too many webhook verifications in flight; deliver it again later")
        if not bucket.available():
            raise WebhookRateLimited("too many unverified deliveries from this address; deliver it again later")
        if not self._overall.available():
            raise WebhookRateLimited("too many unverified deliveries; deliver it again later")
        bucket.take()
        self._overall.take()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1


class LogSampler:
    """Whether to log a refusal now: the first of each key per `interval` seconds, with how many were skipped."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: dict[tuple[str, str], int] = {}

    def sample(self, key: tuple[str, str]) -> int | None:
        """None: do not log; otherwise the number of refusals of this key not logged since the last line."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._skipped.pop(key, 0)
