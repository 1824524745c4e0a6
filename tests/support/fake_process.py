"""A processor fake served over real HTTP in its own process (python -m tests.fakes.serve)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from tests.support.servers import free_port, wait_until_healthy

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeProcess:
    base: str

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx2.request(method, f"{self.base}/_fake/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def seed(self, **payment: Any) -> dict[str, Any]:
        return self.control("POST", "payments", payment)

    def faults(self, **faults: Any) -> None:
        self.control("POST", "faults", faults)

    def state(self) -> dict[str, Any]:
        return self.control("GET", "state")

    def release(self) -> None:
        self.control("POST", "release", {})


@contextmanager
def fake_processor(processor: str, *args: str) -> Iterator[FakeProcess]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.serve", processor, "--port", str(port), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{base}/_fake/state", proc)
        yield FakeProcess(base)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
