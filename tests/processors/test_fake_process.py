"""The fakes also run as separate processes (`python -m tests.fakes.serve`), driven over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import Delivery, ProcessorUnavailable
from refund_mcp.processors.stripe import StripeProcessor
from tests.fakes.stripe import DEFAULT_API_KEY
from tests.processors.helpers import refund_request

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stripe_fake_url() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.serve", "stripe", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the socket listens
        assert "listening on " in line, (
            f"the fake did not start: {line!r} {process.stderr.read() if process.stderr else ''}"
        )
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


async def test_a_fake_served_in_its_own_process_is_driven_over_http_and_keeps_its_state(stripe_fake_url: str) -> None:
    async with httpx2.AsyncClient(base_url=stripe_fake_url, timeout=httpx2.Timeout(10.0, read=0.5)) as http:
        seeded = (await http.post("/_fake/payments", json={"amount_minor": 4000, "currency": "USD"})).json()
        processor = StripeProcessor(api_key=SecretStr(DEFAULT_API_KEY), api_base=stripe_fake_url, http=http)
        request = refund_request(seeded["id"], 1500)

        assert (await http.post("/_fake/faults", json={"next_503": 1})).status_code == 200
        with pytest.raises(ProcessorUnavailable) as unavailable:
            await processor.create_refund(request)
        assert unavailable.value.delivery is Delivery.OUTCOME_UNKNOWN

        await http.post("/_fake/faults", json={"next_timeout_after_commit": 1})
        with pytest.raises(ProcessorUnavailable) as timed_out:
            await processor.create_refund(request)  # a real socket read timeout
        assert timed_out.value.delivery is Delivery.OUTCOME_UNKNOWN

        refund = await processor.create_refund(request)
        state = (await http.get("/_fake/state")).json()
        assert state["refund_count"] == 1
        assert state["refunds"][0]["id"] == refund.processor_refund_id

        await http.post(f"/_fake/refunds/{refund.processor_refund_id}/status", json={"status": "failed"})
        assert (await processor.get_refund(refund.processor_refund_id)).processor_status == "failed"
        assert (await http.post("/_fake/release")).json() == {"released": 1}
