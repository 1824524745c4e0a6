"""Crash points for the exactly-once tests: `REFUND_MCP_FAILPOINT=NAME` makes this process kill -9 itself there.

A real SIGKILL at a precise step of the refund flow is the only honest way to prove that a restart
completes every refund exactly once. Unset (always, outside those tests) it costs one dict lookup.

    after_reserve           the refund is reserved (queued) and committed; the processor was not called
    after_processor_answer  the processor created the refund; its answer was not recorded yet
"""

from __future__ import annotations

import os
import signal


def hit(name: str) -> None:
    if os.environ.get("REFUND_MCP_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
