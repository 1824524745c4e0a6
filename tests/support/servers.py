"""Run `refund-mcp serve` as a real subprocess (HTTP), wait until it answers, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx2

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refund_mcp_command() -> list[str]:
    """The installed console script, as a user would run it."""
    script = BIN / "refund-mcp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "refund_mcp"]


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], deadline_seconds: float = 60.0) -> None:
    """Readiness polling (not a timing assertion): the server is up when /healthz answers."""
    give_up = time.monotonic() + deadline_seconds
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx2.get(url, timeout=1.0).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not become healthy")


@contextmanager
def http_server(env: Mapping[str, str], *extra_args: str, port: int | None = None) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT) of a `refund-mcp serve --transport http` subprocess."""
    with server_process(env, *extra_args, port=port) as (base, _proc):
        yield base


@contextmanager
def server_process(
    env: Mapping[str, str], *extra_args: str, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like http_server, but also yields the process, for tests that kill it."""
    port = port or free_port()
    full_env = {**os.environ, **env}
    proc = subprocess.Popen(
        [*refund_mcp_command(), "serve", "--transport", "http", "--port", str(port), *extra_args],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{base}/healthz", proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
